"""RQ queues with a JSON serializer: RQ's default pickle would let anyone who can write to
Redis run code as root in the worker."""

from __future__ import annotations

import os

import django_rq
from django.conf import settings
from rq.serializers import JSONSerializer

# The queues made so far in this process, by name, process and configuration.
_queues: dict[tuple, object] = {}


def get_queue(name: str = "default"):
    """The queue NAME, kept for the process: a new queue object comes with a new Redis
    connection, whose first enqueue also asks the server for its version (about 5 ms of
    every operation queued). Redis-py's pool reconnects by itself after Redis restarted. A
    changed RQ_QUEUES entry (tests) or a forked process gets a queue of its own."""
    key = (name, os.getpid(), repr(settings.RQ_QUEUES.get(name)))
    queue = _queues.get(key)
    if queue is None:
        queue = _queues[key] = django_rq.get_queue(name, serializer=JSONSerializer)
    return queue
