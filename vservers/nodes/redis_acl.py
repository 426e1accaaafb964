"""A node's Redis credential: a Redis 7 ACL user of its own that reaches its own queue only.

Made or renewed when the node joins (vservers.nodes.join.accept), over the panel's own
connection (REDIS_URL: the panel's credential, which may run ACL SETUSER). The user

 - reaches the keys RQ keeps for the node's queue, jobs and workers, and no other node's:
   its queue and registries ("rq:queue:node-a", "rq:wip:node-a", ...) and every key named
   after a job or worker of the node, whose ids begin with "node-a_" (vservers.queues); the
   global sets RQ keeps every worker and queue in ("rq:workers", "rq:queues") and its lock
   "rq:clean_groups"; read only "rq:suspended", "rq:groups", "rq:rl-keys". Found by running
   a real worker under the user (tests/nodes/test_redis_acl.py shows it runs a job);
 - may run the commands of the data types RQ uses, transactions, pub/sub and its connection's
   own commands (HELLO, CLIENT SETNAME), and INFO (RQ reads the server's version, the worker's
   watch its run id); none of @admin or @dangerous (KEYS, FLUSHALL, CONFIG, ACL, DEBUG,
   SHUTDOWN, MONITOR, CLIENT KILL, ...), no scripts;
 - subscribes to its workers' command channels ("rq:pubsub:node-a_*") and its own wake-up
   channel ("vservers:wake:node-a"), and may PUBLISH, and only PUBLISH, to any node's wake-up
   channel (a selector): how one node tells another that the database has work for it
   (vservers.nodes.wake). A wake-up carries nothing to trust.

So a stolen node credential can read, delete or flood only its own node's jobs; for the rest
it can wake other nodes up (each then looks at the database, as every heartbeat does) and
remove names from "rq:workers" / "rq:queues" (what RQ's listings show, not jobs).

The ACL must outlive a Redis restart: the project's private Redis is started with an aclfile
(scripts/run-panel) and grant() has Redis write it (ACL SAVE). An operator's own Redis needs
an `aclfile` in redis.conf for the same; without one the users live until Redis restarts, and
grant() says so in the log.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from ..models import Node
from .queues import is_node_queue, key_prefix

log = logging.getLogger(__name__)

USER_PREFIX = "vsnode-"
WAKE_PREFIX = "vservers:wake:"
# The commands a node's worker and its jobs use, by category, then what is taken back.
CATEGORIES = ("+@read", "+@write", "+@keyspace", "+@string", "+@list", "+@hash", "+@set", "+@sortedset",
              "+@stream", "+@transaction", "+@pubsub", "+@connection", "-@admin", "-@dangerous", "-@scripting",
              "+info")


def user_name(node: Node) -> str:
    return USER_PREFIX + node.name


def wake_channel(queue_name: str) -> str:
    """The channel a node's worker listens on for wake-ups (vservers.nodes.wake)."""
    return WAKE_PREFIX + queue_name


def rules(queue_name: str) -> list[str]:
    """The ACL rules (after `reset`) of the user of the node whose queue is QUEUE_NAME."""
    if not is_node_queue(queue_name) or "_" in queue_name:
        raise ValueError(f"{queue_name!r} is not a node's queue whose keys a pattern can single out")
    q, p = queue_name, key_prefix(queue_name)
    per_queue = [f"~rq:{kind}:{q}" for kind in ("queue", "wip", "finished", "failed", "deferred", "scheduled",
                                                  "canceled", "ready", "workers", "clean_registries")]
    per_queue.append(f"~rq:queue:{q}:intermediate")
    # Keys named after a job or a worker of the node ("rq:job::<id>:dependencies" is RQ's).
    per_id = [f"~rq:{kind}:{p}*" for kind in ("job", "job:", "results", "executions", "execution", "worker")]
    shared = ["~rq:workers", "~rq:queues", "~rq:clean_groups", "%R~rq:suspended", "%R~rq:groups", "%R~rq:rl-keys"]
    channels = [f"&rq:pubsub:{p}*", f"&{wake_channel(q)}"]
    return [*CATEGORIES, *per_queue, *per_id, *shared, *channels, f"(+publish &{WAKE_PREFIX}*)"]


def admin_connection():
    """The panel's own Redis connection (REDIS_URL)."""
    import django_rq

    return django_rq.get_connection("default")


def grant(node: Node, connection=None) -> str:
    """NODE's Redis user, made or renewed with a new password (the old one stops working and
    the user's open connections are closed); the REDIS_URL the node is to use. The one-host
    install's node (queue "default") uses the panel's own URL, as before."""
    base = settings.PANEL_NODE_REDIS_URL or settings.REDIS_URL
    if not is_node_queue(node.queue_name):
        return base
    connection = connection or admin_connection()
    user, password = user_name(node), secrets.token_urlsafe(32)
    connection.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules(node.queue_name))
    # A renewed password must lock out whoever still holds a connection with the old one.
    connection.execute_command("CLIENT", "KILL", "USER", user)
    save(connection)
    return with_credentials(base, user, password)


def save(connection) -> bool:
    """ACL SAVE: the users into Redis's aclfile; False (and a warning) when it has none."""
    import redis

    try:
        connection.execute_command("ACL", "SAVE")
    except redis.ResponseError as exc:
        log.warning("Redis keeps the nodes' users only until it restarts: it has no aclfile (%s)", exc)
        return False
    return True


def with_credentials(url: str, user: str, password: str) -> str:
    """URL (redis://, rediss:// or unix://) with USER and PASSWORD instead of its own."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))
