"""The node's periodic job makes the database agree with the kernel."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from django.core.management import call_command

from tests.engine.helpers import kill_9, start_cli, wait_stopped
from tests.leaks import PANEL_ENV, frozen_cgroups
from vservers.actions import request_operation
from vservers.jobs import runner_id
from vservers.models import Node, Operation, OperationKind, OperationStatus, State
from vservers.queues import get_queue
from vservers.reconcile import WORKER_NAME_PREFIX, queue_run, reconcile_node

pytestmark = pytest.mark.django_db(transaction=True)


def kill_init(engine, server) -> None:
    """What a crash inside the guest looks like from outside: its init is gone."""
    pid = engine.status(server.engine_name).init_pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while engine.status(server.engine_name, with_addresses=False).state != "stopped":
        assert time.monotonic() < deadline, f"init {pid} of {server.engine_name} did not die"
        time.sleep(0.02)


def starts_of(server):
    return Operation.objects.filter(server=server, kind=OperationKind.START)


def test_a_dead_init_shows_stopped_and_only_autostart_servers_come_back(world, provision, drain, http):
    auto, manual = provision("auto", "manual")
    manual.autostart = False
    manual.save(update_fields=["autostart"])
    kill_init(world.engine, auto)
    kill_init(world.engine, manual)

    reconcile_node(world.node.pk)

    auto.refresh_from_db()
    manual.refresh_from_db()
    assert (auto.state, manual.state) == (State.STOPPED, State.STOPPED)
    assert manual.state_reason == "the server's init exited"
    # Nothing runs in it any more, and its pages say so.
    assert (manual.memory_bytes, manual.pids) == (0, 0)
    assert set(manual.services.values_list("state", "pid")) == {("stopped", None)}
    assert starts_of(auto).get().status == OperationStatus.QUEUED
    assert not starts_of(manual).exists()

    drain()

    auto.refresh_from_db()
    assert starts_of(auto).get().status == OperationStatus.SUCCEEDED
    assert auto.state == State.RUNNING
    http.wait(auto.ip_list()[0])
    manual.refresh_from_db()
    assert manual.state == State.STOPPED


def test_it_marks_the_node_seen_and_the_sampler_stores_the_latest_usage(world, provision):
    from vservers.usage.sampler import sample

    server = provision("web")

    reconcile_node(world.node.pk)
    sample(world.node)

    server.refresh_from_db()
    assert server.sampled_at is not None
    assert server.memory_bytes > 0
    assert server.pids >= 2  # init and runsvdir at least
    assert server.disk_used_bytes > 0
    assert Node.objects.get(pk=world.node.pk).last_seen is not None


def test_a_server_a_killed_snapshot_left_frozen_is_thawed(world, provision, http):
    """Frozen, a server runs nothing yet looks running; no operation may come for it soon."""
    server = provision("frozen")
    snapshot = start_cli("snapshot", "create", server.engine_name, "cut", fault="snapshot:frozen", env=PANEL_ENV)
    wait_stopped(snapshot)
    kill_9(snapshot)
    assert [group.name for group in frozen_cgroups(PANEL_ENV)] == [server.engine_name]  # the control

    assert "1 recovered" in reconcile_node(world.node.pk)

    assert frozen_cgroups(PANEL_ENV) == []
    server.refresh_from_db()
    assert server.state == State.RUNNING
    http.wait(server.ip_list()[0])


def test_a_server_stopped_on_purpose_stays_stopped(world, provision, drain):
    server = provision("web")
    request_operation(server, OperationKind.STOP, None)
    drain()

    reconcile_node(world.node.pk)

    server.refresh_from_db()
    assert server.state == State.STOPPED
    assert not starts_of(server).exists()


def test_a_server_the_node_does_not_have_shows_an_error(world, make_server):
    server = make_server("ghost", state=State.RUNNING, node=world.node)
    servers_dir = world.engine.config.servers_dir

    # A worker pointed at the wrong VSERVER_ROOT sees no servers at all: it declares none lost.
    servers_dir.rmdir()
    try:
        reconcile_node(world.node.pk)
    finally:
        servers_dir.mkdir()
    server.refresh_from_db()
    assert server.state == State.RUNNING

    reconcile_node(world.node.pk)

    server.refresh_from_db()
    assert server.state == State.ERROR
    assert server.state_reason == "the server does not exist on node local"


def test_it_resends_operations_whose_job_never_reached_redis_or_ended_unrun(world, make_server, drain):
    server = make_server("web", state=State.STOPPED, node=world.node)
    other = make_server("other", state=State.STOPPED, node=world.node)
    failed_job = get_queue("default").enqueue("os.getcwd")  # refused by the worker: fails
    drain()
    delayed = Operation.objects.create(
        server=server, kind=OperationKind.START, error="queueing delayed: Error connecting to unix socket"
    )
    unrun = Operation.objects.create(server=other, kind=OperationKind.START, job_id=failed_job.id)

    reconcile_node(world.node.pk)

    queued = get_queue("default").get_job_ids()
    for operation in (delayed, unrun):
        operation.refresh_from_db()
        assert operation.status == OperationStatus.QUEUED
        assert operation.error == ""
        assert operation.job_id == f"op-{operation.uuid}"
        assert operation.job_id in queued
    server.refresh_from_db()
    assert server.state == State.STOPPED  # an operation is queued: its worker decides


def test_an_operation_left_running_by_a_dead_worker_is_failed(world, make_server):
    server = make_server("web", state=State.STARTING, node=world.node)
    orphan = Operation.objects.create(
        server=server, kind=OperationKind.START, status=OperationStatus.RUNNING, job_id="op-gone"
    )

    reconcile_node(world.node.pk)

    orphan.refresh_from_db()
    assert orphan.status == OperationStatus.FAILED
    assert "worker stopped" in orphan.error
    server.refresh_from_db()
    assert server.state == State.ERROR  # the node never had it


def test_a_node_has_one_reconcile_job_under_a_fixed_id_whoever_asks(world, drain):
    queue = get_queue("default")
    job_id = f"reconcile-{world.node.pk}"

    assert queue_run(queue, world.node.pk) == "queued"
    # Asked again while it waits (by a wake-up, another worker, the command): nothing more.
    assert queue_run(queue, world.node.pk) == "waiting"
    out = io.StringIO()
    call_command("reconcile", "--schedule", stdout=out)
    assert out.getvalue() == f"local: {job_id} waiting\n"
    assert queue.get_job_ids() == [job_id]
    job = queue.fetch_job(job_id)
    assert (job.func_name, job.args) == ("vservers.reconcile.reconcile_node", [world.node.pk])

    drain()

    assert Node.objects.get(pk=world.node.pk).last_seen is not None
    # The periodic ask skips a run that ended just now (another worker process's); a wake-up
    # (a guest died, Redis is back) does not.
    assert queue_run(queue, world.node.pk, unless_ended_within=15) == "recent"
    assert queue.get_job_ids() == []
    assert queue_run(queue, world.node.pk) == "queued"
    assert queue.get_job_ids() == [job_id]


def test_a_running_reconcile_counts_only_while_its_worker_lives(world, rq_redis):
    from rq.job import JobStatus

    queue = get_queue("default")
    assert queue_run(queue, world.node.pk) == "queued"
    job = queue.fetch_job(f"reconcile-{world.node.pk}")
    queue.remove(job)  # taken by a worker...
    job.set_status(JobStatus.STARTED)

    job.worker_name = WORKER_NAME_PREFIX + runner_id()  # ... that lives (this process)
    job.save()
    assert queue_run(queue, world.node.pk) == "running"

    dead = runner_id().split(":")
    dead[-1] = str(int(dead[-1]) + 1)  # this pid, but started at another time: gone
    job.worker_name = WORKER_NAME_PREFIX + ":".join(dead)
    job.save()
    assert queue_run(queue, world.node.pk) == "queued"
    assert queue.get_job_ids() == [job.id]
