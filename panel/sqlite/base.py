"""Django's SQLite backend with a write gate: writers queue on an flock instead of SQLite's
busy handler.

Why: the web process and a node's worker processes write to one SQLite file. SQLite lets one
writer in at a time, and a writer that finds the lock taken sleeps in its busy handler for 1, 2,
5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between attempts (sqliteDefaultBusyCallback),
whenever the lock was freed meanwhile. With four workers and the web side writing at once that
left the lock free while its waiters slept: a uprobe on sqlite3OsSleep counted 4.3 s of such
sleeps in 2.7 s of bench/panel.py's four-worker phase (issue 17), and the workers used ~1.6 of
the machine's 2 CPUs.

Here each connection's write transaction (BEGIN IMMEDIATE, as the panel's settings ask) and
each write statement outside one first takes an exclusive flock on a file beside the database
("NAME-writegate", the database file's owner and mode, so only those who may open the database
can take it). A waiter sleeps in the kernel and wakes as soon as the holder commits, rolls
back or closes (or dies: the kernel drops the lock). The gate only orders writers: SQLite's own
locking still guards the data, and a writer that does not take the gate (the sqlite3 shell, an
older process) meets SQLite's busy handler as before. The wait for the gate is bounded by the
connection's own timeout (OPTIONS "timeout"): past it the writer goes on without the gate, into
SQLite's busy handler, which fails it with "database is locked" as before if the holder is stuck.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from django.db.backends.sqlite3 import base

# Statements that write outside a transaction (autocommit): they take SQLite's write lock too.
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")
GATED_MODES = ("IMMEDIATE", "EXCLUSIVE")
SUFFIX = "-writegate"


def gate_path(database: str | Path) -> Path:
    return Path(f"{database}{SUFFIX}")


def open_gate(database: str | Path) -> int | None:
    """The gate file's descriptor (close-on-exec), made with the database file's owner and
    mode if missing; None where there is none to take (an in-memory database, a file this
    process cannot open)."""
    path = gate_path(database)
    try:
        stat = os.stat(database)
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.st_mode & 0o666)
    except FileExistsError:
        made = False
    except OSError:
        return None
    else:
        made = True
    if not made:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
    if made and os.geteuid() == 0:
        # Root made it: the database's owner's, as SQLite does with the journal files it makes
        # (only a file made just now, never one found there).
        try:
            os.fchown(fd, stat.st_uid, stat.st_gid)
        except OSError:
            pass
    return fd


def wait_for_flock(fd: int, timeout: float) -> bool:
    """Take an exclusive flock of FD, waiting in the kernel for at most TIMEOUT seconds; whether
    it was taken. flock(2) has no timeout, so the wait runs in a thread of its own (on a dup of
    FD: the same open file, whose number cannot be reused under it), and a lock that comes after
    the caller gave up is given back at once."""
    own = os.dup(fd)
    taken = threading.Event()
    decided = threading.Lock()
    gave_up = False

    def wait() -> None:
        try:
            fcntl.flock(own, fcntl.LOCK_EX)
            with decided:
                if gave_up:
                    fcntl.flock(own, fcntl.LOCK_UN)
                else:
                    taken.set()
        finally:
            os.close(own)  # the lock stays with the open file, held through FD

    threading.Thread(target=wait, name="sqlite-write-gate", daemon=True).start()
    if taken.wait(timeout):
        return True
    with decided:
        gave_up = not taken.is_set()
    return not gave_up


class WriteGate:
    """One connection's hold on the gate file."""

    def __init__(self, fd: int | None, timeout: float = 5.0) -> None:
        self.fd = fd
        self.timeout = timeout
        self.held = False

    def acquire(self) -> None:
        if self.fd is None or self.held:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = wait_for_flock(self.fd, self.timeout)

    def release(self) -> None:
        if self.held and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class GatedCursor(base.SQLiteCursorWrapper):
    """A write statement outside a transaction holds the gate while it runs."""

    gate: WriteGate

    def execute(self, query, params=None):
        if self.gate.fd is None or self.connection.in_transaction or not _writes(query):
            return super().execute(query, params)
        self.gate.acquire()
        try:
            return super().execute(query, params)
        finally:
            if not self.connection.in_transaction:
                self.gate.release()

    def executemany(self, query, param_list):
        if self.gate.fd is None or self.connection.in_transaction or not _writes(query):
            return super().executemany(query, param_list)
        self.gate.acquire()
        try:
            return super().executemany(query, param_list)
        finally:
            if not self.connection.in_transaction:
                self.gate.release()


def _writes(query: str) -> bool:
    return query.lstrip()[:7].upper().startswith(WRITES)


class DatabaseWrapper(base.DatabaseWrapper):
    gate = WriteGate(None)  # each connection gets its own in get_new_connection
    # OPTIONS "write_gate": False leaves the gate out (bench/panel.py --write-gate-ab compares).
    write_gate = True

    def get_connection_params(self):
        params = super().get_connection_params()
        self.write_gate = bool(params.pop("write_gate", True))
        return params

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        self.gate.close()
        gated = self.write_gate and not self.is_in_memory_db()
        # sqlite3.connect's own default: 5 s.
        timeout = float(conn_params.get("timeout", 5.0))
        self.gate = WriteGate(open_gate(self.settings_dict["NAME"]) if gated else None, timeout)
        return connection

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=GatedCursor)
        cursor.gate = self.gate
        return cursor

    def _start_transaction_under_autocommit(self):
        if self.transaction_mode not in GATED_MODES:
            return super()._start_transaction_under_autocommit()
        self.gate.acquire()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self.gate.release()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            if self.connection is None or not self.connection.in_transaction:
                self.gate.release()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            if self.connection is None or not self.connection.in_transaction:
                self.gate.release()

    def _close(self):
        try:
            return super()._close()
        finally:
            self.gate.close()
