"""A node's Redis credential (vservers.nodes.redis_acl) reaches its own queue only: a real RQ
worker under node a's ACL user runs a job from node a's queue, and the same credential is
refused (NOPERM) node b's queue, node b's job keys and worker channel, KEYS, FLUSHALL, CONFIG
and ACL, which the panel's own credential may all use (the positive control). It may PUBLISH
to node b's wake-up channel, not SUBSCRIBE to it. Joining again renews the password. A
wake-up has a node's heartbeat queue what the database asks of it on its own queue."""

from __future__ import annotations

import pytest
import redis
from django.utils import timezone
from redis.exceptions import AuthenticationError, NoPermissionError

from tests.panel import faults
from tests.panel.faults import wait_until
from vservers.migration.jobs import CLEANUP_FUNCTION
from vservers.models import Node
from vservers.nodes import redis_acl
from vservers.queues import get_queue, new_queue


@pytest.fixture
def nodes(db, rq_redis):
    a = Node.objects.create(name="a", queue_name="node-a")
    b = Node.objects.create(name="b", queue_name="node-b")
    yield a, b
    rq_redis.execute_command("ACL", "DELUSER", redis_acl.user_name(a), redis_acl.user_name(b))


def test_a_node_credential_reaches_its_own_queue_only(nodes, rq_redis):
    import signal

    from vservers.worker import PanelWorker

    node_a, node_b = nodes
    url = redis_acl.grant(node_a, rq_redis)  # as join does, over the panel's connection
    assert url.startswith("unix://vsnode-a:") and url.endswith(".sock?db=0")
    stolen = redis.Redis.from_url(url)
    assert stolen.ping() and stolen.client_info()["user"] == "vsnode-a"

    # The panel queues a job for node b; node a's worker queues one on its own queue.
    get_queue("node-b").enqueue(CLEANUP_FUNCTION, 0, node_b.pk, job_id="cleanup-b", failure_ttl=600)
    mine = new_queue("node-a", stolen)
    mine.enqueue(CLEANUP_FUNCTION, 0, node_a.pk, job_id="cleanup-a", failure_ttl=600)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = PanelWorker([mine], connection=stolen)
        worker.work(burst=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert worker.name.startswith("node-a_panel:")
    job = mine.fetch_job("cleanup-a")
    assert job.id == "node-a_cleanup-a"
    assert job.get_status() == "finished" and job.return_value() == "missing"
    assert get_queue("node-b").get_job_ids() == ["node-b_cleanup-b"]

    b_job, b_queue, b_worker = "rq:job:node-b_cleanup-b", "rq:queue:node-b", "rq:pubsub:node-b_panel:x"
    attacks = {
        "read b's queue": lambda c: c.lrange(b_queue, 0, -1),
        "read b's job": lambda c: c.hgetall(b_job),
        "fetch b's job with RQ": lambda c: new_queue("node-b", c).fetch_job("cleanup-b"),
        "push onto b's queue": lambda c: c.rpush(b_queue, "node-b_cleanup-b"),
        "queue a job on b's with RQ": lambda c: new_queue("node-b", c).enqueue(CLEANUP_FUNCTION, 0, 0,
                                                                              job_id="evil"),
        "rewrite b's job": lambda c: c.hset(b_job, "status", "canceled"),
        "stop b's worker": lambda c: c.publish(b_worker, '{"command": "shutdown"}'),
        "list every key": lambda c: c.keys("*"),
        "read the configuration": lambda c: c.config_get("*"),
        "list the users": lambda c: c.acl_list(),
        "delete b's job": lambda c: c.delete(b_job),
        "delete b's queue": lambda c: c.delete(b_queue),
        "flush everything": lambda c: c.flushall(),
    }
    for what, attack in attacks.items():
        with pytest.raises(NoPermissionError):
            attack(stolen)
            pytest.fail(f"node a's credential could {what}")
    # Nothing of b's changed; the panel's credential does every one of them (the control).
    assert get_queue("node-b").get_job_ids() == ["node-b_cleanup-b"]
    for attack in attacks.values():
        attack(rq_redis)
    assert rq_redis.dbsize() == 0  # the last one

    # Wake-ups: any node's channel to PUBLISH to, only its own to listen on.
    assert stolen.publish(redis_acl.wake_channel("node-b"), "") == 0
    listener = stolen.pubsub()
    listener.subscribe(redis_acl.wake_channel("node-a"))
    assert listener.get_message(timeout=1)["type"] == "subscribe"
    with pytest.raises(NoPermissionError):
        listener.subscribe(redis_acl.wake_channel("node-b"))
        listener.get_message(timeout=1)
    listener.close()
    admin = rq_redis.pubsub()
    admin.subscribe(redis_acl.wake_channel("node-b"))
    assert admin.get_message(timeout=1)["type"] == "subscribe"
    admin.close()

    # Joining again renews the password: the old one is refused, the new one works.
    renewed = redis.Redis.from_url(redis_acl.grant(node_a, rq_redis))
    assert renewed.client_info()["user"] == "vsnode-a"
    with pytest.raises(AuthenticationError):
        redis.Redis.from_url(url).ping()
    renewed.close()
    stolen.close()


file_database = faults.file_database
fault_world = faults.fault_world


def test_a_wake_up_has_the_node_queue_on_its_own_queue_what_another_node_asked_of_it(fault_world, settings,
                                                                                   rq_redis):
    """The hand-over without writing another node's queue: an operation recorded for node a's
    server with no job (as another node's worker leaves it), a wake-up on a's channel, and a's
    heartbeat thread, under a's own Redis user, queues its job on a's queue. Its next beat is
    ten minutes away: only the wake-up can do it in time."""
    from vservers.models import Operation, OperationKind, State, VirtualServer
    from vservers.nodes.heartbeat import Heartbeat
    from vservers.nodes.queues import node_queues
    from vservers.queues import wake

    world = fault_world
    node = Node.objects.create(name="a", queue_name="node-a", last_seen=timezone.now())
    server = VirtualServer.objects.create(tenant=world.acme, name="web", hostname="web.acme.example",
                                          plan=world.small, template=world.busybox, node=node, state=State.STOPPED)
    settings.RQ_QUEUES = node_queues(redis_acl.grant(node, rq_redis))  # this process as node a
    beat = Heartbeat(["node-a"], period=600, listen=True)
    beat.start()
    try:
        wait_until(lambda: beat.beats and beat.listener is not None, "the first beat and the subscription")
        operation = Operation.objects.create(server=server, kind=OperationKind.START)
        assert wake("node-a")
        wait_until(lambda: Operation.objects.get(pk=operation.pk).job_id, "the operation's job")
        assert get_queue("node-a").get_job_ids() == [f"node-a_op-{operation.uuid}"]
        assert (beat.wakes, beat.sent) == (1, 1)
    finally:
        beat.stop()
        rq_redis.execute_command("ACL", "DELUSER", redis_acl.user_name(node))
    assert not beat.is_alive()
