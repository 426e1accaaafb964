"""Cold migration: a stopped server's disk image and config shipped to another node with rsync
over SSH, and adopted there.

Every node has a key pair of its own (ensure_node_key). A node's sshd lets the OTHER nodes'
keys run one thing only: Debian's `rrsync -wo` confined to `<root>/incoming/`
(authorized_keys_line), so a source can write files there and do nothing else on the target:
no shell, no reading, no path outside incoming/. Nodes trust the panel's database, not each
other: the target treats everything that arrives in incoming/ as untrusted input.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import faults, userns, validate
from .config import EngineConfig
from .errors import Conflict, EngineError, InvalidInput, NotFound
from .spec import ID_RANGE_SIZE, Limits, ServerSpec
from .state import fsync_path, locked, read_json, write_json

if TYPE_CHECKING:
    from .lifecycle import Engine

KEY_DIR = "ssh"
KEY_NAME = "id_ed25519"
INCOMING = "incoming"
RRSYNC = "/usr/bin/rrsync"
# A path we put inside the forced command: sshd runs it through the user's shell, so it must
# hold nothing a shell would read as more than one plain word.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_PLAIN_COMMENT = re.compile(r"[A-Za-z0-9._@:+-]{1,100}")


def incoming_dir(config: EngineConfig) -> Path:
    return config.root / INCOMING


def ensure_incoming(config: EngineConfig) -> Path:
    """<root>/incoming/, root's only (mode 0700): what a source writes there (set-uid files,
    device nodes even) is out of every other local user's reach."""
    path = incoming_dir(config)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_node_key(config: EngineConfig) -> tuple[Path, str]:
    """This node's migration key pair, made once with ssh-keygen (ed25519) under
    <root>/ssh/id_ed25519: (private key path, public key line). Also makes incoming/, where
    the other nodes' keys may write."""
    key_dir = config.root / KEY_DIR
    private = key_dir / KEY_NAME
    public = key_dir / (KEY_NAME + ".pub")
    with locked(config.root / "locks" / ".node-key.lock"):
        key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(key_dir, 0o700)
        ensure_incoming(config)
        if not (private.is_file() and public.is_file()):
            # Made under temporary names and renamed, public key last: a crash leaves either
            # no key (made again) or a whole pair, never a private key without its public half.
            tmp = key_dir / f".{KEY_NAME}.{os.getpid()}.tmp"
            for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
                stale.unlink(missing_ok=True)
            comment = f"vservers-migrate@{_comment_host()}"
            try:
                result = subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp)],
                    capture_output=True, text=True, stdin=subprocess.DEVNULL,
                )
            except FileNotFoundError:
                raise EngineError("ssh-keygen is not installed (Debian package openssh-client)") from None
            if result.returncode != 0:
                raise EngineError(f"ssh-keygen could not make this node's key: {result.stderr.strip()}")
            os.replace(tmp, private)
            os.replace(tmp.with_name(tmp.name + ".pub"), public)
        line = public.read_text().strip()
    return private, validate.ssh_public_key(line)


def _comment_host() -> str:
    name = socket.gethostname()
    return name if _PLAIN_COMMENT.fullmatch(name) else "node"


def authorized_keys_line(public_key: str, config: EngineConfig) -> str:
    """The line a node's authorized_keys gets for ANOTHER node's key: a forced command
    `/usr/bin/rrsync -wo <root>/incoming` with `restrict` (no pty, no forwarding), so the key
    can only write into incoming/ with rsync. Validates the key (type and base64), refuses
    anything else with InvalidInput.

    -no-lock: rrsync otherwise lets one run at a time per user, and two servers may arrive
    at once. -no-del: a source may add files, never delete what another put there."""
    key = validate.ssh_public_key(public_key)
    parts = key.split(None, 2)
    target = str(incoming_dir(config))
    if not _PLAIN_PATH.fullmatch(target) or ".." in target.split("/"):
        raise InvalidInput(f"VSERVER_ROOT {str(config.root)!r} cannot be named in a forced command")
    # The comment is kept only if it is plain (it names the node in the file); the key proper
    # is type and base64, which validate.ssh_public_key has checked.
    base64.b64decode(parts[1], validate=True)
    comment = parts[2] if len(parts) > 2 and _PLAIN_COMMENT.fullmatch(parts[2]) else ""
    line = f'restrict,command="{RRSYNC} -wo -no-lock -no-del {target}" {parts[0]} {parts[1]}'
    return f"{line} {comment}" if comment else line


# -- the source: ship a stopped server --------------------------------------------------------

CONFIG = "config.json"
IMAGE = "disk.img"
TEMPLATE = "template"  # incoming/<name>/template/: a template version's directory, when shipped
SHIFTING = "disk.img.migrate"  # the new image of a shifted receive while it is filled
RECEIVING = "receiving"  # <root>/receiving/<name>.json: a receive's plan, out of the sources' reach
CONNECT_TIMEOUT = 10  # seconds for ssh to reach the target
IO_TIMEOUT = 60  # seconds rsync waits on a silent connection before it gives up
PROGRESS_EVERY = 1.0  # seconds between progress calls
COPYING_AT = 16 * 2**20  # bytes sent when the fault checkpoint "migrate-send:copying-<part>" is passed
MAX_CONFIG_BYTES = 65536
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MigrationTarget:
    """The node a server moves to, and how this node reaches it over SSH."""

    host: str  # hostname or IP of the target's sshd
    port: int  # its port (22 in production)
    root: Path  # the target's VSERVER_ROOT; files go to <root>/incoming/<name>/
    identity_file: Path  # this (source) node's private key
    known_host_key: str  # the target's host key, "ssh-ed25519 AAAA..." (checked strictly)
    user: str = "root"

    def checked(self) -> MigrationTarget:
        """This target with every field validated (InvalidInput naming the bad one)."""
        host = self.host
        if not isinstance(host, str) or not (_HOST.fullmatch(host) or _is_ipv6(host)):
            raise InvalidInput(f"invalid target host {host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidInput(f"invalid target port {self.port!r}")
        if not isinstance(self.user, str) or not _USER.fullmatch(self.user):
            raise InvalidInput(f"invalid target user {self.user!r}")
        root = str(self.root)
        if not _PLAIN_PATH.fullmatch(root) or ".." in root.split("/"):
            raise InvalidInput(f"invalid target root {root!r}: an absolute path of A-Z a-z 0-9 . _ - /")
        identity = str(self.identity_file)
        if not _PLAIN_PATH.fullmatch(identity) or ".." in identity.split("/"):
            raise InvalidInput(f"invalid identity file {identity!r}: an absolute path of A-Z a-z 0-9 . _ - /")
        if not Path(identity).is_file():
            raise InvalidInput(f"identity file {identity} does not exist (vserver migrate key makes it)")
        try:
            key = validate.ssh_public_key(self.known_host_key)
        except InvalidInput as exc:
            raise InvalidInput(f"invalid target host key: {exc}") from None
        return dataclasses.replace(self, known_host_key=" ".join(key.split()[:2]))

    @property
    def address(self) -> str:
        """The host as rsync's USER@HOST:PATH and known_hosts name it."""
        return f"[{self.host}]" if _is_ipv6(self.host) else self.host

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass(frozen=True)
class ShipResult:
    """What sending a server's files to the target took."""

    bytes_total: int
    seconds: float


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def send(engine: Engine, name: str, target: MigrationTarget, *, ship_template: bool = False,
         progress: Progress | None = None) -> ShipResult:
    """Ship stopped server NAME to TARGET's incoming/NAME/.

    1. under NAME's lock (held to the end: nobody starts it while its image is read): it must
       be stopped; what a crashed run left (loop device, cgroups) is cleaned first, and a disk
       grow a crash interrupted is finished, so the image is whole;
    2. rsync over ssh, the template version's directory first (SHIP_TEMPLATE), then disk.img
       (--sparse: holes stay holes on the target) and config.json;
    3. nothing of the source changes: a failure or a kill at any line leaves it startable."""
    from .lifecycle import DISK_GROW_PENDING

    target = target.checked()
    started = time.monotonic()
    with engine._lock(name):
        spec = engine.spec(name)
        if engine._running_init(name) is not None:
            raise Conflict(f"server {name!r} is running: stop it before it is migrated")
        engine._clean_leftovers(name)
        engine._recover_snapshot(name)
        server_dir = engine._dir(name)
        if (server_dir / DISK_GROW_PENDING).exists():
            engine._grow_disk(name, spec.limits.disk_bytes, running=False)
        parts: list[tuple[str, list[str], str, int]] = []
        if ship_template:
            from . import templates

            version_dir = templates.template_dir(engine.config, spec.template) / spec.template_version
            if not (version_dir / "template.json").is_file():
                raise NotFound(f"template {spec.template!r} version {spec.template_version!r} is not on this node")
            # The trailing slash: the directory's contents go into incoming/NAME/template/.
            parts.append(("template", [f"{version_dir}/"], f"{name}/{TEMPLATE}/", _tree_bytes(version_dir)))
        # One connection for both (each costs an ssh handshake and rrsync's start, ~0.4 s on
        # loopback); receive refuses a config without its image anyway.
        parts.append(("image", [str(server_dir / IMAGE), str(server_dir / CONFIG)], f"{name}/",
                      (server_dir / IMAGE).stat().st_size + (server_dir / CONFIG).stat().st_size))
        total = sum(size for _, _, _, size in parts)
        done = 0
        last = [0.0]

        def report(now_done: int) -> None:
            if progress is not None and time.monotonic() - last[0] >= PROGRESS_EVERY:
                last[0] = time.monotonic()
                progress(min(now_done, total), total)

        with tempfile.TemporaryDirectory(prefix="vserver-migrate-") as tmp:
            known_hosts = Path(tmp) / "known_hosts"
            pattern = target.address if target.port == 22 else f"[{target.host}]:{target.port}"
            known_hosts.write_text(f"{pattern} {target.known_host_key}\n")
            for label, sources, destination, size in parts:
                _rsync(target, known_hosts, label, sources, destination, functools.partial(_shifted, report, done))
                done += size
                faults.checkpoint("migrate-send", "shipped-" + label)
    if progress is not None:
        progress(total, total)
    return ShipResult(bytes_total=total, seconds=time.monotonic() - started)


def _shifted(report: Callable[[int], None], offset: int, done: int) -> None:
    report(offset + done)


def _tree_bytes(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _rsync(target: MigrationTarget, known_hosts: Path, label: str, sources: list[str], destination: str,
           progress: Callable[[int], None]) -> None:
    """One rsync of SOURCES (LABEL: what they are) into TARGET's incoming/DESTINATION (a path
    relative to incoming/: rrsync on the target confines every path to it)."""
    # rsync splits -e on spaces itself (no shell): every word here is plain (checked()).
    ssh = [
        "ssh", "-F", "/dev/null", "-i", str(target.identity_file), "-p", str(target.port),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
    ]
    # --sparse keeps the image's holes holes on the target (--inplace would write them as
    # zeros: 256 of 256 MiB allocated against 64, bench/migrate.py). rsync still reads and
    # sends the holes as zeros: zstd at level 1 on the wire cut a mostly empty image's send
    # by about a third on loopback, and costs little on incompressible data.
    argv = [
        "rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse",
        "--compress", "--compress-choice=zstd", "--compress-level=1",
        "--mkpath", f"--timeout={IO_TIMEOUT}", "--info=progress2", "--no-inc-recursive",
        "-e", " ".join(ssh), "--", *sources, f"{target.user}@{target.address}:{destination}",
    ]
    errors = os.memfd_create("rsync-errors", os.MFD_CLOEXEC)
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                    env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except FileNotFoundError:
            raise EngineError("rsync is not installed (Debian packages rsync, openssh-client)") from None
        try:
            assert proc.stdout is not None
            pending = b""
            copying = False
            while chunk := os.read(proc.stdout.fileno(), 65536):
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for line in reversed(lines):
                    match = _PROGRESS.match(line)
                    if match:
                        sent = int(match[1].replace(b",", b""))
                        if sent >= COPYING_AT and not copying:
                            copying = True
                            faults.checkpoint("migrate-send", f"copying-{label}")
                        progress(sent)
                        break
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        if code != 0:
            os.lseek(errors, 0, os.SEEK_SET)
            said = os.read(errors, 65536).decode(errors="replace")
            raise EngineError(_failure(target, said, code))
    finally:
        os.close(errors)


def _failure(target: MigrationTarget, said: str, code: int) -> str:
    """One sentence for the operator from what ssh and rsync said."""
    text = said.lower()
    where = f"{target.address} port {target.port}"
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return (f"the host key of {where} is not the one given: refusing to send there "
                "(host key mismatch; check the node's ssh_host_key)")
    if "could not resolve hostname" in text or "name or service not known" in text:
        return f"cannot resolve the target host {target.host!r}"
    if "connection refused" in text:
        return f"the target {where} refused the connection (is its sshd running?)"
    if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        return f"the target {where} is unreachable ({_last_line(said)})"
    if "permission denied" in text and "publickey" in text:
        return f"the target {where} does not accept this node's key (is it in its authorized_keys?)"
    if "no space left on device" in text or "disk quota exceeded" in text:
        return f"the target {where} is out of disk space; nothing was installed there"
    if "rrsync" in text:
        return f"the target {where} refused the transfer: {_last_line(said)}"
    return f"rsync to {where} failed: {_last_line(said) or f'exit status {code}'}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- the target: adopt what arrived -------------------------------------------------------------


def _plan_path(config: EngineConfig, name: str) -> Path:
    return config.root / RECEIVING / f"{validate.server_name(name)}.json"


def incoming_names(config: EngineConfig) -> list[str]:
    """Servers with something under incoming/ or a receive not finished (for recovery)."""
    names: set[str] = set()
    for directory, suffix in ((incoming_dir(config), ""), (config.root / RECEIVING, ".json")):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(directory):
                if not entry.endswith(suffix):
                    continue
                candidate = entry[: len(entry) - len(suffix)]
                with contextlib.suppress(InvalidInput):
                    names.add(validate.server_name(candidate))
    return sorted(names)


def discard(engine: Engine, name: str) -> None:
    """Remove incoming/NAME/ (a partial or refused ship) and an unfinished receive's half
    server (never a server that has its config.json). Idempotent."""
    config = engine.config
    with engine._lock(name):
        shutil.rmtree(incoming_dir(config) / validate.server_name(name), ignore_errors=True)
        server_dir = engine._dir(name)
        # Under NAME's lock a directory without config.json is no create or receive in
        # progress but what a killed one left.
        if not (server_dir / CONFIG).exists():
            shutil.rmtree(server_dir, ignore_errors=True)
        _plan_path(config, name).unlink(missing_ok=True)
        if (incoming_dir(config) / name).exists():
            raise EngineError(f"could not remove {incoming_dir(config) / name}")


def receive(engine: Engine, name: str, addresses: list[str] | None = None) -> ServerSpec:
    """Adopt incoming/NAME/ as server NAME, stopped.

    1. under NAME's lock and the allocation lock: config.json is read as untrusted input and
       every field validated; the template version must be here or shipped beside it (then it
       is checked and installed); e2fsck checks the image before the kernel mounts it; the
       addresses (ADDRESSES, else the config's) must lie in the bridge network and be free;
       the uid range is kept when it lies on this installation's grid and is free, else a free
       one is taken;
    2. for a new uid range the image is copied file by file into a fresh one through an
       idmapped mount (owners shifted by the kernel, set-uid bits and file capabilities
       intact; an owner outside the claimed range fails the copy: refused, nothing left);
       then a shipped template is installed;
    3. the plan (the final spec) is written to <root>/receiving/NAME.json, where sources
       cannot write: from here a re-run finishes the same plan;
    4. the image is renamed into servers/NAME/, config.json is written last (only then does
       list show the server), incoming/NAME/ and the plan are removed.
    Both locks are held throughout: the addresses and uid range chosen stay free."""
    validate.server_name(name)
    config = engine.config
    plan_path = _plan_path(config, name)
    server_dir = engine._dir(name)
    source = incoming_dir(config) / name
    with engine._lock(name), engine._alloc_lock():
        plan = read_json(plan_path)
        if plan is None:
            if (server_dir / CONFIG).exists():
                if not source.exists():
                    return engine.spec(name)  # received before; nothing new arrived
                raise Conflict(f"a server named {name!r} already exists on this node")
            spec, from_base, template = _plan(engine, name, source, addresses)
            shutil.rmtree(server_dir, ignore_errors=True)  # a create or receive that died half-way
            _make_server_dir(config, server_dir)
            if from_base != spec.uid_base:
                # Before the plan: owners outside the range the config claims make the copy
                # fail, and that refusal must leave nothing behind.
                try:
                    _shift_image(source / IMAGE, server_dir / SHIFTING, source, spec, from_base)
                except BaseException:
                    shutil.rmtree(server_dir, ignore_errors=True)
                    raise
            if template is not None:  # only once everything else is known to be right
                _install_template(engine, template, spec)
            plan = {"spec": spec.to_json(), "from_base": from_base}
            write_json(plan_path, plan)
            fsync_path(plan_path.parent)
        try:
            spec = ServerSpec.from_json(plan["spec"])
            from_base = int(plan["from_base"])
        except (KeyError, TypeError, ValueError):
            plan_path.unlink(missing_ok=True)
            raise EngineError(f"the receive plan {plan_path} is damaged; it was removed, receive again") from None
        faults.checkpoint("migrate-receive", "planned")
        image = server_dir / IMAGE
        if not image.exists():
            shipped = source / IMAGE
            _make_server_dir(config, server_dir)
            if from_base != spec.uid_base and (server_dir / SHIFTING).is_file():
                os.rename(server_dir / SHIFTING, image)  # filled and synced before the plan was written
            elif not shipped.is_file():
                plan_path.unlink(missing_ok=True)
                shutil.rmtree(server_dir, ignore_errors=True)
                raise NotFound(f"nothing shipped for {name!r} to receive (incoming/{name}/{IMAGE} is missing)")
            elif from_base == spec.uid_base:
                os.rename(shipped, image)
            else:
                _shift_image(shipped, server_dir / SHIFTING, source, spec, from_base)
                os.rename(server_dir / SHIFTING, image)
            fsync_path(server_dir)
        faults.checkpoint("migrate-receive", "moved")
        write_json(server_dir / CONFIG, spec.to_json())
        fsync_path(server_dir)
        faults.checkpoint("migrate-receive", "installed")
        shutil.rmtree(source, ignore_errors=True)
        plan_path.unlink(missing_ok=True)
    return spec


def _plan(engine: Engine, name: str, source: Path,
          addresses: list[str] | None) -> tuple[ServerSpec, int, Path | None]:
    """The spec NAME will have here, the uid base its image's owners have now, and the shipped
    template to install (None: it is here); refuses anything malformed, foreign or taken in
    one sentence, before anything is installed."""
    config = engine.config
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise NotFound(f"nothing shipped for {name!r} to receive (no incoming/{name}/)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"incoming/{name} is not a directory")
    shipped = _untrusted_config(source / CONFIG, name)
    image = source / IMAGE
    try:
        st = os.lstat(image)
    except FileNotFoundError:
        raise InvalidInput(f"the shipment of {name!r} has no {IMAGE}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"the shipment's {IMAGE} of {name!r} is not a regular file")
    if st.st_size != shipped.limits.disk_bytes:
        raise InvalidInput(f"the shipment's {IMAGE} of {name!r} has {st.st_size} bytes, its config says "
                           f"{shipped.limits.disk_bytes}")
    template = _check_template(engine, name, source, shipped)
    _check_filesystem(image, name)
    wanted = engine._check_addresses(list(shipped.addresses) if addresses is None else addresses)
    others = [other for other in engine.specs() if other.name != name]
    engine._check_addresses_free(wanted, others)
    taken = {other.uid_base for other in others}
    base = shipped.uid_base
    keep = base >= config.uid_base and (base - config.uid_base) % ID_RANGE_SIZE == 0 and base not in taken
    uid_base = base if keep else userns.allocate_base(config.uid_base, taken)
    return dataclasses.replace(shipped, addresses=tuple(wanted), uid_base=uid_base), base, template


def _make_server_dir(config: EngineConfig, server_dir: Path) -> None:
    for sub in ("disk", "lower", "rootfs"):
        (server_dir / sub).mkdir(parents=True, exist_ok=True)
    for path in (config.root, config.servers_dir, server_dir):
        os.chmod(path, 0o711)  # as create does: the guest's init must reach its rootfs


def _untrusted_config(path: Path, name: str) -> ServerSpec:
    """config.json as a source shipped it: a regular file, small, every field checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidInput(f"the shipment of {name!r} has no {CONFIG}") from None
    except OSError:
        raise InvalidInput(f"the shipment's {CONFIG} of {name!r} is not a regular file") from None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InvalidInput(f"the shipment's {CONFIG} of {name!r} is not a regular file")
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"the shipment's {CONFIG} of {name!r} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("limits"), dict):
            raise ValueError
        unknown = set(data) - {f.name for f in dataclasses.fields(ServerSpec)}
        if unknown:
            raise InvalidInput(f"the shipment's {CONFIG} of {name!r} has unknown fields: {', '.join(sorted(unknown))}")
        limits = Limits(**data["limits"]).validated()
        addresses = data["addresses"]
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError
        uid_base = data["uid_base"]
        autostart = data.get("autostart", False)
        if isinstance(uid_base, bool) or not isinstance(uid_base, int) or not isinstance(autostart, bool):
            raise ValueError
    except InvalidInput:
        raise
    except (ValueError, TypeError, KeyError):
        raise InvalidInput(f"the shipment's {CONFIG} of {name!r} is not a server's config") from None
    if data.get("name") != name:
        raise InvalidInput(f"the shipment's {CONFIG} names server {data.get('name')!r}, not {name!r}")
    if not 65536 <= uid_base <= 2**32 - 1 - ID_RANGE_SIZE:
        raise InvalidInput(f"the shipment's {CONFIG} of {name!r} has uid base {uid_base}, outside 65536..2^32")
    version = data.get("template_version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidInput(f"the shipment's {CONFIG} of {name!r} has an invalid template version {version!r}")
    return ServerSpec(
        name=name, template=validate.template_name(str(data.get("template", ""))), template_version=version,
        hostname=validate.hostname(str(data.get("hostname", ""))),
        addresses=tuple(validate.guest_address(a) for a in addresses), limits=limits, uid_base=uid_base,
        autostart=autostart,
    )


def _check_template(engine: Engine, name: str, source: Path, spec: ServerSpec) -> Path | None:
    """None if SPEC's template version is here; else the shipped copy beside the server,
    checked like any untrusted tree (InvalidInput if it is missing or wrong)."""
    from . import templates

    with contextlib.suppress(NotFound):
        templates.get(engine.config, spec.template, spec.template_version)
        return None
    shipped = source / TEMPLATE
    if not shipped.is_dir() or shipped.is_symlink():
        raise InvalidInput(f"template {spec.template!r} version {spec.template_version!r} is not on this node "
                           "and was not shipped (send with the template)")
    info_path = shipped / "template.json"
    rootfs = shipped / "rootfs"
    if info_path.is_symlink() or not info_path.is_file() or rootfs.is_symlink() or not rootfs.is_dir():
        raise InvalidInput(f"the shipped template of {name!r} lacks template.json or rootfs/")
    try:
        info = templates.TemplateInfo.from_json(json.loads(info_path.read_bytes()[:MAX_CONFIG_BYTES]))
        if not all(isinstance(word, str) for word in info.init) or not info.init:
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise InvalidInput(f"the shipped template.json of {name!r} is not a template's") from None
    if (info.name, info.version) != (spec.template, spec.template_version):
        raise InvalidInput(f"the shipped template is {info.name!r} version {info.version!r}, the server's "
                           f"{spec.template!r} version {spec.template_version!r}")
    # The template is every guest's lower layer: a device node in it would be a door to the
    # host's devices (the overlay is not mounted nodev), so none may come from another node.
    for entry in _walk(rootfs):
        mode = entry.lstat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise InvalidInput(f"the shipped template of {name!r} holds a device file "
                               f"({entry.relative_to(shipped)})")
    return shipped


def _install_template(engine: Engine, shipped: Path, spec: ServerSpec) -> None:
    """Rename the checked template version SHIPPED into the store (and make it the current
    one if the template had none here)."""
    from . import templates

    base = templates.make_template_dir(engine.config, spec.template)
    with locked(base / ".lock"):
        final = base / spec.template_version
        if not final.exists():
            # Root's only: a set-uid file another node shipped must not be in the reach of
            # this host's other users (guests see the rootfs through their own mount).
            os.chmod(shipped, 0o700)
            os.rename(shipped, final)
            fsync_path(base)
        if not (base / "current").is_symlink():
            link = base / f".current.{os.getpid()}"
            if link.is_symlink():
                link.unlink()
            os.symlink(spec.template_version, link)
            os.replace(link, base / "current")


def _walk(top: Path) -> Iterator[Path]:
    """Every entry under TOP, never following a symbolic link."""
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                yield path
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)


def _check_filesystem(image: Path, name: str) -> None:
    """A forced, read-only e2fsck: the kernel is about to mount a filesystem another node
    made, and its ext4 code should only ever meet a consistent one."""
    try:
        result = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except FileNotFoundError:
        raise EngineError("e2fsck is not installed (Debian package e2fsprogs)") from None
    if result.returncode != 0:
        raise InvalidInput(f"the shipped disk image of {name!r} is not a clean ext4 filesystem "
                           f"(e2fsck: {_last_line(result.stdout + result.stderr) or result.returncode})")


def _shift_image(shipped: Path, new_image: Path, source: Path, spec: ServerSpec, from_base: int) -> None:
    """Fill NEW_IMAGE (a fresh disk in SPEC's uid range) with the upper layer of SHIPPED, whose
    owners are in FROM_BASE's range: GNU tar reads it (mounted read-only in a namespace of its
    own) and a second tar writes it through an idmapped mount of the new image, so the kernel
    moves the owners, and the namespace root of file capabilities with them; a chown walk
    after the fact would clear set-uid bits and capabilities. An owner outside the range (and
    not root, as whiteouts are) cannot be mapped: the copy fails and nothing is installed."""
    from . import backups
    from .lifecycle import make_disk_image

    new_image.unlink(missing_ok=True)  # a shift that was killed
    make_disk_image(new_image, spec.limits.disk_bytes, spec.uid_base)
    read_at = source / ".mnt-read"
    write_at = source / ".mnt-write"
    for path in (read_at, write_at):
        path.mkdir(exist_ok=True)
    ns_fd = userns.create_mapping([(0, 0, 1), (spec.uid_base, from_base, ID_RANGE_SIZE)])
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    read_errors = os.memfd_create("tar-read-errors", os.MFD_CLOEXEC)
    write_errors = os.memfd_create("tar-write-errors", os.MFD_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    reader = writer = 0
    try:
        reader = backups._spawn_mounted(
            shipped, read_at,
            ["tar", "--create", "--file=-", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sparse",
             "--one-file-system", "--format=posix", backups.TOP],
            writable=False, stdin=null, stdout=pipe_w, stderr=read_errors)
        os.close(pipe_w)
        pipe_w = -1
        writer = backups._spawn_mounted(
            new_image, write_at,
            ["tar", "--extract", "--file=-", "--numeric-owner", "--same-owner", "--same-permissions", "--xattrs",
             "--xattrs-include=*", "--no-overwrite-dir"],
            writable=True, stdin=pipe_r, stdout=None, stderr=write_errors, idmap_fd=ns_fd)
        os.close(pipe_r)
        pipe_r = -1
        read_code = backups._wait(reader)
        reader = 0
        write_code = backups._wait(writer)
        writer = 0
        if read_code != 0:
            raise InvalidInput(f"the shipped image of {spec.name!r} cannot be read: "
                               f"{backups._tail(backups._read_memfd(read_errors), read_code)}")
        if write_code != 0:
            raise InvalidInput(f"the shipped image of {spec.name!r} cannot be moved to uid range {spec.uid_base} "
                               f"(an owner outside its range {from_base}?): "
                               f"{backups._tail(backups._read_memfd(write_errors), write_code)}")
        fsync_path(new_image)
    except BaseException:
        new_image.unlink(missing_ok=True)
        raise
    finally:
        for pid in (reader, writer):
            if pid:
                backups._kill_wait(pid)
        for fd in (pipe_r, pipe_w):
            if fd >= 0:
                os.close(fd)
        for fd in (ns_fd, read_errors, write_errors, null):
            os.close(fd)
