"""A compute node's side of joining the panel, as root on the new host:

    manage.py node join URL TOKEN [--env-file F] [--host-key-file F] [--ssh-address A]
                                  [--no-start] [--log F]

1. makes the node's migration key (vservers.engine.migrate.ensure_node_key) under its
   VSERVER_ROOT, reads its sshd's host key (/etc/ssh/ssh_host_ed25519_key.pub);
2. measures its CPUs, memory and the disk under VSERVER_ROOT;
3. POSTs them with TOKEN to URL's /nodes/join/ (api/nodes_join.py) and gets back its name,
   queue, REDIS_URL and DATABASE_URL;
4. writes the env file (default /etc/vservers/node.env, mode 0600: it holds the node's
   database password), keeping lines it does not own;
5. starts the worker on its queue (and the console broker with --broker): `systemctl enable
   --now vservers-worker@<queue>` when systemd runs the host, else a detached `manage.py
   nodeworker <queue>` with its log next to the env file; --no-start skips this.

Run again with the same token, the panel says it was used; when the env file already holds
that node's settings, the command starts the worker if it is not running and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

DEFAULT_ENV_FILE = Path("/etc/vservers/node.env")
DEFAULT_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key.pub")
REPO = Path(__file__).resolve().parents[3]
# The env file's lines the join writes (the others are the operator's and stay).
OWNED = ("PANEL_NODE_NAME", "PANEL_NODE_QUEUE", "VSERVER_ROOT", "REDIS_URL", "DATABASE_URL")
TIMEOUT = 30


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise CommandError("cannot read MemTotal from /proc/meminfo")


def disk_mb(root: Path) -> int:
    """The size of the filesystem VSERVER_ROOT is on (its nearest existing parent)."""
    path = root
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).total // (1024 * 1024)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    """SETTINGS into PATH (mode 0600, atomically), keeping the lines whose keys it does not set."""
    for key, value in settings.items():
        if "\n" in value or "\r" in value:
            raise CommandError(f"the panel sent a {key} with a line break")
    kept = []
    try:
        for line in path.read_text().splitlines():
            if line.partition("=")[0].strip() not in settings:
                kept.append(line)
    except FileNotFoundError:
        pass
    text = "\n".join([*kept, *(f"{key}={value}" for key, value in settings.items())]) + "\n"
    from vservers.nodes import keys

    path.parent.mkdir(parents=True, exist_ok=True)
    keys.write_private(path, text)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - http(s) checked above
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"detail": f"the panel answered {exc.code} {exc.reason}"}
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(f"cannot reach the panel at {url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise CommandError(f"the panel at {url} did not answer in JSON: is this the panel's address?") from None


def systemd_runs() -> bool:
    """Whether systemd is PID 1 (its own test, as sd_booted(3))."""
    return Path("/run/systemd/system").is_dir()


class Command(BaseCommand):
    help = "Join this host to the panel as a compute node (see `node join --help`)."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        joining = sub.add_parser("join", help="join this host with the operator's one-time token")
        joining.add_argument("url", help="the panel's address, e.g. https://panel.example.net/")
        joining.add_argument("token", help="the join token the operator was shown")
        joining.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE)
        joining.add_argument("--host-key-file", type=Path, default=DEFAULT_HOST_KEY,
                             help="this host's sshd public host key")
        joining.add_argument("--ssh-address", default="", help="host[:port] of this host's sshd (default: the "
                             "one the operator entered)")
        joining.add_argument("--no-start", action="store_true", help="write the env file, start nothing")
        joining.add_argument("--broker", action="store_true", help="start the console broker too")
        joining.add_argument("--log", type=Path, default=None,
                             help="the worker's log without systemd (default: beside the env file)")

    def handle(self, *args, action: str, **options) -> None:
        if action == "join":
            self.join(url=options["url"], token=options["token"], env_file=options["env_file"],
                      host_key_file=options["host_key_file"], ssh_address=options["ssh_address"],
                      no_start=options["no_start"], broker=options["broker"], log=options["log"])

    def join(self, *, url: str, token: str, env_file: Path, host_key_file: Path, ssh_address: str,
             no_start: bool, broker: bool, log: Path | None) -> None:
        from vservers.engine import migrate
        from vservers.engine.config import EngineConfig
        from vservers.engine.errors import EngineError

        if not url.startswith(("https://", "http://")):
            raise CommandError(f"the panel's URL must start with https:// (or http:// for a test), not {url!r}")
        endpoint = url.rstrip("/") + "/nodes/join/"
        try:
            config = EngineConfig.from_env()
            _, public_key = migrate.ensure_node_key(config)
        except EngineError as exc:
            raise CommandError(f"cannot make this node's migration key: {exc}") from None
        try:
            host_key = host_key_file.read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read this host's SSH host key {host_key_file}: {exc.strerror}; is "
                               "openssh-server installed? (--host-key-file names another)") from None
        offer = {
            "token": token.strip(), "cpus": os.cpu_count() or 1, "memory_mb": memory_mb(),
            "disk_mb": disk_mb(config.root), "ssh_host_key": host_key, "ssh_public_key": public_key,
            "ssh_address": ssh_address, "vserver_root": str(config.root),
        }
        status, answer = post(endpoint, offer)
        if status != 200:
            said = answer.get("detail") or f"the panel answered {status}"
            known = read_env_file(env_file)
            if status == 400 and "used already" in said and known.get("PANEL_NODE_QUEUE"):
                # Run again after a join that went through: the env file has it all.
                self.stdout.write(f"{said}\nThis host joined already as {known.get('PANEL_NODE_NAME')} "
                                  f"({env_file}).")
                if not no_start:
                    self.start(known, env_file, broker, log)
                return
            raise CommandError(said)
        settings = {
            "PANEL_NODE_NAME": answer["name"], "PANEL_NODE_QUEUE": answer["queue"],
            "VSERVER_ROOT": answer["vserver_root"], "REDIS_URL": answer["redis_url"],
        }
        if answer.get("database_url"):  # none on SQLite: the panel's own file, this host's default
            settings["DATABASE_URL"] = answer["database_url"]
        write_env_file(env_file, settings)
        self.stdout.write(f"Joined as node {answer['name']} (queue {answer['queue']}); settings in {env_file}.")
        if not no_start:
            self.start(read_env_file(env_file), env_file, broker, log)

    def start(self, known: dict[str, str], env_file: Path, broker: bool, log: Path | None) -> None:
        queue = known["PANEL_NODE_QUEUE"]
        if systemd_runs():
            units = [f"vservers-worker@{queue}.service"] + (["vservers-broker.service"] if broker else [])
            result = subprocess.run(["systemctl", "enable", "--now", *units], capture_output=True, text=True)
            if result.returncode != 0:
                raise CommandError(f"systemctl could not start {' '.join(units)}: {result.stderr.strip()} "
                                   "(are deploy/systemd/ units installed? docs/cluster.md)")
            self.stdout.write(f"Started {' '.join(units)}.")
            return
        pid_file = env_file.with_name(f"{queue}.worker.pid")
        running = _running(pid_file)
        if running:
            self.stdout.write(f"The worker of {queue} runs already (pid {running}).")
            return
        log = log or env_file.with_name(f"{queue}.worker.log")
        env = {**os.environ, **known}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "manage.py"), "nodeworker", queue], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        pid_file.write_text(f"{proc.pid}\n")
        self.stdout.write(f"Started the worker of {queue} (pid {proc.pid}, log {log}).")
        if broker:
            self.stdout.write("No systemd here: start the console broker with deploy/systemd/vservers-broker.service's "
                              "command yourself.")


def _running(pid_file: Path) -> int | None:
    """The pid in PID_FILE if that process runs `manage.py nodeworker`."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"nodeworker" in cmdline else None
