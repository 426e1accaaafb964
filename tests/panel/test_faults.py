"""Faults, with nothing lost: a worker killed with SIGKILL in the middle of an operation.

For each operation (create, start, stop, delete, add an account) and each named point in its
middle, a real worker process stops itself there (VSERVERS_TEST_FAULT) and the test kills it
with SIGKILL. Then a new worker starts, and

 - the operation is failed with a clear message (by the new worker's start-up recovery, from
   the rows and the kernel alone), never left "running";
 - the server's row says what the kernel says (re-read from the engine) and is not stuck in
   an in-progress state;
 - at most one retry, by the tenant, reaches what was asked for;
 - nothing of the server is left in the kernel once it is deleted, and the killed worker had
   no helper process to leave behind (its watch is a thread).
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.panel import faults
from tests.panel.faults import assert_tells_the_truth, kernel_state, server_leaks, wait_until
from vservers.actions import approve, request_operation
from vservers.models import GuestAccount, Operation, OperationKind, OperationStatus, State
from vservers.models.operations import FINISHED, INTERRUPTED

pytestmark = pytest.mark.django_db(transaction=True)

# The shared fixtures (tests/panel/faults.py).
file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers

PASSWORD = "Correct-horse-7-battery"

# What each operation is for, and the retry a tenant would ask for to get there.
TARGET = {
    OperationKind.PROVISION: State.RUNNING,
    OperationKind.START: State.RUNNING,
    OperationKind.STOP: State.STOPPED,
    OperationKind.DELETE: State.DELETED,
    OperationKind.ACCOUNT_ADD: State.RUNNING,
}
RETRY = {
    OperationKind.PROVISION: OperationKind.START,
    OperationKind.START: OperationKind.START,
    OperationKind.STOP: OperationKind.STOP,
    OperationKind.DELETE: OperationKind.DELETE,
    OperationKind.ACCOUNT_ADD: OperationKind.ACCOUNT_ADD,
}
# The state an operation leaves its server in while it runs.
DURING = {
    OperationKind.PROVISION: State.PROVISIONING,
    OperationKind.START: State.STARTING,
    OperationKind.STOP: State.STOPPING,
    OperationKind.DELETE: State.DELETING,
    OperationKind.ACCOUNT_ADD: State.RUNNING,
}

CASES = [
    (OperationKind.PROVISION, "before-engine"),
    (OperationKind.PROVISION, "created"),
    (OperationKind.PROVISION, "after-engine"),
    (OperationKind.START, "before-engine"),
    (OperationKind.START, "after-engine"),
    (OperationKind.STOP, "before-engine"),
    (OperationKind.STOP, "after-engine"),
    (OperationKind.DELETE, "before-engine"),
    (OperationKind.DELETE, "after-engine"),
    (OperationKind.ACCOUNT_ADD, "before-engine"),
    (OperationKind.ACCOUNT_ADD, "after-engine"),
]


def finished(operation: Operation) -> Operation | None:
    operation.refresh_from_db()
    return operation if operation.status in FINISHED else None


def ask(server, kind, **params) -> Operation:
    if kind == OperationKind.ACCOUNT_ADD:
        params = {"account": "carol", "password": PASSWORD, **params}
    return request_operation(server, kind, None, **params)


def converged(kind, server, engine) -> bool:
    server.refresh_from_db()
    if server.state != TARGET[kind]:
        return False
    if kind == OperationKind.ACCOUNT_ADD:
        return "carol" in [a.name for a in engine.accounts(server.engine_name).list()]
    return True


@pytest.mark.parametrize(("kind", "phase"), CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_a_worker_killed_in_the_middle_leaves_nothing_running_and_one_retry_converges(
    fault_world, make_server, provision, drain, workers, kind, phase
):
    world, engine = fault_world, fault_world.engine
    if kind == OperationKind.PROVISION:
        server = make_server("web")
        operation = approve(server, world.operator)
    else:
        server = provision("web")
        if kind == OperationKind.START:
            request_operation(server, OperationKind.STOP, None)
            drain()
            server.refresh_from_db()
            assert server.state == State.STOPPED
        operation = ask(server, kind)
    uid_bases = []

    # The worker takes the job and stops itself at the named point; we kill it there.
    first = workers(fault=f"{kind}:{phase}")
    first.wait_paused()
    operation.refresh_from_db()
    server.refresh_from_db()
    assert operation.status == OperationStatus.RUNNING
    assert server.state == DURING[kind]
    if server.engine_name in engine.names():
        uid_bases.append(engine.spec(server.engine_name).uid_base)
    assert first.kill() == [], "the worker has no helper process that could outlive it"
    operation.refresh_from_db()
    assert operation.status == OperationStatus.RUNNING  # nobody knows yet

    # A new worker settles it before it takes any job.
    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert operation.status == OperationStatus.FAILED
    assert operation.error == INTERRUPTED
    assert "password" not in operation.params
    assert_tells_the_truth(engine, server)
    if kind == OperationKind.ACCOUNT_ADD:  # the guest's accounts as the guest has them
        names = sorted(a.name for a in engine.accounts(server.engine_name).list())
        assert sorted(GuestAccount.objects.filter(server=server).values_list("name", flat=True)) == names

    # At most one retry gets there.
    if not converged(kind, server, engine):
        retry = ask(server, RETRY[kind])
        wait_until(lambda: finished(retry), lambda: f"the retry:\n{second.log_tail()}")
        assert retry.status == OperationStatus.SUCCEEDED, retry.error + "\n" + retry.output
    assert converged(kind, server, engine), (server.state, server.state_reason)
    assert_tells_the_truth(engine, server)
    if server.engine_name in engine.names():
        uid_bases.append(engine.spec(server.engine_name).uid_base)
    if kind == OperationKind.ACCOUNT_ADD:
        accounts = [a.name for a in engine.accounts(server.engine_name).list()]
        assert accounts.count("carol") == 1
        assert GuestAccount.objects.filter(server=server, name="carol").count() == 1
    assert not Operation.objects.filter(status=OperationStatus.RUNNING).exists()
    second.stop()

    # Nothing of it stays in the kernel once it is gone.
    if server.state != State.DELETED:
        delete = request_operation(server, OperationKind.DELETE, None)
        drain()
        server.refresh_from_db()
        delete.refresh_from_db()
        assert server.state == State.DELETED, (server.state, delete.status, delete.error, delete.output)
    assert kernel_state(engine, server) == "missing"
    assert not server_leaks(uid_bases), server_leaks(uid_bases)


def test_a_stop_while_the_worker_starts_ends_it(fault_world, workers):
    """SIGTERM between the worker's start and RQ's own signal handlers (a service stopped right
    after it started): before, its handler only set a flag that RQ's loop never reads, and
    the worker ran on until SIGKILL."""
    worker = workers(fault="worker:starting")
    worker.wait_paused()  # the PanelWorker is made, RQ's work() not begun
    os.kill(worker.pid, signal.SIGTERM)
    os.kill(worker.pid, signal.SIGCONT)
    try:
        code = worker.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker ran on after SIGTERM; its log:\n{worker.log_tail()}") from None
    assert code == 0, worker.log_tail()
