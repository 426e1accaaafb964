"""The node's console broker, as root: `manage.py consolebroker`.

The web process, unprivileged, never touches the kernel: it issues a single-use ticket
(ConsoleSession) and relays the browser's WebSocket to this broker over a Unix socket, speaking
consoles/protocol.py. Per connection the broker

 1. reads the hello (at most protocol.HELLO_LIMIT bytes, within HELLO_TIMEOUT seconds);
 2. redeems the ticket with one UPDATE that only an unspent, unexpired ticket of that user
    matches, so a ticket opens at most one console whoever races for it;
 3. checks again what the web side checked, with the views' own code (vservers.access): an
    active user, an operator or an admin of the server's tenant, the server on this broker's
    node and running, the account root or one the panel lists;
 4. opens a login shell in the server (vservers.engine.console.open_terminal) and pumps:
    the terminal's output through termfilter.TerminalFilter in DATA frames, DATA to the
    terminal, RESIZE to its size;
 5. ends with an EXIT frame and a plain reason (the shell ended, the server stopped, idle,
    the web side closed), kills everything of the session, and records its end.

Every refusal is a plain sentence for the user and an AuditEntry "console.refused"; every
session an AuditEntry "console.opened" and "console.closed". One thread per connection, at
most MAX_CONNECTIONS at once and MAX_PER_USER consoles per user.

What it trusts: the database (tickets, users, memberships, servers: the panel's own rows, as
the worker does), and whoever can connect to its socket only as far as a ticket goes. The
socket is mode 0660, its group the web process's; its directory must be one that nobody else
can write to, or someone could put a socket of theirs in its place.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import selectors
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
# Connections (and so sessions and threads) at once, and consoles per user.
MAX_CONNECTIONS = 64
MAX_PER_USER = 4
# The most keystrokes kept for a terminal that does not read them (a paste of 1 MiB fits).
INPUT_LIMIT = 2**20
# How long a send to the web side may block before the session is given up.
SEND_TIMEOUT = 60.0
# After a shell killed by a signal: how long to wait for the server's init to show whether the
# server stopped (the kernel kills a stopping server's processes before its init has exited).
STOP_GRACE = 2.0

EXPIRED = "This console link has expired or was already used. Open the console again."
NOT_ALLOWED = "You may not open a console on this server."
NOT_RUNNING = "The server is not running."
NOT_HERE = "This server is not on this node."
NO_ACCOUNT = "The server has no such account, or it is not one the panel lets you use."
BUSY = "Too many consoles are open on this node. Try again later."
USER_BUSY = f"You have {MAX_PER_USER} consoles open already. Close one and try again."
BAD_HELLO = "The console could not be opened (a malformed request)."
FAILED = "The console could not be opened in the server."

SHELL_ENDED = "The shell ended."
SERVER_STOPPED = "The server stopped."
WEB_CLOSED = "The console was closed."
BAD_FRAME = "The console received a message it does not understand and closed."
SERVICE_STOPPED = "The console service stopped."
WEB_STALLED = "The browser stopped reading the console's output."
BROKER_FAILED = "The console closed after an error on the node."


def idle_reason(seconds: int) -> str:
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"Idle for {minutes} minute{'s' if minutes != 1 else ''} without a keystroke."
    return f"Idle for {seconds} seconds without a keystroke."


class Refused(Exception):
    """A console not opened: the message is the user's sentence; DETAIL goes to the audit."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True)
class Hello:
    ticket: str
    user: int
    cols: int
    rows: int


def parse_hello(data: bytes) -> Hello:
    """The web side's hello, every field checked (ProtocolError if anything is off)."""
    value = protocol.parse_line(data)
    ticket, user, cols, rows = (value.get(key) for key in ("ticket", "user", "cols", "rows"))
    if not isinstance(ticket, str) or not 1 <= len(ticket) <= 200:
        raise protocol.ProtocolError("no ticket")
    for field in (user, cols, rows):
        if not isinstance(field, int) or isinstance(field, bool):
            raise protocol.ProtocolError("user, cols and rows must be integers")
    from vservers.engine.console import MAX_TERMINAL_SIZE

    assert isinstance(user, int) and isinstance(cols, int) and isinstance(rows, int)
    if not (1 <= cols <= MAX_TERMINAL_SIZE and 1 <= rows <= MAX_TERMINAL_SIZE):
        raise protocol.ProtocolError("odd terminal size")
    return Hello(ticket, user, cols, rows)


# --- the socket --------------------------------------------------------------------------


def check_directory(directory: Path, group: str | None) -> None:
    """Refuse a directory in which someone but root (or the web process's user, named like its
    group) could replace the socket: owned by another user, or writable by others (without
    the sticky bit) or by a group other than root's or GROUP. The owner of the broker's own
    code counts as root: who may change the code that root runs gains nothing from a socket."""
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{directory} is not a directory")
    owners = {0, Path(__file__).stat().st_uid}
    groups = {0}
    if group is not None:
        groups.add(grp.getgrnam(group).gr_gid)
        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(group).pw_uid)
    if info.st_uid not in owners:
        raise OSError(f"{directory} belongs to uid {info.st_uid}: it could replace the console socket")
    # With the sticky bit, only a file's owner (root: the socket is ours) may remove or rename it.
    sticky = info.st_mode & stat.S_ISVTX
    if info.st_mode & stat.S_IWOTH and not sticky:
        raise OSError(f"{directory} is writable by everyone: anyone could replace the console socket")
    if info.st_mode & stat.S_IWGRP and info.st_gid not in groups and not sticky:
        raise OSError(f"{directory} is writable by group {info.st_gid}: it could replace the console socket")


def listen(path: Path, group: str | None) -> socket.socket:
    """The broker's listening socket at PATH: mode 0660, group GROUP (root's if None), in a
    directory made for it (root's, mode 0750, group GROUP) when it does not exist."""
    gid = grp.getgrnam(group).gr_gid if group is not None else 0
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o750, parents=True)
        os.chown(directory, 0, gid)
        directory.chmod(0o750)
    # Whoever may rename a directory above it may put another in its place, too.
    for ancestor in (directory, *directory.parents):
        check_directory(ancestor, group)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        path.unlink()  # a socket left by a broker that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # 0600 from the start: nobody else connects before the chown below
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    sock.listen(MAX_CONNECTIONS)
    return sock


# --- the broker ----------------------------------------------------------------------------


class Broker:
    def __init__(self, socket_path: Path, group: str | None, idle: int, queues: list[str]) -> None:
        self.socket_path = socket_path
        self.group = group
        self.idle = idle
        self.queues = queues
        self._lock = threading.Lock()
        self._connections = 0
        self._per_user: dict[int, int] = {}
        self._threads: set[threading.Thread] = set()
        # Closed when the broker stops: every session's pump sees it readable.
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._stopping = threading.Event()

    # -- running

    def serve(self) -> None:
        """Accept connections until stop() (SIGTERM, SIGINT); then end every session."""
        from vservers import jobs

        jobs.get_engine()  # configured once, before any thread needs it
        listener = listen(self.socket_path, self.group)
        log.info("console broker listening on %s (group %s, idle %d s, queues %s)", self.socket_path,
                 self.group or "root", self.idle, ",".join(self.queues))
        try:
            sel = selectors.PollSelector()
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is listener:
                        self._accept(listener)
            sel.close()
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            for thread in list(self._threads):
                thread.join()
            os.close(self._stop_r)

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            os.close(self._stop_w)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with self._lock:
            full = self._connections >= MAX_CONNECTIONS
            if not full:
                self._connections += 1
        if full:
            with conn:
                _answer(conn, {"ok": False, "error": BUSY})
            return
        thread = threading.Thread(target=self._connection, args=(conn,), name="console", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _connection(self, conn: socket.socket) -> None:
        from django.db import connection

        try:
            with conn:
                Connection(self, conn).run()
        except Exception:  # noqa: BLE001 - one connection must never take the broker down
            log.exception("console connection failed")
        finally:
            connection.close()  # this thread's database connection
            with self._lock:
                self._connections -= 1
            self._threads.discard(threading.current_thread())

    # -- per-user slots

    def take_slot(self, user: int) -> bool:
        with self._lock:
            if self._per_user.get(user, 0) >= MAX_PER_USER:
                return False
            self._per_user[user] = self._per_user.get(user, 0) + 1
            return True

    def free_slot(self, user: int) -> None:
        with self._lock:
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]

    @property
    def stop_fd(self) -> int:
        return self._stop_r


def _answer(conn: socket.socket, value: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(SEND_TIMEOUT)
        conn.sendall(protocol.line(value))


def _read_hello(conn: socket.socket) -> tuple[bytes, bytes]:
    """The hello's line (without its newline) and whatever came after it; ProtocolError when
    it is longer than HELLO_LIMIT or the peer closes first, TimeoutError after HELLO_TIMEOUT."""
    deadline = time.monotonic() + HELLO_TIMEOUT
    data = b""
    while b"\n" not in data:
        if len(data) >= protocol.HELLO_LIMIT:
            raise protocol.ProtocolError("hello too long")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no hello")
        conn.settimeout(remaining)
        chunk = conn.recv(protocol.HELLO_LIMIT)
        if not chunk:
            raise protocol.ProtocolError("closed before its hello")
        data += chunk
    line, rest = data.split(b"\n", 1)
    if len(line) + 1 > protocol.HELLO_LIMIT:
        raise protocol.ProtocolError("hello too long")
    return line, rest


class Connection:
    """One connection from the web side: a hello, then one console or a refusal."""

    def __init__(self, broker: Broker, conn: socket.socket) -> None:
        self.broker = broker
        self.conn = conn

    def run(self) -> None:
        try:
            line, rest = _read_hello(self.conn)
            value = protocol.parse_line(line)
            if value.get("kind") == "download":  # a backup's download (vservers.backups.downloads)
                from vservers.backups import downloads

                downloads.serve(self.conn, value, self.broker.queues)
                return
            hello = parse_hello(line)
        except (protocol.ProtocolError, OSError) as exc:  # TimeoutError is an OSError
            log.info("console hello refused: %s", exc)
            _answer(self.conn, {"ok": False, "error": BAD_HELLO})
            return
        if not self.broker.take_slot(hello.user):
            self._refuse_unredeemed(hello, Refused(USER_BUSY, "too many consoles of this user"))
            return
        try:
            self._session(hello, rest)
        finally:
            self.broker.free_slot(hello.user)

    # -- refusals

    def _refuse_unredeemed(self, hello: Hello, refusal: Refused) -> None:
        """Refuse before a ticket was redeemed (it may not even exist): audited with what is
        known of it."""
        from django.contrib.auth import get_user_model

        from accounts.models import AuditEntry

        from .models import ConsoleSession, ticket_hash

        session = (ConsoleSession.objects.select_related("server__tenant")
                   .filter(ticket_hash=ticket_hash(hello.ticket)).first())
        actor = get_user_model().objects.filter(pk=hello.user).first()
        server = session.server if session is not None else None
        AuditEntry.record(None, "console.refused", server, actor=actor, reason=refusal.detail,
                          ticket_user=session.user_id if session is not None else None,
                          account=session.account if session is not None else None)
        _answer(self.conn, {"ok": False, "error": str(refusal)})

    def _refuse(self, session, refusal: Refused) -> None:
        """Refuse after the ticket was redeemed: the session row gets its end."""
        from django.utils import timezone

        from accounts.models import AuditEntry

        session.ended = timezone.now()
        session.end_reason = str(refusal)[:200]
        session.save(update_fields=["ended", "end_reason"])
        AuditEntry.record(None, "console.refused", session.server, actor=session.user, reason=refusal.detail,
                          account=session.account, session=str(session.uuid))
        _answer(self.conn, {"ok": False, "error": str(refusal)})

    # -- a console

    def _redeem(self, hello: Hello):
        """The ticket's session, now spent; Refused(EXPIRED) if the ticket is unknown, spent,
        expired or another user's."""
        from django.utils import timezone

        from .models import ConsoleSession, ticket_hash

        now = timezone.now()
        digest = ticket_hash(hello.ticket)
        redeemed = ConsoleSession.objects.filter(ticket_hash=digest, started__isnull=True, expires__gt=now,
                                                 user_id=hello.user).update(started=now)
        if redeemed != 1:
            raise Refused(EXPIRED, "ticket expired, spent, unknown or another user's")
        return ConsoleSession.objects.select_related("user", "server__tenant", "server__node").get(ticket_hash=digest)

    def _check(self, session):
        """What the web side checked, checked again with the views' code (vservers.access).
        Returns the engine, the server's init pid and a pidfd of that init."""
        from django.core.exceptions import PermissionDenied
        from django.http import Http404

        from vservers import access, jobs
        from vservers.engine.errors import EngineError
        from vservers.models import Node, State

        user = session.user
        if user is None or not user.is_active:
            raise Refused(NOT_ALLOWED, "user missing or inactive")
        try:
            server = access.get_server(user, session.server.uuid, act=True)
        except Http404:
            raise Refused(NOT_ALLOWED, "not a server the user sees") from None
        except PermissionDenied as exc:
            raise Refused(NOT_ALLOWED, f"permission denied: {exc}") from None
        if session.account != "root":
            try:
                access.get_account(server, session.account)
            except (Http404, PermissionDenied) as exc:
                raise Refused(NO_ACCOUNT, f"account {session.account!r}: {exc or 'not listed'}") from None
        nodes = Node.objects.filter(is_active=True, queue_name__in=self.broker.queues)
        if server.node_id is None or not nodes.filter(pk=server.node_id).exists():
            raise Refused(NOT_HERE, "server not on this broker's node")
        if server.state != State.RUNNING:
            raise Refused(NOT_RUNNING, f"server {server.state}")
        engine = jobs.get_engine()
        try:
            init_pid = engine.init_pid(server.engine_name)
            pidfd = os.pidfd_open(init_pid)
        except (EngineError, OSError) as exc:
            raise Refused(NOT_RUNNING, f"server not running in the kernel: {exc}") from None
        try:
            if engine.init_pid(server.engine_name) != init_pid:  # the pidfd is of a later process
                raise Refused(NOT_RUNNING, "server restarted meanwhile")
        except EngineError:
            os.close(pidfd)
            raise Refused(NOT_RUNNING, "server stopped meanwhile") from None
        except BaseException:
            os.close(pidfd)
            raise
        return engine, server, init_pid, pidfd

    def _session(self, hello: Hello, rest: bytes) -> None:
        from django.db import connection
        from django.utils import timezone

        from accounts.models import AuditEntry
        from vservers.engine import console
        from vservers.engine.errors import EngineError

        try:
            session = self._redeem(hello)
        except Refused as refusal:
            self._refuse_unredeemed(hello, refusal)
            return
        try:
            engine, server, init_pid, pidfd = self._check(session)
        except Refused as refusal:
            self._refuse(session, refusal)
            return
        try:
            try:
                terminal = console.open_terminal(init_pid, engine.cgroup_procs(server.engine_name),
                                                 account=session.account, cols=hello.cols, rows=hello.rows)
            except (EngineError, OSError) as exc:
                log.warning("console of %s as %s: %s", server, session.account, exc)
                # An EngineError of the terminal speaks of the guest (its account, its shell),
                # which helps the user repair it; an OSError may name host paths: operators
                # read it in the audit and the log.
                said = f"{FAILED} ({exc})"[:200] if isinstance(exc, EngineError) else FAILED
                self._refuse(session, Refused(said, f"could not open a terminal: {exc}"))
                return
            AuditEntry.record(None, "console.opened", server, actor=session.user, account=session.account,
                              session=str(session.uuid))
            reason = BROKER_FAILED
            try:
                _answer(self.conn, {"ok": True})
                # No database connection held for hours by an idle console (PostgreSQL counts
                # them); the end is recorded on a new one.
                connection.close()
                reason = Pump(self, terminal, pidfd, rest).run()
            finally:
                terminal.close()
                ended = timezone.now()
                session.ended = ended
                session.end_reason = reason[:200]
                session.save(update_fields=["ended", "end_reason"])
                AuditEntry.record(None, "console.closed", server, actor=session.user, account=session.account,
                                  session=str(session.uuid), reason=reason,
                                  seconds=round((ended - session.started).total_seconds(), 1))
        finally:
            os.close(pidfd)


class Pump:
    """Copies between the web side and the terminal until one of the ends; run() says why."""

    def __init__(self, connection: Connection, terminal, init_pidfd: int, rest: bytes) -> None:
        self.conn = connection.conn
        self.idle = connection.broker.idle
        self.stop_fd = connection.broker.stop_fd
        self.terminal = terminal
        self.init_pidfd = init_pidfd
        self.rest = rest

    def send(self, kind: bytes, payload: bytes) -> None:
        for start in range(0, max(len(payload), 1), protocol.MAX_PAYLOAD):
            self.conn.sendall(protocol.encode(kind, payload[start:start + protocol.MAX_PAYLOAD]))

    def run(self) -> str:
        from vservers.engine import termfilter

        reason = self._pump(termfilter.TerminalFilter())
        with contextlib.suppress(OSError, protocol.ProtocolError):
            self.send(protocol.EXIT, json.dumps({"reason": reason}).encode())
        return reason

    def _pump(self, screen) -> str:
        from vservers.engine.errors import EngineError

        master = self.terminal.master
        os.set_blocking(master, False)
        self.conn.settimeout(SEND_TIMEOUT)  # sends block at most this long; reads only when ready
        reader = protocol.FrameReader()
        pending = bytearray()
        deadline = time.monotonic() + self.idle
        sel = selectors.PollSelector()
        sel.register(self.conn, selectors.EVENT_READ)
        sel.register(master, selectors.EVENT_READ)
        sel.register(self.init_pidfd, selectors.EVENT_READ)
        sel.register(self.stop_fd, selectors.EVENT_READ)
        incoming = self.rest
        try:
            while True:
                if incoming:
                    try:
                        frames = reader.feed(incoming)
                    except protocol.ProtocolError:
                        return BAD_FRAME
                    incoming = b""
                    for kind, payload in frames:
                        if kind == protocol.DATA:
                            if len(pending) + len(payload) > INPUT_LIMIT:
                                return BAD_FRAME
                            pending += payload
                            deadline = time.monotonic() + self.idle
                        elif kind == protocol.RESIZE:
                            try:
                                size = json.loads(payload)
                                self.terminal.resize(size["cols"], size["rows"])
                            except (ValueError, TypeError, KeyError, EngineError, OSError):
                                return BAD_FRAME
                        else:  # EXIT is the broker's to send
                            return BAD_FRAME
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
                    sel.modify(master, events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return idle_reason(self.idle)
                for key, mask in sel.select(remaining):
                    if key.fd == self.stop_fd:
                        return SERVICE_STOPPED
                    if key.fd == self.init_pidfd:
                        return SERVER_STOPPED
                    if key.fileobj is self.conn:
                        try:
                            incoming = self.conn.recv(65536)
                        except OSError:
                            return WEB_CLOSED
                        if not incoming:
                            return WEB_CLOSED
                    elif key.fd == master:
                        if mask & selectors.EVENT_WRITE and pending:
                            try:
                                del pending[:os.write(master, pending)]
                            except BlockingIOError:
                                pass
                            except OSError:
                                return self._ended()
                            if not pending:
                                sel.modify(master, selectors.EVENT_READ)
                        if mask & selectors.EVENT_READ:
                            try:
                                data = os.read(master, 65536)
                            except BlockingIOError:
                                continue
                            except OSError:  # EIO: everything on the terminal has exited
                                return self._ended()
                            if not data:
                                return self._ended()
                            shown = screen.feed(data)
                            if shown:
                                try:
                                    self.send(protocol.DATA, shown)
                                except TimeoutError:
                                    return WEB_STALLED
                                except OSError:
                                    return WEB_CLOSED
        finally:
            sel.close()

    def _ended(self) -> str:
        """Why the terminal ended: its shell, or the server stopping (which kills the session's
        processes before the server's init is gone: the init is given STOP_GRACE to show it)."""
        from vservers.engine.errors import EngineError

        try:
            code = self.terminal.wait(STOP_GRACE * 5)
        except EngineError:
            code = 137
        if code > 128:
            poller = selectors.PollSelector()
            poller.register(self.init_pidfd, selectors.EVENT_READ)
            try:
                if poller.select(STOP_GRACE):
                    return SERVER_STOPPED
            finally:
                poller.close()
        return SHELL_ENDED


def run(socket_path: Path, group: str | None, idle: int, queues: list[str]) -> None:
    """Serve until SIGTERM or SIGINT."""
    broker = Broker(socket_path, group, idle, queues)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: broker.stop())
    broker.serve()
