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

A node's worker (vservers.queues.restricted: it writes its own queues only) also listens
between beats on its nodes' wake-up channels (vservers.nodes.redis_acl.wake_channel): another
node that committed work for it in the database (a migration handed over, an operation asked
for) publishes there, and this thread queues the jobs the database asks for on its own queue
(vservers.migration.recovery.send_due) at once; and at every beat, so a wake-up lost (Redis
unreachable at that moment) costs at most one period. A wake-up carries nothing: it only
makes the thread look at the database.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone
from redis.client import PubSub

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    # The longest the listener waits at a time: how soon stop() is seen.
    LISTEN_SLICE = 0.25

    def __init__(self, queue_names: list[str], period: float | None = None, listen: bool | None = None) -> None:
        from ..queues import restricted

        super().__init__(name="panel-heartbeat", daemon=True)
        self.queue_names = list(queue_names)
        self.period = float(period if period is not None else settings.PANEL_HEARTBEAT_SECONDS)
        self.done = threading.Event()
        self.failing = False  # the last beat failed (log the outage once, and its end)
        self.beats = 0  # beats written (for the tests and the log)
        self.listen = restricted() if listen is None else listen
        self.listener: PubSub | None = None  # the wake-up channels' subscription
        self.deaf = False  # the last try to listen failed (log it once)
        self.wakes = 0  # wake-ups received
        self.sent = 0  # jobs queued by send_due

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
                # Only while Redis answers (the listener's connection gives up within seconds):
                # a Redis away must not hold up the beats.
                if self.listen and self.subscribed():
                    self.send_due()
                _drop_connection()
                if not self.listen:
                    self.done.wait(self.period)
                    continue
                deadline = time.monotonic() + self.period
                while not self.done.is_set() and time.monotonic() < deadline:
                    if self.woken(deadline):
                        self.send_due()
                        _drop_connection()
        finally:
            self.close_listener()
            _drop_connection()

    def send_due(self) -> None:
        """What the database asks of our nodes, queued on their own queues."""
        from ..migration import recovery
        from ..models import Node
        from ..queues import get_queue

        try:
            for node in Node.objects.filter(is_active=True, queue_name__in=self.queue_names):
                self.sent += recovery.send_due(node, get_queue(node.queue_name))
        except Exception:  # noqa: BLE001 - the next beat looks again (and the reconcile too)
            log.exception("heartbeat: could not queue the jobs due")

    def subscribed(self) -> bool:
        """Listening on our wake-up channels (subscribed now if not yet); False if Redis
        cannot be reached now."""
        if self.listener is not None:
            return True
        import redis

        from .redis_acl import wake_channel

        try:
            # A client of its own that gives up within seconds (a Redis that hangs or is gone).
            client = redis.Redis.from_url(settings.RQ_QUEUES[self.queue_names[0]]["URL"], socket_timeout=5,
                                          socket_connect_timeout=5)
            listener = client.pubsub(ignore_subscribe_messages=True)
            listener.subscribe(*[wake_channel(name) for name in self.queue_names])
        except Exception as exc:  # noqa: BLE001 - Redis away: beats go on; the next one tries again
            if not self.deaf:
                log.warning("heartbeat: cannot listen for wake-ups (%s); trying again at every beat", exc)
            self.deaf = True
            return False
        self.listener, self.deaf = listener, False
        return True

    def woken(self, deadline: float) -> bool:
        """Wait for a wake-up until DEADLINE (at most LISTEN_SLICE); True if one came (the
        ones that came together count once)."""
        listener = self.listener
        if listener is None:
            self.done.wait(max(0.0, deadline - time.monotonic()))
            return False
        try:
            message = listener.get_message(timeout=max(0.0, min(self.LISTEN_SLICE, deadline - time.monotonic())))
            if message is None or message.get("type") != "message":
                return False
            while listener.get_message(timeout=0) is not None:
                pass
        except Exception as exc:  # noqa: BLE001 - Redis went away: the next beat subscribes anew
            log.warning("heartbeat: lost the wake-up channel (%s)", exc)
            self.close_listener()
            return False
        self.wakes += 1
        return True

    def close_listener(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                listener.close()
                listener.connection_pool.disconnect()
            except Exception:  # noqa: BLE001 - a dead connection is gone anyway
                log.debug("heartbeat: closing the listener failed", exc_info=True)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def _drop_connection() -> None:
    """This thread's connection, closed (the next beat opens a new one)."""
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail too; it is gone anyway
        log.debug("heartbeat: closing the connection failed", exc_info=True)
