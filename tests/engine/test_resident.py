"""`vserver serve` (vservers/engine/resident.py) and the `vserver` that hands it commands
(command.py): a command handed to the resident server gives what it gives in its own process,
and the server takes only what it should.

Each test starts a real `vserver serve` and runs the real `vserver` launcher as whole processes.
Whether a command went through the server is read from the modules the user's process imported
(`python -X importtime`): served, it loads none of the CLI (argparse, cli.py, the verb's modules).
"""

from __future__ import annotations

import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.engine.helpers import wait_for_http
from tests.engine.test_cli_startup import _LINE
from tests.leaks import TEST_ENV
from vservers.engine import command, resident, state

REPO = Path(__file__).resolve().parents[2]
VSERVER = Path(sys.executable).parent / "vserver"
# Measured 2026-12-07: a served `vserver list` imports 35 modules, 31 of them the bare
# interpreter's with site (python -X importtime -c pass); in its own process 69. Margin: 5.
SERVED_BUDGET = 40
CLI_MODULES = {"argparse", "vservers.engine.cli", "vservers.engine.listing"}


class Server:
    """A `vserver serve` of LAUNCHER for ENV's state root."""

    def __init__(self, env: dict[str, str], launcher: Path = VSERVER) -> None:
        self.root = env["VSERVER_ROOT"]
        self.proc = subprocess.Popen([str(launcher), "serve"], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert command.socket_path(self.root) in ready, (ready, self.proc.stderr.read() if self.proc.stderr else "")

    def spares(self) -> list[int]:
        """The server's children: its one spare, waiting in accept()."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def spare_count(self, wanted: int, timeout: float = 10.0) -> int:
        """The number of the server's children once it is WANTED (or TIMEOUT passed): a child
        that answered its command may still be on its way out."""
        deadline = time.monotonic() + timeout
        while len(self.spares()) != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.spares())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=20)


def ended(pid: int) -> bool:
    """Whether PID is gone or a zombie (reaped here if it is ours: the test session is a child
    subreaper, which a spare that outlived the server by a moment is reparented to)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    if state != "Z":
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


@pytest.fixture
def serve():
    started: list[Server] = []

    def start(env: dict[str, str], launcher: Path = VSERVER) -> Server:
        started.append(Server(env, launcher))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def vserver(*args: str, env: dict[str, str], launcher: Path = VSERVER,
            resident_on: bool = True) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `vserver ARGS` under -X importtime: its result (stderr without the import lines) and
    the modules the user's process imported."""
    env = {**os.environ, **env, "VSERVER_RESIDENT": "1" if resident_on else "0"}
    result = subprocess.run([sys.executable, "-X", "importtime", str(launcher), *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    names = {m[1] for m in map(_LINE.match, result.stderr.splitlines()) if m}
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not _LINE.match(line))
    return result, names


@pytest.fixture
def root_env(tmp_path):
    return {**TEST_ENV, "VSERVER_ROOT": str(tmp_path / "root")}


def test_the_client_knows_the_default_root_and_keeps_terminal_verbs_to_itself():
    assert command.DEFAULT_ROOT == state.DEFAULT_ROOT
    for on_terminal in (True, False):
        for argv in (["enter", "web1"], ["account", "passwd", "web1", "bob"], ["serve"],
                     ["template", "build", "busybox"], ["reinstall", "web1", "--yes"]):
            assert not command.served(argv, on_terminal), argv
        for argv in ([], ["--help"], ["list"], ["start", "web1"], ["stop", "--kill", "web1"], ["status", "web1"]):
            assert command.served(argv, on_terminal), argv
    # exec forwards its streams through pipes either way: served for a script, not at a terminal
    assert not command.served(["exec", "web1", "sh"], on_terminal=True)
    assert command.served(["exec", "web1", "sh"], on_terminal=False)


def test_a_served_command_gives_what_it_gives_in_its_own_process(serve, root_env):
    cases = (["--help"], ["list"], ["status", "nosuch"], ["start", "bad name!"], ["stop", "a", "b"],
             ["list", "--bogus"], [])
    unserved = {tuple(args): vserver(*args, env=root_env)[0] for args in cases}  # no server yet: in the process
    server = serve(root_env)
    for args in cases:
        served, names = vserver(*args, env=root_env)
        assert not names & CLI_MODULES, (args, sorted(names & CLI_MODULES))  # it went to the server
        assert len(names) <= SERVED_BUDGET, sorted(names)
        here = unserved[tuple(args)]
        assert (served.returncode, served.stdout, served.stderr) == (here.returncode, here.stdout, here.stderr), args
        opted_out, names = vserver(*args, env=root_env, resident_on=False)
        assert CLI_MODULES & names, args
        assert (opted_out.returncode, opted_out.stdout) == (here.returncode, here.stdout), args
    assert unserved[("status", "nosuch")].returncode != 0 and "nosuch" in unserved[("status", "nosuch")].stderr
    assert unserved[("list", "--bogus")].returncode == 2
    # A verb that wants the user's terminal runs in the user's process, server or not.
    enter, names = vserver("enter", "nosuch", env=root_env)
    assert enter.returncode != 0 and "vservers.engine.cli" in names
    assert server.proc.poll() is None and server.spare_count(1) == 1


def test_one_server_per_root_and_a_stop_leaves_nothing(serve, root_env):
    server = serve(root_env)
    second = subprocess.run([str(VSERVER), "serve"], env={**os.environ, **root_env}, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode != 0 and "another `vserver serve` serves" in second.stderr
    assert server.spare_count(1) == 1
    spares = server.spares()
    assert server.stop() == 0
    assert not os.path.lexists(command.socket_path(root_env["VSERVER_ROOT"]))
    deadline = time.monotonic() + 10
    while not ended(spares[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended(spares[0])  # the waiting spare ended with it
    result, names = vserver("list", env=root_env)  # and the next command runs in its own process
    assert result.returncode == 0 and "vservers.engine.cli" in names


def rollup_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_waiting_spare_owns_the_pages_it_shares_with_the_server(serve, root_env):
    # Copied while it waits (resident._own_pages), not page by page by its command's first
    # writes. Before the copy every anonymous page of the spare is the server's too (shared).
    server = serve(root_env)
    assert server.spare_count(1) == 1
    spare = server.spares()[0]
    anonymous_kb = rollup_kb(server.proc.pid, "Anonymous")  # the server's heap and arenas, in memory
    deadline = time.monotonic() + 10
    while rollup_kb(spare, "Private_Dirty") < anonymous_kb // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rollup_kb(spare, "Private_Dirty") >= anonymous_kb // 2, (rollup_kb(spare, "Private_Dirty"), anonymous_kb)
    # Pages that were not in memory stay unallocated: the copy is bounded by what the server has.
    assert rollup_kb(spare, "Private_Dirty") <= anonymous_kb + 4096


def test_the_socket_and_the_server_take_only_their_own_uid(serve, root_env):
    server = serve(root_env)
    path = command.socket_path(root_env["VSERVER_ROOT"])
    assert os.stat(path).st_mode & 0o777 == 0o600
    probe = ("import marshal, os, socket, sys\n"
             "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused by the file'); sys.exit()\n"
             "r = os.open('/dev/null', os.O_RDWR)\n"
             # The server may turn the peer away (and close) before the request is even sent.
             "try:\n"
             "    socket.send_fds(s, [marshal.dumps((2, sys.argv[2], ['list'], {}, '/', 0o22))], [r, r, r])\n"
             "    print('answered' if s.recv(256) else 'closed without an answer')\n"
             "except (BrokenPipeError, ConnectionResetError):\n    print('closed without an answer')\n")
    nobody = {"user": 65534, "group": 65534, "env": {"PATH": "/usr/bin:/bin"}, "capture_output": True, "text": True,
              "timeout": 30}
    first = subprocess.run([sys.executable, "-I", "-c", probe, path, command.package_dir()], **nobody)
    assert first.stdout.strip() == "refused by the file", first.stderr
    # With the socket opened to all (a second name in a directory all may enter, mode 0666), the
    # server's own check (SO_PEERCRED) still turns the peer away.
    public = Path(tempfile.mkdtemp(dir="/tmp", prefix="vs-resident-"))
    try:
        public.chmod(0o755)
        os.link(path, public / "cli.sock")
        os.chmod(path, 0o666)
        second = subprocess.run([sys.executable, "-I", "-c", probe, str(public / "cli.sock"),
                                 command.package_dir()], **nobody)
    finally:
        shutil.rmtree(public)
    assert second.stdout.strip() == "closed without an answer", second.stderr
    assert server.proc.poll() is None and server.spare_count(1) == 1  # and it serves on


def test_another_checkout_is_not_served_and_changed_files_end_the_server(serve, tmp_path):
    env = {**TEST_ENV, "VSERVER_ROOT": str(tmp_path / "root")}
    copy = tmp_path / "src"
    shutil.copytree(REPO / "vservers", copy / "vservers", ignore=shutil.ignore_patterns("__pycache__"))
    launcher = tmp_path / "vserver"
    resident.write_launcher(str(launcher), sys.executable, str(copy))
    server = serve(env, launcher)
    served, names = vserver("list", env=env, launcher=launcher)
    assert served.returncode == 0 and not names & CLI_MODULES
    # The main checkout's `vserver` is another engine: the server answers so, and it runs here.
    other, names = vserver("list", env=env)
    assert other.returncode == 0 and "vservers.engine.cli" in names and other.stdout == served.stdout
    assert server.proc.poll() is None
    # A file of the copy's engine changes: the next command runs in its own process (with the
    # new file), and the server ends for its supervisor to start it again.
    with open(copy / "vservers" / "engine" / "validate.py", "a") as fh:
        fh.write("\n# changed\n")
    stale, names = vserver("list", env=env, launcher=launcher)
    assert stale.returncode == 0 and "vservers.engine.cli" in names and stale.stdout == served.stdout
    assert server.proc.wait(timeout=20) == 75
    assert "changed; ending" in server.proc.stderr.read()
    assert not os.path.lexists(command.socket_path(env["VSERVER_ROOT"]))


def test_a_request_with_a_wrong_shape_is_turned_away(serve, root_env):
    server = serve(root_env)
    here = command.package_dir()
    for request in (b"not marshal", marshal.dumps((99, here, ["list"], {}, "/", 0o22)),
                    marshal.dumps((2, here, ["list", 3], {}, "/", 0o22)),
                    marshal.dumps((2, here, ["list"], {b"A": 1}, "/", 0o22)),
                    marshal.dumps((2, here, ["list"], {}, "/", 0o7777)), marshal.dumps((2, here, ["list"], {}, "/"))):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(command.socket_path(root_env["VSERVER_ROOT"]))
            null = os.open(os.devnull, os.O_RDWR)
            try:
                socket.send_fds(sock, [request], [null, null, null])
            finally:
                os.close(null)
            try:
                answer = sock.recv(256)
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            assert answer == b""  # closed, nothing run
    result, names = vserver("list", env=root_env)
    assert result.returncode == 0 and not names & CLI_MODULES  # the same spare serves the next
    assert server.spare_count(1) == 1


def test_a_server_started_stopped_and_deleted_through_the_resident_server(engine, serve):
    serve(TEST_ENV)
    ip = "198.19.5.61"
    steps = (("create", "res1", "--template", "busybox", "--ip", f"{ip}/18"), ("start", "res1"),
             ("status", "res1"), ("stop", "--kill", "res1"), ("start", "res1"), ("stop", "res1"),
             ("delete", "res1"))
    try:
        for args in steps:
            result, names = vserver(*args, env=TEST_ENV)
            assert result.returncode == 0, (args, result.stderr)
            assert not names & {"vservers.engine.cli", "vservers.engine.lifecycle", "pyroute2"}, args
            if args[0] == "start":
                assert engine.status("res1").state == "running"
                wait_for_http(ip)  # the guest the server's child started really serves
            if args[0] == "status":
                assert "state:    running" in result.stdout and f"{ip}/18" in result.stdout
            if args[0] == "stop":
                assert engine.status("res1").state == "stopped"
        assert "res1" not in engine.names()
    finally:
        if "res1" in engine.names():
            engine.delete("res1")


def test_exec_without_a_terminal_runs_in_the_resident_server_as_in_its_own_process(make_server, serve):
    make_server("res3", "198.19.5.63/18")
    script = ["exec", "res3", "sh", "-c", 'read line; echo "got $line"; echo oops >&2; exit 3']

    def run(resident_on: bool) -> tuple[subprocess.CompletedProcess, set[str]]:
        env = {**os.environ, **TEST_ENV, "VSERVER_RESIDENT": "1" if resident_on else "0"}
        result = subprocess.run([sys.executable, "-X", "importtime", str(VSERVER), *script], env=env, cwd=REPO,
                                input="hello\n", capture_output=True, text=True, timeout=60)
        names = {m[1] for m in map(_LINE.match, result.stderr.splitlines()) if m}
        result.stderr = "\n".join(line for line in result.stderr.splitlines() if not _LINE.match(line))
        return result, names

    here, names = run(resident_on=False)
    assert CLI_MODULES & names
    assert (here.returncode, here.stdout, here.stderr.splitlines()[-1]) == (3, "got hello\n", "oops")
    server = serve(TEST_ENV)
    served, names = run(resident_on=True)
    assert not names & CLI_MODULES, sorted(names & CLI_MODULES)  # it went to the server
    assert (served.returncode, served.stdout, served.stderr) == (here.returncode, here.stdout, here.stderr)
    assert server.spare_count(1) == 1  # the command's spare ended; the next one waits


def test_a_signal_to_the_users_process_reaches_the_command(engine, make_server, serve):
    # The halt takes the stop's whole --timeout when init ignores it: a stop that is still
    # waiting when the user presses ^C (SIGINT to the user's process) ends with 130, as here.
    make_server("res2", "198.19.5.62/18")
    server = serve(TEST_ENV)
    env = {**os.environ, **TEST_ENV}
    init_pid = engine.status("res2").init_pid
    os.kill(init_pid, signal.SIGSTOP)  # a stopped init acts on no halt signal until SIGKILL
    try:
        proc = subprocess.Popen([str(VSERVER), "stop", "--timeout", "60", "res2"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert server.spare_count(2) == 2  # the command's spare, and the next
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "stopped" not in out, (out, err)  # interrupted before the kill
    finally:
        os.kill(init_pid, signal.SIGCONT)
