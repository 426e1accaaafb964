"""A row held FOR UPDATE by another connection, for the tests of claims that skip a row another
worker holds (SELECT ... FOR UPDATE SKIP LOCKED, PostgreSQL only: SQLite has no row locks, its
IMMEDIATE transactions take turns on the whole database)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, connections, transaction

# How long the holder keeps the lock at most: a claim that waited instead of skipping gets the
# row after this and the test fails on what it claimed, not on a hang.
HOLD_SECONDS = 20


def needs_row_locks() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's (make test runs this in its PostgreSQL pass)")


@contextmanager
def row_locked_elsewhere(model, pk: int) -> Iterator[None]:
    """Hold MODEL's row PK with SELECT ... FOR UPDATE in a transaction of another thread (its
    own connection) for the duration of the block."""
    holding = threading.Event()
    release = threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                assert model.objects.select_for_update().filter(pk=pk).first() is not None
                holding.set()
                release.wait(HOLD_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failure.append(exc)
            holding.set()
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(HOLD_SECONDS), "the other connection never took the lock"
        assert not failure, failure
        yield
    finally:
        release.set()
        thread.join()
