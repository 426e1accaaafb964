"""One RQ queue per node: RQ_QUEUES knows every node's queue without a settings change per
node.

A node made in the panel gets the queue "node-<its name>" (Node.name is a slug), on the
panel's one Redis. django-rq looks each queue up by name in settings.RQ_QUEUES (a dict it
indexes and asks `in`); NodeQueues answers for any such name with the configuration of the
panel's queues, and lists only the fixed ones (the one-host install's "default"). This
module imports no Django: panel/settings.py uses it.
"""

from __future__ import annotations

import re

PREFIX = "node-"
# "node-" and a node's name: a slug of at most 40 characters (Node.name).
QUEUE_NAME = re.compile(r"node-[-a-zA-Z0-9_]{1,40}")


def queue_for(node_name: str) -> str:
    """The queue of a node made in the panel."""
    return PREFIX + node_name


def is_node_queue(name: object) -> bool:
    return isinstance(name, str) and QUEUE_NAME.fullmatch(name) is not None


# What the ids of a node's jobs and the names of its workers begin with: its queue's name and
# this (RQ allows only letters, digits, "-" and "_" in a job id). A node's name has no "_"
# (the Add node form, vservers.nodes.redis_acl), so "node-a_" begins no key of another node,
# and "rq:job:node-a_*" is node a's jobs and nothing else.
SEPARATOR = "_"


def key_prefix(queue_name: str) -> str:
    """The prefix of the job ids and worker names of a node's queue (see SEPARATOR)."""
    return queue_name + SEPARATOR


class NodeQueues(dict):
    """RQ_QUEUES: the fixed queues, and every "node-<name>" with the configuration NODE."""

    def __init__(self, fixed: dict, node: dict) -> None:
        super().__init__(fixed)
        self.node = node

    def __missing__(self, name):
        if is_node_queue(name):
            return dict(self.node)
        raise KeyError(name)

    def __contains__(self, name) -> bool:
        return super().__contains__(name) or is_node_queue(name)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __repr__(self) -> str:
        return f"NodeQueues({dict(self)!r}, node={self.node!r})"


def node_queues(redis_url: str, timeout: int = 3600) -> NodeQueues:
    """The panel's queues on REDIS_URL: "default" and every node's (JSON, never pickle:
    whoever can write to Redis must not run code as root)."""
    config = {"URL": redis_url, "DEFAULT_TIMEOUT": timeout, "SERIALIZER": "rq.serializers.JSONSerializer"}
    return NodeQueues({"default": dict(config)}, config)
