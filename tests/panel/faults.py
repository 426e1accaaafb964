"""What the fault tests share: a database that other processes can open, real worker processes
to start, stop, pause and kill, a Redis of their own to stop and start, and checks that the
database tells the kernel's truth and that nothing of a server is left in the kernel.

Worker processes are `manage.py nodeworker` exactly as production starts them (vservers.worker),
with tests/panel/fault_settings.py pointing them at this test's database.
VSERVERS_TEST_FAULT="KIND:PHASE" makes one stop itself at a named point of an operation
(vservers.jobs.Run.checkpoint), where the test kills it with SIGKILL: the middle of the
operation is hit exactly, without any timing.

Every process here is started by the test and stopped by its PID; guests whose worker was
killed are re-parented to pytest (a subreaper) and removed by the engine fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections

from tests.engine.helpers import is_fork_server
from tests.leaks import PANEL_ENV, _leaks_of
from vservers.engine import procfs

REPO = Path(__file__).resolve().parents[2]
# A generous bound for things that take a second or two: only a hang runs into it.
PATIENCE = 120.0


def wait_until(predicate, what: str, timeout: float = PATIENCE, every: float = 0.1):
    """Poll PREDICATE until it returns something true and return that; fail with WHAT (a
    string, or a callable for a message computed at the end) when TIMEOUT runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(every)


def process_state(pid: int) -> str | None:
    """The one-letter state of PID (R, S, T, Z, ...), None once it is gone."""
    stat = procfs.read_stat(pid)
    return stat.state if stat else None


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait until PID has exited (any process); collect it if it is our child now."""
    return procfs.wait_exit(pid, timeout)


# --- a database the workers can share ----------------------------------------------------------


@pytest.fixture
def file_database(transactional_db, django_db_blocker, tmp_path, monkeypatch, request):
    """The test's database, on a file when pytest-django's is an in-memory SQLite database
    (which no other process can open, and where a second writer thread gets "database table
    is locked" at once instead of waiting its turn); yields what a worker process sets as its
    NAME. On a file the panel's settings apply (WAL, IMMEDIATE transactions, a busy timeout).

    The in-memory connection object is left as it is: pytest-django's live server shares it
    with its request threads, and a request thread left by an earlier test's browser or API
    client closes it when its HTTP connection ends. On the in-memory object that close is
    ignored; on a shared object renamed to the file it closed the connection under this
    test's queries (a segfault in sqlite3). So this thread gets a connection object of its
    own for the file, and threads the test starts open theirs from a settings dict of their
    own, not the one the shared object holds.

    The file goes into tmp_path, or into the directory of a fixture `file_database_dir` where
    one is defined (tests/consoles: a directory the unprivileged web process may enter)."""
    memory = connections["default"]
    if memory.vendor != "sqlite" or not memory.is_in_memory_db():
        yield memory.settings_dict["NAME"]
        return
    try:
        directory = request.getfixturevalue("file_database_dir")
    except pytest.FixtureLookupError:
        directory = tmp_path
    path = directory / "panel.sqlite3"
    shutil.copyfile(_migrated_database(memory, request, django_db_blocker, monkeypatch), path)
    file_settings = {**memory.settings_dict, "NAME": str(path)}
    monkeypatch.setitem(connections.settings, "default", file_settings)
    on_file = type(memory)(file_settings, "default")
    connections["default"] = on_file  # for this thread only (connections are thread-local)
    try:
        yield str(path)
    finally:
        on_file.close()
        connections["default"] = memory


_MIGRATED: dict[str, Path] = {}


def _migrated_database(memory, request, django_db_blocker, monkeypatch) -> Path:
    """A file database with every migration applied, made by the session's first test that asks
    (migrate, as before) and copied for each test after it: migrating anew took ~2.5 s of each
    of about a hundred tests. Closed before it is copied, so its write-ahead log is in the file."""
    if "path" not in _MIGRATED:
        template = request.getfixturevalue("tmp_path_factory").mktemp("migrated") / "panel.sqlite3"
        template_settings = {**memory.settings_dict, "NAME": str(template)}
        monkeypatch.setitem(connections.settings, "default", template_settings)  # the test's own comes next
        connection = type(memory)(template_settings, "default")
        connections["default"] = connection
        try:
            with django_db_blocker.unblock():
                call_command("migrate", verbosity=0, interactive=False)
        finally:
            connection.close()
            connections["default"] = memory
        _MIGRATED["path"] = template
    return _MIGRATED["path"]


@pytest.fixture
def fault_world(file_database, world):
    """The panel's test world (conftest.world) in a database that worker processes share."""
    world.database = file_database
    return world


# --- worker processes ------------------------------------------------------------------------


class WorkerProcess:
    """One `manage.py nodeworker` of the panel, as the node runs it."""

    def __init__(self, database: str, redis_url: str, log: Path, fault: str = "", queues=("default",),
                 env: dict[str, str] | None = None, settings: str = "tests.panel.fault_settings",
                 processes: int = 1) -> None:
        env = {
            **os.environ,
            **(env or {}),
            "DJANGO_SETTINGS_MODULE": settings,
            "PANEL_TEST_DATABASE": database,
            "REDIS_URL": redis_url,
            "PYTHONPATH": str(REPO),
        }
        env.pop("VSERVERS_TEST_FAULT", None)
        if fault:
            env["VSERVERS_TEST_FAULT"] = fault
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()/kill()
        # One process is the worker itself; more, a group of them (vservers.worker.WorkerGroup).
        argv = [sys.executable, "manage.py", "nodeworker", "--processes", str(processes), *queues]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_paused(self) -> None:
        """Wait until the worker stopped itself at its fault point (state T)."""
        wait_until(
            lambda: process_state(self.pid) == "T" or not self.alive(),
            lambda: f"worker {self.pid} to reach its fault point; its log:\n{self.log_tail()}",
        )
        assert self.alive(), f"worker {self.pid} exited instead:\n{self.log_tail()}"

    def python_children(self, fork_servers: bool = False) -> list[int]:
        """Helper processes of its own (Python), not the guests' inits it adopted. It should
        have none: its watch is a thread. Fork servers (vservers/engine/forker.py) are left
        out unless FORK_SERVERS: a worker's, and one a killed worker left for the group
        (a subreaper) to collect, are not workers."""
        me = os.path.realpath(sys.executable)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            stat = procfs.read_stat(int(entry.name))
            if stat is None or stat.ppid != self.pid:
                continue
            try:
                if os.path.realpath(entry / "exe", strict=True) == me and (
                        fork_servers or not is_fork_server(int(entry.name))):
                    found.append(int(entry.name))
            except OSError:
                continue  # it exited meanwhile (a helper such as tar or zstd of the engine)
        return found

    def kill(self) -> list[int]:
        """SIGKILL, as the OOM killer would; then make sure no helper process of it lives on.
        Returns the helpers' pids (there should be none) but its fork server's: the engine's
        (vservers/engine/forker.py) is one by design, which ends with the end of its socket, so
        with the worker; that it does is checked here with the others'."""
        helpers = self.python_children(fork_servers=True)
        fork_servers = [pid for pid in helpers if is_fork_server(pid)]
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self._log.close()
        for pid in helpers:
            assert wait_gone(pid), f"process {pid} of the killed worker {self.pid} lives on"
        return [pid for pid in helpers if pid not in fork_servers]

    def _report_stuck_stop(self, timeout: float) -> None:
        """A warm stop that did not end is a defect of the worker, though the test goes on:
        its threads' stacks (fault_settings' SIGUSR2) and log go to the session's warnings."""
        import warnings

        try:
            os.kill(self.pid, signal.SIGUSR2)
        except ProcessLookupError:
            return
        time.sleep(1.0)
        warnings.warn(f"worker {self.pid} did not end {timeout:.0f} s after SIGTERM; its log:\n"
                      f"{self.log_tail(120)}", stacklevel=3)

    def stop(self, timeout: float = 20.0) -> None:
        """A warm shutdown (SIGTERM: finish the job at hand, then exit); SIGKILL if it does
        not come within TIMEOUT (a warm stop takes a second or two; the longest job of these
        tests far less than 20 s), or if it is paused at a fault point."""
        if self.alive():
            helpers = self.python_children(fork_servers=True)
            if process_state(self.pid) == "T":
                os.kill(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._report_stuck_stop(timeout)
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            for pid in helpers:
                wait_gone(pid)
        self._log.close()


@pytest.fixture
def workers(fault_world, rq_redis, panel_redis, tmp_path):
    """workers(fault="", redis_url=None, env=None, processes=1) starts a worker process (a
    group of PROCESSES) on this test's database and (by default) the session's Redis; each is
    stopped at the end if still running."""
    started: list[WorkerProcess] = []

    def start(fault: str = "", redis_url: str | None = None, env: dict[str, str] | None = None,
              processes: int = 1) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        worker = WorkerProcess(fault_world.database, redis_url or panel_redis, log, fault=fault, env=env,
                               processes=processes)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# --- a Redis of the test's own, to stop and start --------------------------------------------


class RedisServer:
    """A private redis-server on a Unix socket, without persistence: stopping it loses
    everything, as a Redis restart without a dump does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}?db=0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--dir", str(self.directory),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, FileNotFoundError):
                assert self.proc.poll() is None, "redis-server exited"
                return False

        try:
            wait_until(up, "redis-server to answer", timeout=20)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make install)")
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


# --- the kernel's truth ------------------------------------------------------------------------


def kernel_state(engine, server) -> str:
    """"running", "stopped", or "missing" (the node does not have it)."""
    if server.engine_name not in engine.names():
        return "missing"
    return engine.status(server.engine_name, with_addresses=False).state


def assert_tells_the_truth(engine, server) -> None:
    """The server's row says what the kernel says, and is not stuck half-way."""
    from vservers.models import IN_PROGRESS, State

    server.refresh_from_db()
    truth = kernel_state(engine, server)
    assert server.state not in IN_PROGRESS, f"{server} is stuck {server.state}"
    expected = {State.RUNNING: {"running"}, State.STOPPED: {"stopped"}, State.DELETED: {"missing"},
                State.ERROR: {"missing", "stopped", "running"}}
    assert truth in expected[server.state], f"{server} says {server.state}, the kernel {truth}"
    if server.state == State.ERROR:
        assert server.state_reason, "an error says why"


def server_leaks(uid_bases: list[int]) -> list[str]:
    """What the tests' installation holds in the kernel beyond its bridge (and the bridge's
    firewall tables), counting only the processes of these servers (another installation on
    this host may use nearby uids)."""
    bridge = PANEL_ENV["VSERVER_BRIDGE"]
    leaks = []
    for leak in _leaks_of(PANEL_ENV):
        if leak == f"network interface {bridge}" or (leak.startswith("nftables table ") and leak.endswith(bridge)):
            continue
        if leak.startswith("process "):
            uid = int(leak.split("(uid ", 1)[1].split(")", 1)[0])
            if not any(base <= uid < base + 65536 for base in uid_bases):
                continue
        leaks.append(leak)
    return leaks
