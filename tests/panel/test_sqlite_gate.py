"""The SQLite backend's write gate (panel/sqlite/base.py): a writer that finds another's write
transaction open waits for it on an flock in the kernel, not in SQLite's busy handler, and
the gate is let go at commit, rollback, close and after a write outside a transaction."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db.utils import ConnectionHandler

from panel import env
from panel.sqlite.base import gate_path


@pytest.fixture
def handler(tmp_path, django_db_blocker):
    """Connections "a" and "b" to one SQLite file with the panel's settings (each thread opens
    its own), and the file's path."""
    path = tmp_path / "db.sqlite3"
    settings = env.sqlite_database(path)
    # Our own handler (not django.db.connections): "default" is the name it insists on.
    connections = ConnectionHandler({"default": dict(settings), "b": dict(settings)})
    with django_db_blocker.unblock():
        with connections["default"].cursor() as cursor:
            cursor.execute("CREATE TABLE t (x INTEGER)")
        yield connections, path
        connections.close_all()


@contextmanager
def transaction(connection) -> Iterator[None]:
    """A transaction as transaction.atomic opens one on SQLite (BEGIN IMMEDIATE under the
    panel's settings), on a connection of our own handler."""
    connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        yield
    except BaseException:
        connection.rollback()
        raise
    else:
        connection.commit()
    finally:
        connection.set_autocommit(True)


def gate_free(path: Path) -> bool:
    """Whether another open file description can take the gate now."""
    fd = os.open(gate_path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def blocked_on(path: Path) -> bool:
    """Whether /proc/locks lists a process blocked on an flock of PATH."""
    ino = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields and fields[-3].endswith(f":{ino}"):
            return True
    return False


def test_a_second_writer_waits_on_the_gate_in_the_kernel(handler):
    """Without the gate the second writer sleeps in SQLite's busy handler, and /proc/locks
    shows no one blocked on the gate file (the test fails)."""
    connections, path = handler
    a = connections["default"]
    done = threading.Event()
    errors: list[BaseException] = []

    def write_b() -> None:
        try:
            with connections["b"].cursor() as cursor:  # this thread's own connection
                cursor.execute("INSERT INTO t VALUES (2)")
            done.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections["b"].close()

    with transaction(a):
        with a.cursor() as cursor:
            cursor.execute("INSERT INTO t VALUES (1)")
        thread = threading.Thread(target=write_b)
        thread.start()
        deadline = time.monotonic() + 10
        while not blocked_on(gate_path(path)) and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert blocked_on(gate_path(path)), "the second writer is not waiting on the gate"
        assert not done.is_set()
    thread.join(30)
    assert not errors and done.is_set()
    with a.cursor() as cursor:
        cursor.execute("SELECT x FROM t ORDER BY x")
        assert [row[0] for row in cursor.fetchall()] == [1, 2]


def test_the_gate_is_let_go_at_commit_rollback_and_after_a_write(handler):
    connections, path = handler
    a = connections["default"]
    with a.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")  # a write outside a transaction
    assert gate_free(path)
    with transaction(a):
        with a.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert not gate_free(path)  # BEGIN IMMEDIATE took it
    assert gate_free(path)
    with pytest.raises(ZeroDivisionError), transaction(a):
        assert not gate_free(path)
        1 / 0  # noqa: B018
    assert gate_free(path)
    a.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    assert not gate_free(path)
    a.close()  # a connection closed in the middle (the worker after an error)
    assert gate_free(path)


def test_the_gate_file_is_the_databases_own(handler, tmp_path):
    """Made by root, it gets the database file's owner and mode: only who may open the
    database may take it. A file found there keeps its owner."""
    connections, path = handler
    assert os.geteuid() == 0
    gate = gate_path(path)
    gate.unlink()
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o640)
    connections["default"].close()
    connections["default"].ensure_connection()
    info = os.stat(gate)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o640)
    connections["default"].close()
    gate.unlink()
    gate.touch(mode=0o600)
    connections["default"].ensure_connection()
    assert os.stat(gate).st_uid == 0


def test_options_can_leave_the_gate_out(tmp_path, django_db_blocker):
    """OPTIONS "write_gate": False (bench/panel.py --write-gate-ab's arm without it): no gate
    file, nothing held; the option does not reach sqlite3.connect."""
    path = tmp_path / "db.sqlite3"
    settings = env.sqlite_database(path)
    settings["OPTIONS"] = {**settings["OPTIONS"], "write_gate": False}
    connections = ConnectionHandler({"default": settings})
    with django_db_blocker.unblock():
        a = connections["default"]
        with transaction(a):
            with a.cursor() as cursor:
                cursor.execute("CREATE TABLE t (x INTEGER)")
        assert a.gate.fd is None and not gate_path(path).exists()
        connections.close_all()


def test_a_writer_waits_for_the_gate_no_longer_than_its_timeout(tmp_path, django_db_blocker):
    """A holder stuck with the gate (here: a plain flock, so SQLite's own lock is free) delays
    a writer by its connection's timeout, not for ever; the gate is not left held by the wait
    that gave up, once the holder lets go."""
    path = tmp_path / "db.sqlite3"
    settings = env.sqlite_database(path)
    settings["OPTIONS"] = {**settings["OPTIONS"], "timeout": 0.3}
    connections = ConnectionHandler({"default": settings})
    with django_db_blocker.unblock():
        a = connections["default"]
        with a.cursor() as cursor:
            cursor.execute("CREATE TABLE t (x INTEGER)")
        stuck = os.open(gate_path(path), os.O_RDONLY)
        try:
            fcntl.flock(stuck, fcntl.LOCK_EX)
            assert not gate_free(path)  # the control: the gate is taken
            with transaction(a):
                with a.cursor() as cursor:
                    cursor.execute("INSERT INTO t VALUES (1)")
                assert not a.gate.held  # it went on without the gate
        finally:
            os.close(stuck)
        deadline = time.monotonic() + 10
        while not gate_free(path):  # the given-up wait takes it and gives it back at once
            assert time.monotonic() < deadline, "the gate stayed taken after its holder let go"
            time.sleep(0.01)
        with a.cursor() as cursor:
            cursor.execute("SELECT x FROM t")
            assert [row[0] for row in cursor.fetchall()] == [1]
        connections.close_all()
