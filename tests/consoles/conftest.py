"""Fixtures of the console tests: the panel's world on a database other processes can open
(tests/panel/faults.py), a real console broker process (`manage.py consolebroker`, as the node
runs it) on a socket of the test's own, tickets issued as the web side issues them, and a client
that speaks consoles/protocol.py over the broker's socket like the web side's relay.

console_broker yields a running broker (socket path, process); start_broker(idle=...) starts
more, with other options. Every broker is stopped by its pid at the end."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from consoles import protocol

# The web process as production runs it (gunicorn + uvicorn as vpanel), for the web side's tests.
from tests.consoles.web import file_database_dir, web  # noqa: F401, E402 - fixtures, used by name

# The panel's fixtures (world, provision, drain...) come from tests/panel_world.py; these two put
# the world on a database other processes can open.
from tests.panel.faults import REPO, fault_world, file_database, wait_until  # noqa: F401

# A bound for what takes a second or two: only a hang runs into it.
PATIENCE = 60.0


class BrokerProcess:
    """One `manage.py consolebroker` on this test's database and engine installation."""

    def __init__(self, database: str, redis_url: str, directory: Path, idle: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.socket = directory / "run" / "console.sock"
        self.log_path = directory / "broker.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.panel.fault_settings",
            "PANEL_TEST_DATABASE": database,
            "REDIS_URL": redis_url,
            "PYTHONPATH": str(REPO),
        }
        argv = [sys.executable, "manage.py", "consolebroker", "--socket", str(self.socket), *extra]
        if idle is not None:
            argv += ["--idle", str(idle)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        wait_until(self._ready, lambda: f"the broker to listen; its log:\n{self.log_tail()}", timeout=PATIENCE)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"the broker exited:\n{self.log_tail()}"
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def children(self) -> list[int]:
        from vservers.engine import procfs

        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = procfs.read_stat(int(entry.name))
                if stat is not None and stat.ppid == self.pid:
                    found.append(int(entry.name))
        return found

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=PATIENCE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=PATIENCE)
        self._log.close()


@pytest.fixture
def start_broker(fault_world, panel_redis, tmp_path):  # noqa: F811 - the fixture imported above
    """start_broker(idle=None, extra=()) -> a running BrokerProcess; stopped at the end."""
    started: list[BrokerProcess] = []

    def start(idle: int | None = None, extra: tuple[str, ...] = ()) -> BrokerProcess:
        directory = tmp_path / f"broker-{len(started) + 1}"
        directory.mkdir()
        broker = BrokerProcess(fault_world.database, panel_redis, directory, idle=idle, extra=extra)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def console_broker(start_broker):
    """A console broker serving node "local" (queue "default") of the test's world."""
    return start_broker()


def issue_ticket(user, server, account: str = "root", seconds: float = 30) -> str:
    """A ticket as the web side issues it: a random secret, only its hash in the database."""
    from django.utils import timezone

    from consoles.models import ConsoleSession, ticket_hash

    ticket = secrets.token_urlsafe(32)
    ConsoleSession.objects.create(user=user, server=server, account=account, ticket_hash=ticket_hash(ticket),
                                  expires=timezone.now() + timedelta(seconds=seconds))
    return ticket


class ConsoleClient:
    """The web side's end of one connection to the broker."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(PATIENCE)
        self.sock.connect(str(path))
        self.reader = protocol.FrameReader()
        self.shown = b""
        self.exit_reason: str | None = None
        self._buffer = b""

    def hello(self, ticket: str, user: int, cols: int = 80, rows: int = 24) -> dict:
        self.sock.sendall(protocol.line({"ticket": ticket, "user": user, "cols": cols, "rows": rows}))
        return self.answer()

    def answer(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"the broker closed without an answer (got {self._buffer!r})")
            self._buffer += chunk
        line, rest = self._buffer.split(b"\n", 1)
        self._buffer = b""
        if rest:
            self._feed(rest)
        return json.loads(line)

    def _feed(self, data: bytes) -> None:
        for kind, payload in self.reader.feed(data):
            if kind == protocol.DATA:
                self.shown += payload
            elif kind == protocol.EXIT:
                self.exit_reason = json.loads(payload)["reason"]

    def type(self, text: str | bytes) -> None:
        self.sock.sendall(protocol.encode(protocol.DATA, text.encode() if isinstance(text, str) else text))

    def resize(self, cols: int, rows: int) -> None:
        self.sock.sendall(protocol.encode_json(protocol.RESIZE, {"cols": cols, "rows": rows}))

    def read_until(self, marker: bytes, timeout: float = PATIENCE) -> bytes:
        """What the terminal showed up to MARKER; fails if the console ends first."""
        deadline = time.monotonic() + timeout
        while marker not in self.shown:
            assert self.exit_reason is None, f"the console ended ({self.exit_reason}); it showed {self.shown!r}"
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no {marker!r}; the console showed {self.shown[-2000:]!r}") from None
            assert chunk, f"the broker closed without EXIT; it showed {self.shown!r}"
            self._feed(chunk)
        return self.shown

    def wait_exit(self, timeout: float = PATIENCE) -> str:
        """The EXIT frame's reason, after which the broker closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no EXIT; the console showed {self.shown[-2000:]!r}") from None
            if not chunk:
                break
            self._feed(chunk)
        assert self.exit_reason is not None, f"closed without EXIT; it showed {self.shown[-2000:]!r}"
        return self.exit_reason

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def open_console(console_broker):
    """open_console(ticket, user, broker=None) -> (client, answer), closed at the end."""
    clients: list[ConsoleClient] = []

    def connect(ticket: str, user: int, broker: BrokerProcess | None = None, cols: int = 80, rows: int = 24):
        client = ConsoleClient((broker or console_broker).socket)
        clients.append(client)
        return client, client.hello(ticket, user, cols, rows)

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def web_broker(fault_world, panel_redis, file_database_dir):  # noqa: F811 - the fixtures imported above
    """A console broker that the web process (tests/consoles/web.py, as vpanel) reaches: its
    socket where `web` looks for it, in the test's directory, group vpanel."""
    from tests.consoles.web import WEB_USER, web_console_socket

    directory = web_console_socket(file_database_dir).parent.parent
    directory.mkdir()
    broker = BrokerProcess(fault_world.database, panel_redis, directory, extra=("--group", WEB_USER))
    yield broker
    broker.stop()
