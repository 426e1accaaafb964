"""The worker process's heartbeat: a thread that writes Node.last_seen of the nodes the
process serves every PANEL_HEARTBEAT_SECONDS.

Why a thread of its own, and not the reconcile job or the watch: the main thread runs one
job at a time (a template build may take many minutes), and the watch never touches the
database, so that neither can hold the other up. Django gives every thread its own
connection; this one opens its own for each beat and closes it after (one connection every
few seconds costs nothing, and none is left broken by a database restart), so a database
outage costs only the beats it lasts: the first beat after it connects anew. The thread
ends with the process (daemon) or when stop() is called.

One UPDATE per beat for all of the process's nodes, by queue name: a node added later for
one of its queues is covered from the next beat on.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, queue_names: list[str], period: float | None = None) -> None:
        super().__init__(name="panel-heartbeat", daemon=True)
        self.queue_names = list(queue_names)
        self.period = float(period if period is not None else settings.PANEL_HEARTBEAT_SECONDS)
        self.done = threading.Event()
        self.failing = False  # the last beat failed (log the outage once, and its end)
        self.beats = 0  # beats written (for the tests and the log)

    def beat(self) -> int:
        """Write now into the last_seen of the active nodes of our queues; how many rows."""
        from ..models import Node

        return Node.objects.filter(is_active=True, queue_name__in=self.queue_names).update(
            last_seen=timezone.now())

    def run(self) -> None:
        try:
            while not self.done.is_set():
                try:
                    self.beat()
                    self.beats += 1
                    if self.failing:
                        log.warning("heartbeat: the database answers again")
                    self.failing = False
                except Exception as exc:  # noqa: BLE001 - an outage must not end the heartbeat
                    if not self.failing:
                        log.error("heartbeat: could not write last_seen (%s); trying again every %.0f s",
                                  exc, self.period)
                    self.failing = True
                _drop_connection()
                self.done.wait(self.period)
        finally:
            _drop_connection()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def _drop_connection() -> None:
    """This thread's connection, closed (the next beat opens a new one)."""
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail too; it is gone anyway
        log.debug("heartbeat: closing the connection failed", exc_info=True)
