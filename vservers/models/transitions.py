"""The one table of a server's life: for each kind of operation, the states it may be asked
in, the states the worker may start it from, the state while it runs, the state it ends in,
and what a failure or an interrupted run leaves behind.

Everything that decides by state reads this table: the actions (may this be asked now?), the
worker (may I start it, where does it end?), the reconciler (a server found in an in-progress
state with no operation running) and the pages (which buttons to show). A new capability
(snapshot, backup, reinstall, rescue, migrate) is a new row here and a new handler in jobs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .operations import OperationKind
from .servers import TERMINAL, State


class OnFailure(enum.Enum):
    ERROR = "error"  # the server goes to error; retry or delete starts from there
    SETTLE = "settle"  # the server's state is read again from the kernel
    KEEP = "keep"  # the server stays as it was (operations inside the guest)


class Retry(enum.Enum):
    """Who may retry a failed operation of this kind (actions.retry_operation): a retry asks
    for the same kind with the same parameters again, so it is offered to whoever may ask for
    that directly, and to nobody where what the operation needed is gone once it ended."""

    TENANT = "tenant"  # the server's tenant admins and operators
    OPERATOR = "operator"  # operators only
    NEVER = "never"  # nobody: its password is wiped from the row when it ends


class OnInterrupt(enum.Enum):
    """What the reconciler does with a server left in this operation's in-progress state
    when no operation of it is queued or running any more (its worker died)."""

    FOLLOW_KERNEL = "follow kernel"  # running or stopped, as the kernel says
    UNLESS_RUNNING_ERROR = "error unless running"  # half-made: error, unless it runs already
    FINISH_DELETE = "finish delete"  # gone from the node: finish the delete; still there: error


@dataclass(frozen=True)
class Transition:
    kind: str
    asked_in: frozenset[str]  # where users (and the reconciler's autostart) may ask for it
    runs_from: frozenset[str]  # where the worker may start it: asked_in, its own busy state (a
    # second run after a crash) and states it repairs
    busy: str | None  # the state while it runs; None: the server's state does not move
    target: str | None  # the state it ends in; None: unchanged
    on_failure: OnFailure
    on_interrupt: OnInterrupt | None = None
    interrupted_reason: str = ""
    retry: Retry = Retry.OPERATOR


def _states(*states: str) -> frozenset[str]:
    return frozenset(states)


LIVE = frozenset(s for s in State if s not in TERMINAL)
GUEST_KINDS = frozenset({
    OperationKind.ACCOUNT_ADD,
    OperationKind.ACCOUNT_DELETE,
    OperationKind.ACCOUNT_PASSWORD,
    OperationKind.ACCOUNT_KEY,
    OperationKind.SERVICE_START,
    OperationKind.SERVICE_STOP,
    OperationKind.SERVICE_RESTART,
    OperationKind.REFRESH,
})

_PROVISION_INTERRUPTED = "provisioning was interrupted; start or delete the server"

# Who retries what (Retry). Tenants: what they ask for on their own pages with the same
# parameters, and nothing that destroys data: provisioning (idempotent; it uses the approved
# plan and addresses, so it takes nothing the operator did not give), start, stop, restart,
# the service actions and a refresh. Operators only: deleting a server (never retried on a
# tenant's behalf), a plan change (an operator's decision) and deleting an account (the
# tenant asks again, through its confirmation). Nobody: adding an account and setting a
# password, whose password is gone from the row once the operation ended.
_TENANT_RETRY_GUEST = frozenset({
    OperationKind.SERVICE_START,
    OperationKind.SERVICE_STOP,
    OperationKind.SERVICE_RESTART,
    OperationKind.REFRESH,
    OperationKind.ACCOUNT_KEY,
})
_NO_RETRY_GUEST = frozenset({OperationKind.ACCOUNT_ADD, OperationKind.ACCOUNT_PASSWORD})


def _guest_retry(kind: str) -> Retry:
    if kind in _NO_RETRY_GUEST:
        return Retry.NEVER
    return Retry.TENANT if kind in _TENANT_RETRY_GUEST else Retry.OPERATOR


TRANSITIONS: dict[str, Transition] = {
    t.kind: t
    for t in [
        Transition(
            OperationKind.PROVISION,
            # Approval asks for it; a retry after an error asks again; so does the demo for
            # records that claim a state the node never saw.
            asked_in=_states(State.APPROVED, State.ERROR, State.STOPPED, State.RUNNING),
            # Records that claim a state the node never saw (the demo's) are provisioned as
            # well: create and start are idempotent.
            runs_from=_states(State.APPROVED, State.PROVISIONING, State.ERROR, State.STOPPED, State.RUNNING),
            busy=State.PROVISIONING,
            target=State.RUNNING,
            on_failure=OnFailure.ERROR,
            on_interrupt=OnInterrupt.UNLESS_RUNNING_ERROR,
            interrupted_reason=_PROVISION_INTERRUPTED,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.START,
            asked_in=_states(State.STOPPED, State.ERROR),
            runs_from=_states(State.STOPPED, State.ERROR, State.STARTING),
            busy=State.STARTING,
            target=State.RUNNING,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.STOP,
            asked_in=_states(State.RUNNING, State.ERROR, State.RESCUE),
            runs_from=_states(State.RUNNING, State.ERROR, State.RESCUE, State.STOPPING),
            busy=State.STOPPING,
            target=State.STOPPED,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.RESTART,
            asked_in=_states(State.RUNNING, State.ERROR),
            runs_from=_states(State.RUNNING, State.ERROR, State.STARTING),
            busy=State.STARTING,
            target=State.RUNNING,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.DELETE,
            # A pending request may be deleted too (nothing exists on a node; the worker's
            # delete is a no-op there); actions.cancel withdraws one without the worker.
            asked_in=_states(State.STOPPED, State.RUNNING, State.ERROR, State.REQUESTED, State.RESCUE),
            runs_from=LIVE,
            busy=State.DELETING,
            target=State.DELETED,
            on_failure=OnFailure.ERROR,
            on_interrupt=OnInterrupt.FINISH_DELETE,
            interrupted_reason="deletion was interrupted; delete the server again",
        ),
        Transition(
            OperationKind.CHANGE_PLAN,
            asked_in=_states(State.STOPPED, State.RUNNING),
            runs_from=_states(State.STOPPED, State.RUNNING),
            busy=None,
            target=None,
            on_failure=OnFailure.SETTLE,
        ),
        # Keep and restore (issue 15). Snapshots and backups are taken of a running or a
        # stopped server without moving its state; putting one back stops, swaps and starts.
        Transition(
            OperationKind.SNAPSHOT_CREATE,
            asked_in=_states(State.RUNNING, State.STOPPED),
            runs_from=_states(State.RUNNING, State.STOPPED),
            busy=None,
            target=None,
            on_failure=OnFailure.KEEP,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.SNAPSHOT_RESTORE,
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR, State.RESTORING),
            busy=State.RESTORING,
            target=State.RUNNING,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.SNAPSHOT_DELETE,
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR),
            busy=None,
            target=None,
            on_failure=OnFailure.KEEP,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.BACKUP_CREATE,
            asked_in=_states(State.RUNNING, State.STOPPED),
            runs_from=_states(State.RUNNING, State.STOPPED),
            busy=None,
            target=None,
            on_failure=OnFailure.KEEP,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.BACKUP_RESTORE,
            # Into the server it came from, or into a new one (approved, made from the backup).
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR, State.APPROVED),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR, State.APPROVED, State.RESTORING),
            busy=State.RESTORING,
            target=State.RUNNING,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.BACKUP_DELETE,
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR),
            busy=None,
            target=None,
            on_failure=OnFailure.KEEP,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.REINSTALL,
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR, State.RESCUE),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR, State.RESCUE, State.REINSTALLING),
            busy=State.REINSTALLING,
            target=State.RUNNING,
            on_failure=OnFailure.ERROR,
            on_interrupt=OnInterrupt.UNLESS_RUNNING_ERROR,
            interrupted_reason="the reinstall was interrupted; reinstall the server again",
        ),
        Transition(
            OperationKind.RESCUE_ENTER,
            asked_in=_states(State.RUNNING, State.STOPPED, State.ERROR),
            runs_from=_states(State.RUNNING, State.STOPPED, State.ERROR, State.STARTING),
            busy=State.STARTING,
            target=State.RESCUE,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.RESCUE_LEAVE,
            asked_in=_states(State.RESCUE),
            runs_from=_states(State.RESCUE, State.STARTING),
            busy=State.STARTING,
            target=State.RUNNING,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.TENANT,
        ),
        Transition(
            OperationKind.ROOT_PASSWORD,
            asked_in=_states(State.RUNNING, State.RESCUE),
            runs_from=_states(State.RUNNING, State.RESCUE),
            busy=None,
            target=None,
            on_failure=OnFailure.KEEP,
            retry=Retry.NEVER,
        ),
        # Issue 16: a cold move to another node, asked by an operator (or evacuate). The job
        # ends it running or stopped, as it was before; a failure or a dead worker leaves it
        # whole on the source, as the kernel there says.
        Transition(
            OperationKind.MIGRATE,
            asked_in=_states(State.RUNNING, State.STOPPED),
            runs_from=_states(State.RUNNING, State.STOPPED, State.MIGRATING),
            busy=State.MIGRATING,
            target=None,
            on_failure=OnFailure.SETTLE,
            on_interrupt=OnInterrupt.FOLLOW_KERNEL,
            retry=Retry.OPERATOR,
        ),
        *(
            Transition(kind, asked_in=_states(State.RUNNING), runs_from=_states(State.RUNNING), busy=None,
                       target=None, on_failure=OnFailure.KEEP, retry=_guest_retry(kind))
            for kind in sorted(GUEST_KINDS)
        ),
    ]
}

# The states a server passes through while an operation runs, and approved (provisioning is
# queued): derived from the table, so a new busy state is in-progress everywhere at once.
IN_PROGRESS = frozenset({State.APPROVED, *(t.busy for t in TRANSITIONS.values() if t.busy)})


def transition(kind: str) -> Transition:
    try:
        return TRANSITIONS[kind]
    except KeyError:
        raise ValueError(f"unknown operation kind {kind!r}") from None


def may_ask(state: str, kind: str) -> bool:
    return state in transition(kind).asked_in


def retry_policy(kind: str) -> Retry:
    return transition(kind).retry


def interrupted(state: str) -> Transition | None:
    """The transition whose run left a server in STATE (an in-progress state), if any.
    Approved counts as provisioning's: its operation never started."""
    if state == State.APPROVED:
        return TRANSITIONS[OperationKind.PROVISION]
    for t in TRANSITIONS.values():
        if t.busy == state:
            return t
    return None
