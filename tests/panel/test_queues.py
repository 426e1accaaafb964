"""vservers.queues.get_queue keeps one queue (and Redis connection) per process and
configuration: a new connection's first enqueue costs several milliseconds more."""

from __future__ import annotations

from vservers.queues import get_queue


def test_the_queue_is_kept_until_its_configuration_changes(settings):
    config = {"URL": "unix:///nonexistent/redis.sock?db=0", "SERIALIZER": "rq.serializers.JSONSerializer"}
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, "default": config}
    first = get_queue("default")
    assert get_queue("default") is first
    assert "JSONSerializer" in repr(first.serializer)
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, "default": {**config, "URL": "unix:///nonexistent/other.sock?db=0"}}
    assert get_queue("default") is not first


def test_a_kept_queue_works_after_redis_restarted(rq_redis):
    queue = get_queue("default")
    queue.enqueue("vservers.jobs.run_operation", 1, job_id="op-before")
    rq_redis.client_kill_filter(_type="normal", skipme=True)  # what a restart does to our connections
    queue = get_queue("default")
    queue.enqueue("vservers.jobs.run_operation", 2, job_id="op-after")
    assert set(queue.get_job_ids()) >= {"op-before", "op-after"}
