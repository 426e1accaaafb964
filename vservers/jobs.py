"""The worker's one job: run an Operation with the engine, in the worker's own process.

`run_operation(operation_id)` is what `vservers.actions.enqueue` queues; only the id travels
through Redis, and the job is only a wake-up: the rows say what runs, and when. The job

 1. re-reads the row and does nothing if it is gone or no longer queued (a second delivery of
    the same job, an operation that the job of another one of its server ran, or one an
    operator already settled);
 2. claims the server's oldest queued operation (queued -> running, compare-and-swap,
    recording which process runs it) under the server's row lock, unless another operation
    of the server is running: then it returns at once, and the worker running that one takes
    this one after it (claim_next). So a server's operations run one at a time, in the order
    they were asked for, and no job waits for another (the engine locks each server too);
 3. moves the server into the operation's in-progress state, calls the engine, and moves it
    on (every move is a compare-and-swap, see VirtualServer.move);
 4. records the outcome on the row: a human-readable output, or a readable error with the
    traceback as output. After a failure the server's state follows what the kernel says;
 5. claims the server's next queued operation, and so on (3.-5.), until none is left.

Passwords reach the engine from the operation's params and nowhere else: Operation.finish
drops them from the row, and every text we store is scrubbed of them first.

If the worker dies in the middle (SIGKILL, OOM, power), the row stays "running" with the dead
process as its runner; vservers.reconcile fails it (at the next worker's start and in every
reconcile run) and reads the server's state again from the kernel. Every step here is safe to
repeat, so one retry finishes the work.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.db import close_old_connections, transaction
from django.db.models import Case, Q, When
from django.utils import timezone

from notifications import notify
from notifications.models import Event

from . import jobs_snapshots
from .engine import Conflict, Engine, EngineError, InvalidInput, Limits, NotFound, Usage, guest, procfs, templates
from .models import (
    FINISHED,
    GUEST_KINDS,
    TERMINAL,
    BuiltTemplate,
    GuestAccount,
    IPPool,
    Operation,
    OperationKind,
    OperationStatus,
    Plan,
    PoolExhausted,
    Service,
    State,
    Template,
    TemplateBuild,
    VirtualServer,
)
from .models.guest import store_listing
from .models.operations import INTERRUPTED
from .models.transitions import OnFailure, transition

if TYPE_CHECKING:
    from .worker import Watch

log = logging.getLogger(__name__)

JOB_FUNCTION = "vservers.jobs.run_operation"
# What a job answers when another operation of its server is running: that worker runs it.
LEFT = "left to the worker running its server"
# What a job answers when its handler passed the operation on to another node's worker.
HANDED_OVER = "handed over to another node's worker"
# Test-only fault injection: "KIND:PHASE" makes the worker stop itself (SIGSTOP) when an
# operation of KIND reaches PHASE (see Run.checkpoint), so that a test can SIGKILL it exactly
# there (tests/panel/test_faults.py). Read once at start-up; never set it in production.
TEST_FAULT = os.environ.get("VSERVERS_TEST_FAULT", "")

_engine: Engine | None = None

# The worker process's watch over the guests' inits that it starts (vservers.worker.Watch,
# set by `manage.py nodeworker`): it reaps each one that dies and has the node reconciled at
# once. None elsewhere (the tests' in-process workers, the CLI).
init_watch: Watch | None = None
# Operations that end the server's init themselves (the engine stops and reaps it): the watch
# forgets it first, so that this end does not count as a crash of the guest.
ENDS_INIT = frozenset({
    OperationKind.STOP, OperationKind.RESTART, OperationKind.DELETE,
    OperationKind.REINSTALL, OperationKind.RESCUE_ENTER, OperationKind.RESCUE_LEAVE,
})


def get_engine() -> Engine:
    """The worker's one Engine, configured from the VSERVER_* environment on first use. Its
    starts fork their helpers from a fork server (engine/forker.py): forked from a process with
    Django and RQ loaded, each start took 15-20 ms more."""
    global _engine
    if _engine is None:
        _engine = Engine(fork_server=True)
    return _engine


def reset_engine() -> None:
    """Forget the Engine, so the next use reads the environment again (tests)."""
    global _engine
    if _engine is not None:
        _engine.close()
    _engine = None


# --- who runs an operation ------------------------------------------------------------------


def _boot_id() -> str:
    """The boot id shortened, as runner ids carry it (they are stored: keep the form)."""
    try:
        return procfs.boot_id().replace("-", "")[:12]
    except OSError:
        return "unknown"


def _process_start(pid: int) -> int | None:
    """procfs.start_time, None also when /proc cannot be read: then the runner counts as gone."""
    try:
        return procfs.start_time(pid)
    except OSError:
        return None


# This process's runner id, by pid (a forked child has its own): every claim records it, and
# it cannot change while the process lives (host name aside, which the id keeps as it was).
_own_runner: dict[int, str] = {}


def runner_id(pid: int | None = None) -> str:
    """This process (or PID on this host) as "host:boot id:pid:start time"."""
    own = os.getpid()
    pid = pid or own
    if pid == own and pid in _own_runner:
        return _own_runner[pid]
    runner = f"{socket.gethostname()}:{_boot_id()}:{pid}:{_process_start(pid) or 0}"
    if pid == own:
        _own_runner.clear()
        _own_runner[pid] = runner
    return runner


def runner_alive(runner: str) -> bool | None:
    """Whether the process RUNNER names still lives: True or False when it ran on this host,
    None when this host cannot tell (another host, or no runner recorded)."""
    parts = runner.split(":")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    host, boot, pid, start = parts
    if host != socket.gethostname():
        return None
    if boot != _boot_id():
        return False  # this host rebooted since
    return _process_start(int(pid)) == int(start)


def plan_limits(plan: Plan) -> Limits:
    return Limits(
        cpus=float(plan.cpus),
        memory_bytes=plan.memory_mb * 2**20,
        pids=plan.pids,
        disk_bytes=plan.disk_mb * 2**20,
        io_weight=plan.io_weight,
        io_read_bps=None if plan.io_read_mbps is None else plan.io_read_mbps * 10**6,
        io_write_bps=None if plan.io_write_mbps is None else plan.io_write_mbps * 10**6,
        io_read_iops=plan.io_read_iops,
        io_write_iops=plan.io_write_iops,
        network_admin=plan.network_admin,
    )


class Refused(Exception):
    """The operation does not fit the server any more; the message is for the user. The
    server's state is left as it is."""


class Run:
    """One operation being run: the rows, the engine, and what to tell the user."""

    def __init__(self, operation: Operation, engine: Engine) -> None:
        self.operation = operation
        self.server: VirtualServer = operation.server
        self.engine = engine
        self.name = self.server.engine_name
        self.lines: list[str] = []
        # Set by a handler that passed the operation on to another node's worker (a migration
        # goes on on the target): the operation stays running, the other worker ends it.
        self.handed_over = False
        password = operation.params.get("password")
        self.secrets = [password] if isinstance(password, str) and password else []

    def note(self, line: str) -> None:
        self.lines.append(line)

    def param(self, key: str) -> str:
        value = self.operation.params.get(key)
        if not isinstance(value, str) or not value:
            raise Refused(f"the operation lacks its parameter {key!r}")
        return value

    def account(self) -> str:
        """The guest account's name: params "account" ("user" is taken by request_operation's
        own argument; accepted too when a caller passes params as a dict)."""
        for key in ("account", "user"):
            value = self.operation.params.get(key)
            if isinstance(value, str) and value:
                return value
        raise Refused("the operation lacks its parameter 'account'")

    def optional(self, key: str) -> str | None:
        value = self.operation.params.get(key)
        return value if isinstance(value, str) and value else None

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text

    def watch_init(self, status) -> None:
        """STATUS's init was started by this process: the worker's watch reaps it when it dies."""
        if init_watch is not None and status.init_pid:
            init_watch.add(self.name, status.init_pid)

    def checkpoint(self, phase: str) -> None:
        """A named point in the middle of an operation: "before-engine" (the server's state
        is moved, the kernel not touched yet), "after-engine" (the kernel did it, the rows do
        not say so yet), and "created" in a provisioning between create and start. Only a test
        worker (TEST_FAULT) stops here, to be killed."""
        if TEST_FAULT and TEST_FAULT == f"{self.operation.kind}:{phase}":
            log.warning("test fault %s: stopping this worker (pid %s)", TEST_FAULT, os.getpid())
            os.kill(os.getpid(), signal.SIGSTOP)


# --- the job ------------------------------------------------------------------------------


def run_operation(operation_id: int) -> str:
    """The job: run the operations of OPERATION_ID's server, from the oldest queued one on (see
    the module's docstring). Returns what became of OPERATION_ID: its outcome if this job ran
    it, "skipped" if it was not queued any more, LEFT if another worker runs its server."""
    close_old_connections()  # a long-lived worker: a database connection gone stale
    try:
        operation = Operation.objects.filter(pk=operation_id).only("status", "server_id").first()
        if operation is None:
            log.warning("operation %s does not exist; nothing to do", operation_id)
            return "missing"
        if operation.status != OperationStatus.QUEUED:
            log.info("operation %s is %s, not queued; skipping it", operation_id, operation.status)
            return "skipped"
        outcome = LEFT
        # The first look knows one is queued (read just now): it goes straight to the lock.
        queued = True
        while (claimed := claim_next(operation.server_id, queued)) is not None:
            result = run_claimed(claimed)
            if claimed.pk == operation.pk:
                outcome = result
            queued = False
        if outcome == LEFT:
            log.info("operation %s waits for the worker running its server", operation_id)
        return outcome
    finally:
        close_old_connections()


def claim_next(server_id: int, queued: bool = False) -> Operation | None:
    """Claim the oldest queued operation of SERVER_ID for this process, under the server's row
    lock (on SQLite the IMMEDIATE transaction's write lock plays its part). None if one of its
    operations is running (its worker takes the next one when it is done) or none is queued.

    Why no queued operation is left behind (a worker that finishes and then looks for the
    next one, against a new operation committed meanwhile): a new operation is committed
    before its job is pushed (actions.enqueue pushes on commit), so the worker that takes the
    job looks after that commit. If it still sees the server's operation running, the end of
    that one was committed after its look, so after the new operation, and the look for the
    next one, which follows that end, sees the new one. If it sees none running, it claims
    the new one (or an older one) itself. A worker that dies in between leaves the queued
    ones queued: the reconciler fails its operation and sends them again.

    The same reasoning lets a look that finds nothing queued skip the lock (a write lock on
    SQLite): it too starts after this worker's last end was committed. QUEUED says the caller
    has just seen one queued (run_operation's first look): then that look is not made again.

    Under the lock one query reads the server's running and queued operations together, the
    running ones first: a running one means "not ours", else the first row is the oldest
    queued one. Fewer queries per job is CPU the node's other workers get (issue 17).

    The lock is held for light queries only (the server's key, the operation's key and status):
    the claimed operation is read whole, with its server, plan, template, node and tenant, after
    the commit. That read's SQL alone takes ~3 ms to build (some 130 columns), which the other
    workers of the node no longer wait out under the lock; once claimed, the row is this
    worker's, so reading it later reads the same."""
    mine = Operation.objects.filter(server_id=server_id)
    if not queued and not mine.filter(status=OperationStatus.QUEUED).exists():
        return None
    with transaction.atomic():
        # Waited for, not skipped (SKIP LOCKED): the server's row lock is also the one every
        # state change takes (actions, the reconciler failing an orphan), and a claim that
        # skipped one of those would leave its queued operation to the next reconcile.
        # of=self, and no ordering: the default ordering joins the tenant, whose row must not be
        # locked too (nor may a node's database role, which only reads tenants:
        # vservers.nodes.credentials).
        list(VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server_id).order_by()
             .values_list("pk", flat=True))
        operation = (
            mine.filter(status__in=[OperationStatus.RUNNING, OperationStatus.QUEUED])
            .order_by(Case(When(status=OperationStatus.RUNNING, then=0), default=1), "pk")
            .only("status")
            .first()
        )
        # Under the lock nobody else claims it; the compare-and-swap is the backstop.
        if operation is None or operation.status != OperationStatus.QUEUED or not operation.claim(runner_id()):
            return None
    return Operation.objects.select_related(
        "server__plan", "server__template", "server__node", "server__tenant"
    ).get(pk=operation.pk)


def run_claimed(operation: Operation) -> str:
    """Run OPERATION, claimed by this process, and record its outcome on the row."""
    run = Run(operation, get_engine())
    if init_watch is not None and operation.kind in ENDS_INIT:
        init_watch.discard(run.name)
    handler = HANDLERS.get(operation.kind)
    try:
        if handler is None:
            raise Refused(f"unknown operation kind {operation.kind!r}")
        handler(run)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row, never lost
        message = _message(exc)
        public = _public_message(exc, run)
        log.warning("operation %s (%s of %s) failed: %s", operation.pk, operation.kind, run.name, message)
        if not isinstance(exc, Refused):
            try:
                _after_failure(run, public)
            except Exception:  # noqa: BLE001 - the state fix is best effort; the error below counts
                log.exception("could not settle the state of %s after a failure", run.name)
        detail = "\n".join([message, *run.lines, traceback.format_exc()])
        operation.finish(
            False, output=run.scrub("\n".join(run.lines)), error=run.scrub(public), detail=run.scrub(detail)
        )
        return "failed"
    if run.handed_over:
        return HANDED_OVER
    operation.finish(True, output=run.scrub("\n".join(run.lines) or "done"))
    return "succeeded"


def _message(exc: Exception) -> str:
    if isinstance(exc, Refused | EngineError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, Plan.DoesNotExist):
        return "the requested plan does not exist"
    return f"internal error ({type(exc).__name__}: {exc}); the operator can see the details"


# What a tenant reads when an operation failed for a reason that is the operator's to fix
# (the engine's message names host paths, commands and templates: it goes to `detail`).
FAILED_SENTENCES: dict[str, str] = {
    OperationKind.PROVISION: "The server could not be set up",
    OperationKind.START: "The server could not be started",
    OperationKind.STOP: "The server could not be stopped",
    OperationKind.RESTART: "The server could not be restarted",
    OperationKind.DELETE: "The server could not be deleted",
    OperationKind.CHANGE_PLAN: "The new plan could not be applied",
    **jobs_snapshots.FAILED_SENTENCES,
}
OPERATOR_TOLD = "the operator has been told."


def _public_message(exc: Exception, run: Run) -> str:
    """The sentence the user who asked is shown. Refusals are about their request; inside the
    guest, a clash or a missing account or service is about the guest's own state; anything
    else is the operator's (the full message is in the operation's detail)."""
    kind = run.operation.kind
    if isinstance(exc, OrderNotApplied):
        return exc.PUBLIC
    if isinstance(exc, Refused) or (isinstance(exc, InvalidInput | Conflict | NotFound) and kind in GUEST_KINDS):
        return str(exc).replace(repr(run.name), repr(run.server.name))
    what = FAILED_SENTENCES.get(kind) or f"{OperationKind(kind).label} did not succeed"
    return f"{what}; {OPERATOR_TOLD}"


def _after_failure(run: Run, reason: str) -> None:
    """Put the server in the state its failure leaves it in (the table's failure policy)."""
    policy = transition(run.operation.kind).on_failure
    if policy is OnFailure.ERROR:
        run.server.fail(reason)
    elif policy is OnFailure.SETTLE:
        settle(run.server, run.engine, reason)


def settle(server: VirtualServer, engine: Engine, reason: str = "") -> str:
    """Set SERVER's state from the kernel: running or stopped, or error if the node does
    not have it (or cannot say)."""
    try:
        status = engine.status(server.engine_name, with_addresses=False)
    except NotFound:
        target = State.ERROR
        reason = reason or "the server does not exist on its node"
    except EngineError as exc:
        target = State.ERROR
        reason = reason or f"cannot read the server's state: {exc}"
    else:
        running = State.RESCUE if status.rescue else State.RUNNING  # the rescue system runs
        target = running if status.state == "running" else State.STOPPED
    server.move([s for s in State if s not in TERMINAL and s != State.REQUESTED], target, reason)
    return target


# --- life cycle ---------------------------------------------------------------------------


def _refuse_state(run: Run) -> Refused:
    what = OperationKind(run.operation.kind).label.lower()
    return Refused(f"cannot {what} while the server is {run.server.get_state_display().lower()}")


def _begin(run: Run) -> None:
    """Into the operation's in-progress state, as the table allows; else refused."""
    if not run.server.begin(run.operation.kind):
        raise _refuse_state(run)


def _ensure_created(run: Run) -> None:
    """Create the server on the node unless the engine has it already. The engine's create
    also cleans up what a crashed create left, so this is safe to repeat."""
    server = run.server
    try:
        run.engine.spec(run.name)
        return
    except NotFound:
        pass
    addresses = list(server.addresses.select_related("pool"))
    if not addresses:
        addresses = [_allocate(server)]
    with_prefix = [a.with_prefix for a in addresses]
    run.engine.create(
        run.name,
        server.template.name,
        with_prefix,
        plan_limits(server.plan),
        hostname=server.hostname,
        autostart=server.autostart,
    )
    run.note(
        f"Created {run.name} from template {server.template.name} with plan {server.plan.name}"
        f" at {', '.join(a.address for a in addresses)}."
    )


def _allocate(server: VirtualServer):
    try:
        return IPPool.allocate_on(server.node, server)
    except PoolExhausted as exc:
        raise Refused(str(exc)) from None


def _limits_for(run: Run, plan: Plan) -> tuple[Limits, Limits]:
    """PLAN's limits for the server as the engine has it (current), keeping a larger disk:
    a server's disk only grows (its files may fill it), so a smaller plan leaves it as it is."""
    current = run.engine.spec(run.name).limits
    wanted = plan_limits(plan)
    if wanted.disk_bytes < current.disk_bytes:
        wanted = dataclasses.replace(wanted, disk_bytes=current.disk_bytes)
    return current, wanted


def _apply_plan(run: Run) -> None:
    """Before a start: the engine starts a server with the limits it stored, and an operator
    may have edited the plan since. Through the engine's update, so they are stored too."""
    current, wanted = _limits_for(run, run.server.plan)
    if current != wanted:
        run.engine.update(run.name, wanted)
        run.note(f"Applied the limits of plan {run.server.plan.name}.")


class OrderNotApplied(EngineError):
    """Root's password or SSH key given with the request could not be set in the guest."""

    PUBLIC = ("The server was set up, but root's password or SSH key given with the request could not be "
              "applied; the operator has been told.")


def apply_order(run: Run) -> None:
    """Root's password (its crypt hash) and SSH key given with the request, set in the running
    guest with the engine's account functions; each is cleared from the row once applied, so a
    retry applies only what is left and the hash does not outlive its use. A failure fails the
    operation with a sentence that says so (OrderNotApplied), never a silent skip."""
    # As read with the claim, under the server's lock: nothing clears them while its
    # operation runs (forget_order comes with a delete or a rejection, neither of which runs now).
    given = {"root_password_hash": run.server.root_password_hash, "root_ssh_key": run.server.root_ssh_key}
    if not (given["root_password_hash"] or given["root_ssh_key"]):
        return
    accounts = run.engine.accounts(run.name)
    rows = VirtualServer.objects.filter(pk=run.server.pk)
    try:
        if given["root_password_hash"]:
            accounts.set_password_hash("root", given["root_password_hash"])
            rows.filter(root_password_hash=given["root_password_hash"]).update(root_password_hash="")
            run.note("Set root's password given with the request.")
        if given["root_ssh_key"]:
            accounts.add_ssh_key("root", given["root_ssh_key"])
            rows.filter(root_ssh_key=given["root_ssh_key"]).update(root_ssh_key="")
            run.note("Added the SSH key given with the request to root's authorized keys.")
    except EngineError as exc:
        raise OrderNotApplied(f"root's password or SSH key given with the request: {exc}") from exc


def _provision(run: Run) -> None:
    _begin(run)
    run.checkpoint("before-engine")
    _ensure_created(run)
    run.checkpoint("created")
    _apply_plan(run)
    status = run.engine.start(run.name)
    run.watch_init(status)
    apply_order(run)
    run.checkpoint("after-engine")
    with transaction.atomic():  # the "ready" mail exists exactly when the state says so
        if run.server.complete(run.operation.kind):
            notify(Event.READY, run.server)
    run.note(f"Started {run.name} (init pid {status.init_pid}).")
    _refresh_best_effort(run)


def _start(run: Run) -> None:
    _begin(run)
    run.checkpoint("before-engine")
    _ensure_created(run)  # a start after a failed provisioning finishes it
    _apply_plan(run)
    status = run.engine.start(run.name)
    run.watch_init(status)
    apply_order(run)
    run.checkpoint("after-engine")
    run.server.complete(run.operation.kind)
    run.note(f"Started {run.name} (init pid {status.init_pid}).")
    _refresh_best_effort(run)


def _stop(run: Run) -> None:
    _begin(run)
    run.checkpoint("before-engine")
    # The status stop returns is the kernel's after the stop: its usage is the stopped
    # server's (no second status read).
    usage = run.engine.stop(run.name).usage
    run.checkpoint("after-engine")
    run.server.complete(run.operation.kind)
    guest_stopped(run.server, usage)
    run.note(f"Stopped {run.name}.")


def guest_stopped(server: VirtualServer, usage: Usage) -> None:
    """What the panel keeps of a server that no longer runs: its services are down (their
    last listing would show them running, with pids, until the server ran again) and its
    usage is USAGE, the kernel's for a stopped server (no memory, no processes), sampled
    now (the reconciler's next sample may be a minute away)."""
    now = timezone.now()
    with transaction.atomic():
        server.services.update(state="stopped", pid=None, seconds=0, since=now)
        VirtualServer.objects.filter(pk=server.pk).update(
            cpu_seconds=usage.cpu_seconds, memory_bytes=usage.memory_bytes, pids=usage.pids,
            disk_used_bytes=usage.disk_used_bytes, sampled_at=now,
        )


def _restart(run: Run) -> None:
    _begin(run)
    run.checkpoint("before-engine")
    _ensure_created(run)
    _apply_plan(run)
    status = run.engine.restart(run.name)
    run.watch_init(status)
    run.checkpoint("after-engine")
    run.server.complete(run.operation.kind)
    run.note(f"Restarted {run.name} (init pid {status.init_pid}).")
    _refresh_best_effort(run)


def _delete(run: Run) -> None:
    server = run.server
    _begin(run)
    run.checkpoint("before-engine")
    run.engine.delete(run.name)  # also fine for a server the node never had
    run.checkpoint("after-engine")
    addresses = server.ip_list()
    finish_delete(server)
    run.note(f"Deleted {run.name}" + (f"; released {', '.join(addresses)}." if addresses else "."))


def finish_delete(server: VirtualServer, reason: str = "") -> bool:
    """The database's half of a delete, once the node no longer has the server: its
    addresses go back to the pool, its guest lists go, and it is deleted."""
    with transaction.atomic():
        server.release_addresses()
        server.forget_order()
        server.guest_accounts.all().delete()
        server.services.all().delete()
        return server.complete(OperationKind.DELETE, reason)


def _change_plan(run: Run) -> None:
    """The engine first (it stores the limits and applies them live), then the row: a retry
    after a crash in between does the same update again and records the plan."""
    server = run.server
    _begin(run)
    new = Plan.objects.get(pk=run.operation.params.get("plan_id"))
    old = server.plan
    current, wanted = _limits_for(run, new)
    status = run.engine.update(run.name, wanted)
    server.plan = new
    if server.requested_plan_id == new.pk:
        server.requested_plan = None
    server.save(update_fields=["plan", "requested_plan", "updated"])
    run.note(f"Plan changed from {old.name} to {new.name}: {new.cpus} CPU, {new.memory_mb} MB memory, "
             f"{new.pids} processes.")
    if status.state == "running":
        run.note("The new CPU, memory and process limits apply to the running server now.")
    else:
        run.note("The new CPU, memory and process limits apply from the next start.")
    disk_mb = wanted.disk_bytes // 2**20
    if wanted.disk_bytes > current.disk_bytes:
        later = status.extra.get("disk_grow_pending") if status.extra else False
        run.note(f"The disk grows to {disk_mb} MB" + (" at the next start." if later else " now."))
    elif new.disk_mb != disk_mb:
        run.note(f"The disk stays at {disk_mb} MB: a server's disk only grows.")


# --- inside the guest ---------------------------------------------------------------------


def _account_add(run: Run) -> None:
    _begin(run)
    user = run.account()
    password, key = run.optional("password"), run.optional("ssh_key")
    extras = [what for what, given in (("a password", password), ("an SSH key", key)) if given]
    with_extras = f" with {' and '.join(extras)}." if extras else "."
    accounts = run.engine.accounts(run.name)
    run.checkpoint("before-engine")
    existing = accounts.get(user)
    if existing is not None and _interrupted_add(run, user):
        # The retry of an add whose worker died after the guest had made the account: finish
        # that attempt instead of refusing the account it made.
        if password:
            accounts.set_password(user, password)
        if key:
            accounts.add_ssh_key(user, key)
        run.note(f"Account {user} (uid {existing.uid}) was made by an interrupted earlier attempt; "
                 f"finished it{with_extras}")
    else:
        account = accounts.add(user, password=password, ssh_key=key)
        run.note(f"Added account {account.name} (uid {account.uid}){with_extras}")
    run.checkpoint("after-engine")
    _refresh_accounts(run)


def _interrupted_add(run: Run, user: str) -> bool:
    """Whether the last finished add or delete of account USER before this operation was an
    add that its worker did not live to finish."""
    last = (
        Operation.objects.filter(
            server_id=run.server.pk,
            pk__lt=run.operation.pk,
            kind__in=[OperationKind.ACCOUNT_ADD, OperationKind.ACCOUNT_DELETE],
            status__in=FINISHED,
        )
        .filter(Q(params__account=user) | Q(params__user=user))
        .order_by("-pk")
        .first()
    )
    return (
        last is not None
        and last.kind == OperationKind.ACCOUNT_ADD
        and last.status == OperationStatus.FAILED
        and last.error == INTERRUPTED
    )


def _account_delete(run: Run) -> None:
    _begin(run)
    user = run.account()
    run.engine.accounts(run.name).delete(user)
    run.note(f"Deleted account {user}.")
    _refresh_accounts(run)


def _account_password(run: Run) -> None:
    _begin(run)
    user = run.account()
    run.engine.accounts(run.name).set_password(user, run.param("password"))
    run.note(f"Set a new password for {user}.")
    _refresh_accounts(run)


def _account_key(run: Run) -> None:
    _begin(run)
    user = run.account()
    run.engine.accounts(run.name).add_ssh_key(user, run.param("ssh_key"))
    run.note(f"Added an SSH key for {user}.")
    _refresh_accounts(run)


def _service(action: str) -> Callable[[Run], None]:
    def control(run: Run) -> None:
        _begin(run)
        service = run.param("service")
        result = run.engine.services(run.name).control(service, action)
        pid = f" (pid {result.pid})" if result.pid else ""
        run.note(f"Service {result.name}: {result.state}{pid}.")
        _refresh_services(run)

    return control


def _refresh(run: Run) -> None:
    _begin(run)
    _refresh_accounts(run)
    _refresh_services(run)


def _refresh_accounts(run: Run) -> None:
    accounts = store_accounts(run.server, run.engine)
    run.note(f"Accounts: {', '.join(a.name for a in accounts if not a.is_system) or 'none'}.")


def _refresh_services(run: Run, settle: bool = False) -> None:
    services = store_services(run.server, run.engine, settle)
    run.note(f"Services: {', '.join(f'{s.name} {s.state}' for s in services) or 'none'}.")


def store_accounts(server: VirtualServer, engine: Engine) -> list:
    """Replace SERVER's account rows with what its guest says now; returns the accounts
    stored (store_listing: only names the engine accepts, the rest counted)."""
    return store_listing(server, GuestAccount, guest.listing(engine.accounts(server.engine_name)))


def store_services(server: VirtualServer, engine: Engine, settle: bool = False) -> list:
    """Replace SERVER's service rows with what its guest says now, or, with SETTLE (right
    after a start), once its supervisor has started what it should."""
    lister = engine.services(server.engine_name)
    services = lister.settled() if settle else guest.listing(lister)
    return store_listing(server, Service, services)


def _refresh_best_effort(run: Run) -> None:
    """A freshly started server's lists, for the tenant's next look; a failure here does not
    fail the operation that started it (a refresh operation can read them again)."""
    try:
        _refresh_accounts(run)
        _refresh_services(run, settle=True)
    except EngineError as exc:
        run.note(f"Could not read the accounts and services yet: {exc}")


HANDLERS: dict[str, Callable[[Run], None]] = {
    OperationKind.PROVISION: _provision,
    OperationKind.START: _start,
    OperationKind.STOP: _stop,
    OperationKind.RESTART: _restart,
    OperationKind.DELETE: _delete,
    OperationKind.CHANGE_PLAN: _change_plan,
    OperationKind.ACCOUNT_ADD: _account_add,
    OperationKind.ACCOUNT_DELETE: _account_delete,
    OperationKind.ACCOUNT_PASSWORD: _account_password,
    OperationKind.ACCOUNT_KEY: _account_key,
    OperationKind.SERVICE_START: _service("start"),
    OperationKind.SERVICE_STOP: _service("stop"),
    OperationKind.SERVICE_RESTART: _service("restart"),
    OperationKind.REFRESH: _refresh,
    OperationKind.SNAPSHOT_CREATE: jobs_snapshots.create,
    OperationKind.SNAPSHOT_RESTORE: jobs_snapshots.restore,
    OperationKind.SNAPSHOT_DELETE: jobs_snapshots.delete,
}
# Issue 15's handlers live in modules of their own, which use this one's helpers: imported
# here, once everything they use is defined.
from .backups import jobs as backup_jobs  # noqa: E402

HANDLERS.update(backup_jobs.HANDLERS)
FAILED_SENTENCES.update(backup_jobs.FAILED_SENTENCES)

# Keep and restore (issue 15): each part's handlers live in a module of its own.
from . import jobs_rescue  # noqa: E402 - it imports from this module inside its handlers only

HANDLERS[OperationKind.REINSTALL] = jobs_rescue.reinstall
HANDLERS[OperationKind.RESCUE_ENTER] = jobs_rescue.rescue_enter
HANDLERS[OperationKind.RESCUE_LEAVE] = jobs_rescue.rescue_leave
HANDLERS[OperationKind.ROOT_PASSWORD] = jobs_rescue.root_password
FAILED_SENTENCES.update(jobs_rescue.FAILED_SENTENCES)

# Moving a server between nodes (issue 16): the source's half; the target's runs as a job of its own.
from .migration import jobs as migration_jobs  # noqa: E402

HANDLERS[OperationKind.MIGRATE] = migration_jobs.migrate
FAILED_SENTENCES.update(migration_jobs.FAILED_SENTENCES)


# --- template builds ----------------------------------------------------------------------

BUILD_FUNCTION = "vservers.jobs.run_template_build"


def run_template_build(build_id: int) -> str:
    """The job of a TemplateBuild (actions.build_template): claim the row, have the engine
    build a new version of the template (it becomes the current one; servers keep the version
    they were made from), and record the outcome and what is built now (record_templates)."""
    close_old_connections()
    try:
        build = TemplateBuild.objects.select_related("template", "node").filter(pk=build_id).first()
        if build is None or not build.claim(runner_id()):
            return "skipped"
        try:
            info = templates.build(get_engine().config, build.template.name)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row, never lost
            log.warning("build of template %s failed: %s", build.template.name, exc)
            public = (str(exc) if isinstance(exc, NotFound) else
                      f"The template {build.template.name} could not be built; see the details.")
            build.finish(False, error=public, detail=f"{_message(exc)}\n{traceback.format_exc()}")
            return "failed"
        record_templates(build.node)
        build.finish(True, output=f"Built {info.name} version {info.version} "
                                  f"({info.size_bytes / 2**20:.1f} MB on disk).")
        return "succeeded"
    finally:
        close_old_connections()


def record_templates(node) -> int:
    """Store what the engine of NODE (this worker's) has built of each template the panel
    knows: its current version, when it was built and its size, or no row when it is not
    built. Returns how many are built."""
    config = get_engine().config
    now = timezone.now()
    built = 0
    for template in Template.objects.all():
        try:
            info = templates.get(config, template.name)
        except (NotFound, InvalidInput):
            BuiltTemplate.objects.filter(template=template, node=node).delete()
            continue
        built += 1
        BuiltTemplate.objects.update_or_create(template=template, node=node, defaults={
            "version": info.version,
            "built_at": datetime.fromtimestamp(info.built_at, UTC) if info.built_at else None,
            "size_bytes": info.size_bytes,
            "checked": now,
        })
    return built


def fail_dead_builds(node) -> int:
    """Fail the builds of NODE that a worker which died left running (a compare-and-swap on
    status and runner, as Operation.interrupt), so that the template can be built again."""
    failed = 0
    for build in TemplateBuild.objects.filter(node=node, status=OperationStatus.RUNNING):
        if runner_alive(build.runner) is False:
            failed += TemplateBuild.objects.filter(pk=build.pk, status=OperationStatus.RUNNING,
                                                   runner=build.runner).update(
                status=OperationStatus.FAILED, finished=timezone.now(),
                error="interrupted: the worker stopped while it built this template; build it again")
    return failed
