"""A worker killed with SIGKILL in the middle of a snapshot or a restore (issue 15, point 6):
a real `manage.py nodeworker` stops itself at the engine's named point
(VSERVER_TEST_FAULT, vservers.engine.faults) and the test kills it there. Then a new worker
settles the operation, and the next operation repairs what was half done: no frozen cgroup,
the server answers, its files are intact or restored, and nothing leaks."""

from __future__ import annotations

import pytest

from tests.leaks import PANEL_ENV, frozen_cgroups
from tests.panel import faults
from tests.panel.faults import assert_tells_the_truth, server_leaks, wait_until
from tests.panel_world import wait_for_http
from vservers import snapshot_actions
from vservers.actions import request_operation
from vservers.models import Operation, OperationKind, OperationStatus, Snapshot, State
from vservers.models.operations import FINISHED, INTERRUPTED

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers


def finished(operation: Operation) -> Operation | None:
    operation.refresh_from_db()
    return operation if operation.status in FINISHED else None


def frozen_names() -> list[str]:
    return [group.name for group in frozen_cgroups(PANEL_ENV)]


def test_a_worker_killed_while_the_server_is_frozen(fault_world, provision, workers):
    world, engine = fault_world, fault_world.engine
    server = provision("web")
    name = server.engine_name
    assert engine.run(name, ["sh", "-c", "echo kept > /root/mark"]).returncode == 0
    operation = snapshot_actions.take(server, world.alice, name="cut")

    first = workers(env={"VSERVER_TEST_FAULT": "snapshot:frozen"})
    first.wait_paused()
    assert frozen_names() == [name]  # the positive control: this is the frozen point
    first.kill()  # its freeze helper thaws the filesystem when the worker's end of its pipe closes

    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert operation.status == OperationStatus.FAILED and operation.error == INTERRUPTED
    server.refresh_from_db()
    assert server.state == State.RUNNING
    assert not Snapshot.objects.filter(server=server).exists()

    # The next operation (the same snapshot asked again) thaws the server and takes it.
    again = snapshot_actions.take(server, world.alice, name="cut")
    wait_until(lambda: finished(again), lambda: f"the second snapshot:\n{second.log_tail()}")
    assert again.status == OperationStatus.SUCCEEDED, again.error + "\n" + again.output
    assert frozen_names() == []
    wait_for_http(server.ip_list()[0])
    assert engine.run(name, ["cat", "/root/mark"]).stdout == "kept\n"
    assert [s.name for s in engine.snapshot_list(name)] == ["cut"]
    assert list(Snapshot.objects.filter(server=server).values_list("name", flat=True)) == ["cut"]
    assert_tells_the_truth(engine, server)
    uid_base = engine.spec(name).uid_base
    second.stop()
    _delete(server, world, workers)
    assert not server_leaks([uid_base])


def test_a_worker_killed_after_the_swap_and_the_next_start_finishes_the_restore(fault_world, provision, workers,
                                                                                 drain):
    world, engine = fault_world, fault_world.engine
    # Not autostart: the reconciler would queue that start itself (and win the race to it).
    server = provision("web", autostart=False)
    name = server.engine_name
    assert engine.run(name, ["sh", "-c", "echo at-snapshot > /root/mark"]).returncode == 0
    snapshot_actions.take(server, world.alice, name="base")
    drain()
    assert engine.run(name, ["sh", "-c", "echo later > /root/mark"]).returncode == 0
    operation = snapshot_actions.restore(server, Snapshot.objects.get(server=server, name="base"), world.alice)

    first = workers(env={"VSERVER_TEST_FAULT": "snapshot-restore:swapped"})
    first.wait_paused()
    server.refresh_from_db()
    assert server.state == State.RESTORING
    first.kill()

    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert operation.status == OperationStatus.FAILED
    server.refresh_from_db()
    assert server.state == State.STOPPED  # what the kernel says: the restore had stopped it
    assert_tells_the_truth(engine, server)

    start = request_operation(server, OperationKind.START, world.alice)
    wait_until(lambda: finished(start), lambda: f"the start:\n{second.log_tail()}")
    assert start.status == OperationStatus.SUCCEEDED, start.error + "\n" + start.output
    wait_for_http(server.ip_list()[0])
    assert engine.run(name, ["cat", "/root/mark"]).stdout == "at-snapshot\n"
    assert frozen_names() == []
    uid_base = engine.spec(name).uid_base
    second.stop()
    _delete(server, world, workers)
    assert not server_leaks([uid_base])


def _delete(server, world, workers) -> None:
    worker = workers()
    delete = request_operation(server, OperationKind.DELETE, world.operator)
    wait_until(lambda: finished(delete), lambda: f"the delete:\n{worker.log_tail()}")
    assert delete.status == OperationStatus.SUCCEEDED, delete.error
    worker.stop()
