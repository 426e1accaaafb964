"""The node's periodic job: make the database agree with the kernel, for all servers at once.

One job per node (job id "reconcile-<node pk>"), queued every PANEL_RECONCILE_SECONDS by the
node's worker process itself (vservers.worker.Watch), and at once when a guest's init that it
started dies or when Redis is back from an outage. No process or job per server: density is
the product. For every live server of the node it

 1. asks the engine what the kernel says (running or not; the usage is the sampler's job,
    vservers.usage.sampler, which stores the latest sample on the server too);
 2. unless an operation of the server is queued or running, corrects the state: a server
    whose init died shows "stopped", one the node does not have shows "error", work that a
    crashed worker left half-done ends in the state the kernel shows;
 3. queues a start for an autostart server found stopped, unless it was stopped on purpose
    (its last operation was a stop) or its last start failed; a server whose init died
    CRASH_LIMIT times within CRASH_WINDOW is not started again: it stays stopped, says why,
    and an operator sees it in the audit log (no crash loop);

and for the node it fails operations left "running" by a worker that died (and puts their
servers in the state the kernel shows), hands over the outbox (queued operations whose job
never reached Redis, was lost there, or ended without running them) and records
node.last_seen.

The worker process runs the first of those node-wide steps by itself at start-up (`recover`),
before it takes any job, so that nothing stays "running" after a crash. RQ's own records are
only read here (a job's status and worker), never written: the rows are the truth.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone
from rq.job import JobStatus

from accounts.models import AuditEntry
from notifications import notify
from notifications.models import Event
from notifications.sender import send_due

from .actions import enqueue, request_operation
from .engine import EngineError, NotFound, Status
from .engine.templates import remove_abandoned_builds
from .jobs import (
    fail_dead_builds,
    finish_delete,
    get_engine,
    guest_stopped,
    record_templates,
    runner_alive,
    store_accounts,
    store_services,
)
from .migration import recovery as migration_recovery
from .models import (
    FINISHED,
    GUEST_KINDS,
    ON_NODE,
    TERMINAL,
    Node,
    Operation,
    OperationKind,
    OperationStatus,
    State,
    VirtualServer,
)
from .models.operations import DELAYED_PREFIX
from .models.transitions import OnInterrupt, interrupted
from .nodes.queues import SEPARATOR, is_node_queue
from .queues import get_queue

log = logging.getLogger(__name__)

RECONCILE_FUNCTION = "vservers.reconcile.reconcile_node"
# A queued operation without a job id after this long lost its enqueue (the web process died
# between the commit and the push).
LOST_PUSH_AFTER = timedelta(minutes=1)
# An autostart server whose init died this many times within this window stays stopped.
CRASH_LIMIT = 10
CRASH_WINDOW = timedelta(minutes=1)
# The prefix of RQ worker names that say which process they are (vservers.worker.PanelWorker).
WORKER_NAME_PREFIX = "panel:"


def reconcile_node(node_id: int) -> str:
    """The periodic job (see the module's docstring). Returns a one-line summary."""
    close_old_connections()  # a long-lived worker: a database connection gone stale
    try:
        node = Node.objects.filter(pk=node_id).first()
        if node is None or not node.is_active:
            log.info("node %s is gone or inactive; nothing to reconcile", node_id)
            return "node gone or inactive"
        summary = Reconciler(node).run()
        return f"{summary}; {send_mail()}"
    finally:
        close_old_connections()


def send_mail() -> str:
    """The mail outbox (notifications.sender), after the node's own work: the periodic job
    sends it, so mail written by the web process or by this run goes out within a period,
    and rows a killed worker left claimed go out again."""
    try:
        counts = send_due()
    except Exception:  # noqa: BLE001 - mail must never stop the node's reconcile
        log.exception("sending the mail outbox failed")
        return "mail: failed"
    return "mail: " + ", ".join(f"{v} {k}" for k, v in counts.items())


# --- queueing the job (RQ's public API; the worker's watch and `manage.py reconcile`) ------


def job_id(node_id: int) -> str:
    """The node's one reconcile job id: asking again while it is queued adds nothing."""
    return f"reconcile-{node_id}"


def worker_gone(job) -> bool:
    """Whether JOB says it was started by a worker process of this host that is gone: then it
    never ends by itself (RQ's own clean-up fails it only once its heartbeat expires, up to
    the job's timeout later)."""
    name = job.worker_name or ""
    node_queue, mark, rest = name.partition(SEPARATOR + WORKER_NAME_PREFIX)
    if mark and is_node_queue(node_queue):
        name = WORKER_NAME_PREFIX + rest  # "node-b_panel:...": vservers.queues.worker_prefix
    return name.startswith(WORKER_NAME_PREFIX) and runner_alive(name[len(WORKER_NAME_PREFIX):]) is False


def will_run(job) -> bool:
    """Whether JOB (or None: not in Redis) is queued, or running in a live worker."""
    if job is None:
        return False
    status = job.get_status(refresh=False)
    return status == JobStatus.QUEUED or (status == JobStatus.STARTED and not worker_gone(job))


def queue_run(queue, node_id: int, unless_ended_within: float = 0) -> str:
    """Queue NODE_ID's reconcile job under its fixed id. Returns what happened:

     - "waiting": it is queued already; that run starts after whatever made us ask;
     - "running": it runs now and may have looked at a server before what made us ask: the
       caller asks again once it has ended;
     - "recent": it ended less than UNLESS_ENDED_WITHIN seconds ago (the periodic ask: the
       run of another worker process of the node counts);
     - "queued".

    Two processes that ask at the same moment may both queue it: the node then runs twice,
    which is harmless (every step is safe to repeat)."""
    job = queue.fetch_job(job_id(node_id))
    if job is not None and will_run(job):
        return "waiting" if job.get_status(refresh=False) == JobStatus.QUEUED else "running"
    if job is not None and unless_ended_within and job.ended_at:
        if (datetime.now(UTC) - job.ended_at).total_seconds() < unless_ended_within:
            return "recent"
    # Its result is kept long enough for the "recent" question of the next periodic ask.
    queue.enqueue(RECONCILE_FUNCTION, node_id, job_id=job_id(node_id),
                  result_ttl=max(60, int(unless_ended_within) * 2), failure_ttl=86400)
    return "queued"


# --- the work -----------------------------------------------------------------------------


def recover(node: Node) -> int:
    """What a worker process does for NODE when it starts, before it takes any job, with the
    database and the kernel only (Redis may still be down): fail the operations that a dead
    worker left running and settle their servers from the kernel. Returns how many."""
    reconciler = Reconciler(node)
    reconciler.fail_orphans(redis=False)
    return reconciler.counts["orphans"] + migration_recovery.recover(node, reconciler.engine)


class Reconciler:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.engine = get_engine()
        self.queue = get_queue(node.queue_name)
        self.counts = {"servers": 0, "corrected": 0, "autostarted": 0, "resent": 0, "orphans": 0, "paused": 0,
                       "recovered": 0}
        # No state root at all is a misconfigured worker (VSERVER_ROOT), not a node that lost
        # every server: then no server is declared missing.
        self.installed = self.engine.config.servers_dir.is_dir()

    def operations(self):
        mine = Q(server__node=self.node)
        if self.node.queue_name == "default":
            mine |= Q(server__node__isnull=True)  # servers never placed queue on "default"
        return Operation.objects.filter(mine)

    def run(self) -> str:
        self.fail_orphans()
        try:
            self.counts["migrations"] = migration_recovery.recover(self.node, self.engine, self.queue)
        except Exception:  # noqa: BLE001 - the servers below matter more; the next run tries again
            log.exception("node %s: could not settle its migrations", self.node.name)
        self.templates()
        self.keys()
        self.resend_lost()
        known = set(self.engine.names())
        busy = set(
            self.operations()
            .filter(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING])
            .values_list("server_id", flat=True)
        )
        servers = (
            VirtualServer.objects.filter(node=self.node)
            .exclude(state__in=[*TERMINAL, State.REQUESTED])
            .select_related("tenant", "node")
        )
        # A new node has no servers directory until its first server: only servers that should
        # be on it make its absence a misconfiguration worth an error.
        if not self.installed and any(server.state in ON_NODE for server in servers):
            log.error("node %s: the engine has no servers directory %s; is VSERVER_ROOT right?",
                      self.node.name, self.engine.config.servers_dir)
        for server in servers:
            self.counts["servers"] += 1
            try:
                self.reconcile_server(server, known, server.pk in busy)
            except Exception:  # noqa: BLE001 - one broken server must not stop the others
                log.exception("reconcile of %s (%s) failed", server, server.engine_name)
        Node.objects.filter(pk=self.node.pk).update(last_seen=timezone.now())
        summary = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        log.info("reconciled node %s: %s", self.node.name, summary)
        return summary

    def keys(self) -> None:
        """The other nodes' migration keys in this node's authorized_keys (vservers.nodes.keys)."""
        from .nodes import keys

        try:
            keys.sync(self.engine.config, [self.node.pk])
        except Exception:  # noqa: BLE001 - the servers below matter more
            log.exception("node %s: could not write its authorized_keys", self.node.name)

    def templates(self) -> None:
        """What this node has built of each template, for the Templates page (the web process
        never reads the engine's files), and builds whose worker died, failed."""
        try:
            fail_dead_builds(self.node)
            for path in remove_abandoned_builds(self.engine.config):
                log.warning("node %s: removed %s, left by a template build whose process died",
                            self.node.name, path)
            record_templates(self.node)
        except Exception:  # noqa: BLE001 - the servers below matter more
            log.exception("node %s: could not record its templates", self.node.name)

    def reconcile_server(self, server: VirtualServer, known: set[str], busy: bool) -> None:
        status: Status | None = None
        if server.engine_name in known and not busy and self.engine.recover(server.engine_name):
            # A snapshot whose worker was killed left it frozen: running, yet running nothing.
            self.counts["recovered"] += 1
            log.warning("%s: thawed what a killed snapshot operation left frozen", server)
        if server.engine_name in known:
            # Usage is the sampler's (vservers.usage.sampler): one reader of it per period.
            status = self.engine.status(server.engine_name, with_addresses=False, with_usage=False)
        if busy:
            return  # the operation moves the state; its worker reads the kernel itself
        before = server.state
        self.correct_state(server, status)
        if server.state != before:
            self.counts["corrected"] += 1
            log.info("%s: %s -> %s (%s)", server, before, server.state, server.state_reason)
            if server.state == State.STOPPED and status is not None:
                guest_stopped(server, status.usage)  # it stopped by itself: nothing runs in it now
        if server.state == State.STOPPED and server.autostart and status is not None and self.wants_start(server):
            deaths = self.recent_deaths(server)
            if deaths >= CRASH_LIMIT:
                self.pause_autostart(server, deaths)
                return
            request_operation(server, OperationKind.START, None, autostart=True)
            self.counts["autostarted"] += 1

    def correct_state(self, server: VirtualServer, status: Status | None) -> None:
        """Follow the kernel; a server left in an in-progress state by an operation that no
        longer runs is settled by that operation's interrupt policy (models.transitions)."""
        state = server.state
        left = interrupted(state)
        if status is None:
            if not self.installed:
                return
            # The node does not have it.
            if left is not None and left.on_interrupt is OnInterrupt.FINISH_DELETE:
                # The engine finished the delete; the worker died before recording it.
                finish_delete(server, "deleted (finished by the reconciler)")
            elif left is not None and left.interrupted_reason:
                server.move([state], State.ERROR, left.interrupted_reason)
            elif state != State.ERROR:
                server.move([state], State.ERROR, f"the server does not exist on node {self.node.name}")
            return
        running = status.state == "running"
        # The kernel says running either way; the engine says which system runs.
        live = State.RESCUE if status.rescue else State.RUNNING
        if left is not None and left.on_interrupt is OnInterrupt.FINISH_DELETE:
            server.move([state], State.ERROR, left.interrupted_reason)
        elif running and state != live:
            server.move([state], live, "")
        elif not running and state in (State.RUNNING, State.RESCUE):
            with transaction.atomic():  # the mail to its admins exists exactly when the state does
                if server.move([state], State.STOPPED, "the server's init exited"):
                    notify(Event.STOPPED, server)
        elif not running and left is not None:
            if left.on_interrupt is OnInterrupt.FOLLOW_KERNEL:
                server.move([state], State.STOPPED, "")
            else:
                server.move([state], State.ERROR, left.interrupted_reason)

    def wants_start(self, server: VirtualServer) -> bool:
        last = server.operations.filter(status__in=FINISHED).order_by("-finished", "-pk").first()
        if last is None:
            return True
        if last.kind == OperationKind.STOP:
            return False  # stopped on purpose
        if last.kind in (OperationKind.START, OperationKind.RESTART, OperationKind.PROVISION) and (
            last.status == OperationStatus.FAILED
        ):
            return False  # starting it fails: no crash loop; the failure is on the row
        return True

    def recent_deaths(self, server: VirtualServer) -> int:
        """How often SERVER's init died within CRASH_WINDOW, this time included: the
        autostarts in a row that the reconciler asked for (a start by hand starts over)."""
        since = timezone.now() - CRASH_WINDOW
        starts = (
            server.operations.filter(
                kind__in=[OperationKind.START, OperationKind.RESTART, OperationKind.PROVISION], created__gte=since
            )
            .order_by("-pk")
            .values_list("params", flat=True)[:CRASH_LIMIT]
        )
        deaths = 1
        for params in starts:
            if not (isinstance(params, dict) and params.get("autostart")):
                break
            deaths += 1
        return deaths

    def pause_autostart(self, server: VirtualServer, deaths: int) -> None:
        """Leave SERVER stopped and say why: on the server, in its history (a failed start,
        which also keeps later runs from starting it) and in the audit log."""
        seconds = int(CRASH_WINDOW.total_seconds())
        reason = (
            f"autostart paused: its init died {deaths} times within {seconds} seconds; "
            "start it by hand once the cause is fixed"
        )
        now = timezone.now()
        Operation.objects.create(
            server=server, kind=OperationKind.START, params={"autostart": True}, status=OperationStatus.FAILED,
            started=now, finished=now, error=reason,
        )
        server.move([State.STOPPED], State.STOPPED, reason)
        AuditEntry.record(None, "server.autostart_paused", server, deaths=deaths, window_seconds=seconds)
        self.counts["paused"] += 1
        log.warning("%s: %s", server, reason)

    def kernel_status(self, server: VirtualServer) -> Status | None:
        try:
            return self.engine.status(server.engine_name, with_addresses=False)
        except NotFound:
            return None

    def is_orphan(self, operation: Operation, redis: bool = True) -> bool:
        """Whether OPERATION is marked running but no process runs it any more."""
        alive = runner_alive(operation.runner)
        if alive is not None:
            return not alive
        if not redis:
            return False
        # Claimed on another host, or before runners were recorded: RQ's word.
        job = self.queue.fetch_job(operation.job_id) if operation.job_id else None
        return not (job is not None and job.get_status(refresh=False) == JobStatus.STARTED)

    def fail_orphans(self, redis: bool = True) -> None:
        """Operations marked running whose worker died: failed with a clear message, and their
        server put in the state the kernel shows, in one transaction under the server's row
        lock (the claim of its next operation waits for it)."""
        # A move's operation runs on two nodes in turn: its migration's phase says whose worker
        # runs it, and vservers.migration.recovery settles it.
        running = (self.operations().filter(status=OperationStatus.RUNNING).exclude(kind=OperationKind.MIGRATE)
                   .select_related("server__node"))
        for operation in running:
            if not self.is_orphan(operation, redis):
                continue
            server = operation.server
            try:
                status = self.kernel_status(server)
            except EngineError:
                log.exception("cannot read the state of %s; its orphaned operation waits", server.engine_name)
                continue
            with transaction.atomic():
                VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
                if not operation.interrupt():
                    continue
                server.refresh_from_db(fields=["state", "state_reason"])
                self.correct_state(server, status)
            self.counts["orphans"] += 1
            log.warning("operation %s (%s of %s) was left running by a dead worker; marked failed, server %s",
                        operation.pk, operation.kind, server, server.state)
            if operation.kind in GUEST_KINDS and server.state == State.RUNNING:
                try:  # what the guest has now, e.g. the account an interrupted add made
                    store_accounts(server, self.engine)
                    store_services(server, self.engine)
                except EngineError:
                    log.exception("could not read the accounts and services of %s", server.engine_name)

    def resend_lost(self) -> None:
        """Queued operations whose job never reached Redis, or that Redis lost, or whose job
        ended without running them (it failed before the claim, or its worker died). Not those
        of a server with an operation running: its worker takes them when it is done (and
        fail_orphans, just before, ended the running ones of dead workers)."""
        stale = timezone.now() - LOST_PUSH_AFTER
        busy = self.operations().filter(status=OperationStatus.RUNNING).values("server_id")
        queued = (
            self.operations().filter(status=OperationStatus.QUEUED).exclude(server_id__in=busy)
            .select_related("server__node")
        )
        for operation in queued.order_by("pk"):  # in the order they were asked for
            if operation.error.startswith(DELAYED_PREFIX):
                pass
            elif operation.job_id:
                if will_run(self.queue.fetch_job(operation.job_id)):
                    continue
            elif operation.created > stale:
                continue  # its push may still come
            Operation.objects.filter(pk=operation.pk, status=OperationStatus.QUEUED).update(error="")
            enqueue(operation)  # outside a transaction: pushed right away
            self.counts["resent"] += 1
