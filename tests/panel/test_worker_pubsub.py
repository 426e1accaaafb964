"""The worker's pubsub thread (vservers.worker.PanelWorker.subscribe): RQ's commands still reach
the worker, and the thread wakes often enough that stopping it never holds the worker's end
(redis-py 8 joins it; with RQ's 60 s turn a teardown took up to a minute)."""

from __future__ import annotations

import signal
import threading
import time

from rq.command import send_shutdown_command

from vservers.queues import get_queue
from vservers.worker import PUBSUB_WAKE_SECONDS, PanelWorker

PATIENCE = 30.0


def test_a_shutdown_command_stops_the_worker_and_its_pubsub_thread_with_it(rq_redis):
    worker = PanelWorker([get_queue("default")], connection=rq_redis)
    channel = worker.pubsub_channel_name
    sent = threading.Event()

    def shut_down_once_subscribed():
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if dict(rq_redis.pubsub_numsub(channel)).get(channel.encode()):
                send_shutdown_command(rq_redis, worker.name)
                sent.set()
                return
            time.sleep(0.05)

    commander = threading.Thread(target=shut_down_once_subscribed, daemon=True)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    commander.start()
    try:
        # max_idle_time ends the worker should the command never come (the test then fails below).
        worker.work(burst=False, max_idle_time=int(PATIENCE) + 5)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    commander.join(PATIENCE)

    assert sent.is_set(), "the worker never subscribed to its command channel"
    assert worker.stopping, "the shutdown command (SIGINT to the worker's process) did not stop the worker"
    assert worker.pubsub_thread.sleep_time == PUBSUB_WAKE_SECONDS
    assert not worker.pubsub_thread.is_alive()
