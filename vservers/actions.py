"""What users ask the panel to do, as small functions: each records an Operation row and
queues it on the server's node once the transaction commits. The web process never touches
the kernel; the node's worker runs the operation (vservers.jobs.run_operation)."""

from __future__ import annotations

import logging

from django.db import transaction

from accounts.models import AuditEntry

from .models import (
    IN_PROGRESS,
    IPPool,
    Node,
    Operation,
    OperationKind,
    OperationStatus,
    PoolExhausted,
    State,
    VirtualServer,
)
from .models.operations import QUEUE_DELAYED

log = logging.getLogger(__name__)

JOB_FUNCTION = "vservers.jobs.run_operation"


class ActionRefused(Exception):
    """The action does not fit the server's current state; the message is for the user."""


# Which states each kind may be asked in (the worker re-checks when it runs).
ALLOWED_STATES = {
    OperationKind.START: {State.STOPPED, State.ERROR},
    OperationKind.STOP: {State.RUNNING, State.ERROR},
    OperationKind.RESTART: {State.RUNNING, State.ERROR},
    OperationKind.DELETE: {State.STOPPED, State.RUNNING, State.ERROR, State.REQUESTED},
    OperationKind.CHANGE_PLAN: {State.STOPPED, State.RUNNING},
}
GUEST_KINDS = {
    OperationKind.ACCOUNT_ADD,
    OperationKind.ACCOUNT_DELETE,
    OperationKind.ACCOUNT_PASSWORD,
    OperationKind.ACCOUNT_KEY,
    OperationKind.SERVICE_START,
    OperationKind.SERVICE_STOP,
    OperationKind.SERVICE_RESTART,
    OperationKind.REFRESH,
}


def enqueue(operation: Operation) -> None:
    """Queue OPERATION on its server's node after the current transaction commits. The job
    carries only the operation's id (JSON), never an object.

    The row is the outbox: it is saved first, and it stays queued (with the QUEUE_DELAYED
    note) when Redis cannot be reached; the worker hands it over once Redis is back. Queueing
    the same operation twice is harmless: only one worker can claim the row."""
    queue_name = operation.server.node.queue_name if operation.server.node else "default"
    op_id = operation.pk

    def push() -> None:
        from .queues import get_queue

        try:
            job = get_queue(queue_name).enqueue(JOB_FUNCTION, op_id, job_id=f"op-{operation.uuid}")
        except Exception as exc:  # noqa: BLE001 - Redis down: the row stays queued, the worker re-sends it
            log.warning("operation %s stays in the outbox: the job queue is unreachable (%s)", op_id, exc)
            Operation.objects.filter(pk=op_id, status=OperationStatus.QUEUED).update(error=QUEUE_DELAYED)
            return
        Operation.objects.filter(pk=op_id).update(job_id=job.id)

    transaction.on_commit(push)


def request_operation(server: VirtualServer, kind: str, user, request=None, **params) -> Operation:
    """Record and queue an operation on SERVER, refusing kinds that do not fit its state."""
    allowed = ALLOWED_STATES.get(kind)
    if kind in GUEST_KINDS:
        allowed = {State.RUNNING}
    if allowed is not None and server.state not in allowed:
        what, state = OperationKind(kind).label.lower(), server.get_state_display().lower()
        raise ActionRefused(f"cannot {what} while the server is {state}")
    with transaction.atomic():
        operation = Operation.objects.create(server=server, kind=kind, params=params, requested_by=user)
        enqueue(operation)
        if request is not None:
            safe = {k: v for k, v in params.items() if k != "password"}
            AuditEntry.record(request, f"server.{kind}", server, **safe)
    return operation


def approve(server: VirtualServer, operator, node: Node | None = None, request=None) -> Operation:
    """Approve a requested server: pick a node, give it an address, queue provisioning.

    1. compare-and-swap requested -> approved (a second approval of the same server loses);
    2. allocate the lowest free address of a pool on that node (pool lock + unique constraint);
    3. create the provision operation; it is queued when the transaction commits.
    """
    node = node or Node.objects.filter(is_active=True).order_by("pk").first()
    if node is None:
        raise ActionRefused("there is no active node to run the server on")
    try:
        with transaction.atomic():
            if not server.approve(node):
                raise ActionRefused("only servers awaiting approval can be approved")
            _allocate_on(node, server)
            operation = Operation.objects.create(server=server, kind=OperationKind.PROVISION, requested_by=operator)
            enqueue(operation)
            if request is not None:
                AuditEntry.record(request, "server.approve", server, node=node.name)
    except ActionRefused:
        server.refresh_from_db(fields=["state", "state_reason", "node"])  # the rollback undid our change
        raise
    return operation


def _allocate_on(node: Node, server: VirtualServer) -> None:
    """An address from the first pool of NODE that has one free."""
    pools = list(IPPool.objects.filter(node=node).order_by("pk"))
    if not pools:
        raise ActionRefused(f"node {node} has no address pool")
    for pool in pools:
        try:
            pool.allocate(server)
            return
        except PoolExhausted:
            continue
    where = f"pool {pools[0].name}" if len(pools) == 1 else f"the pools of node {node}"
    raise ActionRefused(f"no free address left in {where}")


def reject(server: VirtualServer, reason: str, request=None) -> None:
    if not server.reject(reason or "rejected by an operator"):
        raise ActionRefused("only servers awaiting approval can be rejected")
    if request is not None:
        AuditEntry.record(request, "server.reject", server, reason=reason)


def pending_operation(server: VirtualServer) -> Operation | None:
    return server.operations.filter(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING]).first()


def busy(server: VirtualServer) -> bool:
    return server.state in IN_PROGRESS
