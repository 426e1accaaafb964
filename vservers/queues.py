"""RQ queues with a JSON serializer: RQ's default pickle would let anyone who can write to
Redis run code as root in the worker."""

from __future__ import annotations

import django_rq
from rq.serializers import JSONSerializer


def get_queue(name: str = "default"):
    return django_rq.get_queue(name, serializer=JSONSerializer)
