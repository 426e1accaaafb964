"""A worker killed with SIGKILL in the middle of a reinstall or of a rescue start (issue 15, 6.).

The worker process stops itself inside the engine (VSERVER_TEST_FAULT: after the reinstall
swapped the disk images, before config.json is written; after the rescue start stopped the
server) and is killed there. A new worker fails the operation as interrupted and puts the
server where the state table says; asking again finishes the work: the server runs, its files
are gone (reinstall) or intact (rescue), and once deleted nothing of it is left in the kernel.
"""

from __future__ import annotations

import pytest

from tests.panel import faults
from tests.panel.faults import assert_tells_the_truth, kernel_state, server_leaks, wait_until
from vservers.actions import request_operation
from vservers.models import Operation, OperationKind, OperationStatus, State
from vservers.models.operations import FINISHED, INTERRUPTED

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers

CASES = [
    # kind, the engine's fault point, where the server is left, and what the file is after the retry
    (OperationKind.REINSTALL, "reinstall:swapped", State.ERROR, False),
    # Stopped, and then started by the reconciler's autostart (the server is an autostart one,
    # and was not stopped on purpose).
    (OperationKind.RESCUE_ENTER, "rescue:stopped", State.RUNNING, True),
]


def finished(operation: Operation) -> Operation | None:
    operation.refresh_from_db()
    return operation if operation.status in FINISHED else None


def settled(server, state: str) -> bool:
    """SERVER is in STATE with no operation queued or running for it."""
    server.refresh_from_db()
    busy = server.operations.filter(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING]).exists()
    return server.state == state and not busy


@pytest.mark.parametrize(("kind", "fault", "left", "kept"), CASES, ids=[c[0] for c in CASES])
def test_a_worker_killed_inside_the_engine_leaves_a_server_that_one_retry_finishes(
    fault_world, provision, drain, workers, kind, fault, left, kept
):
    engine = fault_world.engine
    server = provision("web")
    name = server.engine_name
    uid_bases = [engine.spec(name).uid_base]
    assert engine.run(name, ["/bin/sh", "-c", "echo mine > /root/mine"]).returncode == 0
    params = {"template": "busybox"} if kind == OperationKind.REINSTALL else {}
    operation = request_operation(server, kind, None, **params)

    first = workers(env={"VSERVER_TEST_FAULT": fault})
    first.wait_paused()
    assert first.kill() == [], "the worker has no helper process that could outlive it"

    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert operation.status == OperationStatus.FAILED and operation.error == INTERRUPTED
    # The new worker fails the operation when it starts and settles the server from the kernel
    # (stopped, for a rescue start); its first reconcile run then queues the autostart. Between
    # the two nothing is queued, so "nothing queued" alone is not yet the end.
    wait_until(lambda: settled(server, left), lambda: f"the server to be {left}:\n{second.log_tail()}")
    assert_tells_the_truth(engine, server)
    if server.state == State.RUNNING:
        assert engine.run(name, ["cat", "/root/mine"]).stdout == "mine\n"

    retry = request_operation(server, kind, None, **params)
    wait_until(lambda: finished(retry), lambda: f"the retry:\n{second.log_tail()}")
    assert retry.status == OperationStatus.SUCCEEDED, retry.error + "\n" + retry.output
    server.refresh_from_db()
    mine = "/mnt/root/mine" if kind == OperationKind.RESCUE_ENTER else "/root/mine"
    assert (engine.run(name, ["cat", mine]).returncode == 0) is kept
    if kind == OperationKind.RESCUE_ENTER:
        assert server.state == State.RESCUE
        leave = request_operation(server, OperationKind.RESCUE_LEAVE, None)
        wait_until(lambda: finished(leave), lambda: f"leaving rescue:\n{second.log_tail()}")
        assert leave.status == OperationStatus.SUCCEEDED, leave.error
        server.refresh_from_db()
        assert engine.run(name, ["cat", "/root/mine"]).stdout == "mine\n"
    assert server.state == State.RUNNING
    assert_tells_the_truth(engine, server)
    second.stop()

    delete = request_operation(server, OperationKind.DELETE, None)
    drain()
    delete.refresh_from_db()
    assert delete.status == OperationStatus.SUCCEEDED, delete.error
    assert kernel_state(engine, server) == "missing"
    assert not server_leaks(uid_bases), server_leaks(uid_bases)
