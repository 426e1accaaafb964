"""What each node's recovery (at its worker's start) and reconcile (every period) do about
migrations: settle what a dead worker of THIS node left, and remove what this node holds of a
server that the database places elsewhere, only where a migration row explains it.

 - source, shipping, its runner dead: the migration and the operation fail, the server
   follows this node's kernel (stopped), a start is queued if it ran, and the target is told
   to discard what arrived;
 - target, receiving, its runner dead: this node's copy is removed, the new addresses are
   released, the migration and the operation fail, the server stays on the source (stopped,
   and started again if it ran);
 - target, shipped (the receive job lost): the job is queued again (reconcile only: Redis);
 - target: anything under incoming/ that no active migration to this node explains is
   discarded (a killed send's partial copy);
 - either: an installed copy of a server that lives on another node, when a done migration
   from this node or a failed one to it says so: removed (never a server the database does
   not explain).

send_due (a node's heartbeat thread, woken by another node or every beat) queues on this
node's own queue what the database asks of it: the receive of a move shipped to it, the
cleanup of a move that ended, and the operations asked for its servers by another node's
worker (no node's worker writes another's queue: vservers.queues.may_push).

Runner ids are compared on the node that ran them (vservers.jobs.runner_alive): each node
judges only its own dead workers.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rq.job import JobStatus

from ..engine import EngineError
from ..models import (
    ACTIVE_PHASES,
    FINISHED,
    Migration,
    MigrationPhase,
    Node,
    OperationStatus,
    State,
    VirtualServer,
)
from ..models.operations import DELAYED_PREFIX, INTERRUPTED
from . import jobs

log = logging.getLogger(__name__)


def recover(node: Node, engine, queue=None) -> int:
    """NODE's migrations that a dead worker of this node left, settled; with QUEUE (Redis is
    there: the reconcile) also the lost receive jobs and the leftovers. Returns how many
    migrations or copies it dealt with."""
    from ..jobs import runner_alive

    count = 0
    for migration in Migration.objects.filter(source=node, phase=MigrationPhase.SHIPPING).select_related(
            "operation", "server__node", "target"):
        operation = migration.operation
        runner = migration.runner or operation.runner
        if operation.status in FINISHED or (
                operation.status == OperationStatus.RUNNING and runner_alive(runner) is False):
            count += fail_shipping(migration, engine)
    for migration in Migration.objects.filter(target=node, phase=MigrationPhase.RECEIVING).select_related(
            "operation", "server", "source", "target"):
        if migration.operation.status in FINISHED or runner_alive(migration.runner) is False:
            log.warning("node %s: the move of %s was left receiving by a dead worker", node.name, migration.server)
            count += jobs.target_failed(migration, engine, migration.runner)
    if queue is not None:
        count += resend_receives(node, queue)
        count += remove_leftovers(node, engine)
    return count


def fail_shipping(migration: Migration, engine) -> int:
    """The source's worker died while it stopped or shipped the server (or the operation was
    ended otherwise): fail both, settle the server from this node's kernel."""
    from ..jobs import settle

    operation, server = migration.operation, migration.server
    with transaction.atomic():
        VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
        if not Migration.objects.filter(pk=migration.pk, phase=MigrationPhase.SHIPPING).update(
                phase=MigrationPhase.FAILED, finished=timezone.now()):
            return 0
        if operation.status == OperationStatus.RUNNING:
            operation.interrupt(INTERRUPTED)
    server.refresh_from_db(fields=["state", "state_reason", "node"])
    state = server.state
    if server.state == State.MIGRATING:
        try:
            state = settle(server, engine, jobs.STAYS)
        except EngineError:
            log.exception("cannot read the state of %s; its reconcile settles it", server.engine_name)
    log.warning("the move of %s to node %s was left shipping by a dead worker; failed, server %s",
                server, migration.target.name, state)
    jobs.push(migration.target, jobs.CLEANUP_FUNCTION, migration.pk, migration.target_id,
              job_id=jobs.cleanup_job_id(migration.pk, migration.target_id))
    if migration.was_running and state == State.STOPPED:
        jobs.start_again(server)
    jobs.resend_queued(server)
    return 1


# The moves whose cleanup send_due queues: those that ended this recently (older leftovers
# are the reconcile's: remove_leftovers).
CLEANUP_WINDOW = timedelta(hours=1)


def send_due(node: Node, queue) -> int:
    """What the database asks of NODE, queued on its own QUEUE (see the module's docstring);
    how many jobs. Safe to repeat: each job is queued once while its record lasts, and a
    second delivery finds its row claimed."""
    return resend_receives(node, queue) + send_cleanups(node, queue) + send_operations(node)


def send_cleanups(node: Node, queue) -> int:
    """The cleanup jobs of NODE for the moves that ended within CLEANUP_WINDOW: done from it
    (its stopped copy), failed to it (what arrived); each once (its job's record outlives
    the window)."""
    from ..queues import job_key

    since = timezone.now() - CLEANUP_WINDOW
    ended = list(Migration.objects.filter(
        Q(source=node, phase=MigrationPhase.DONE) | Q(target=node, phase=MigrationPhase.FAILED),
        finished__gte=since).values_list("pk", flat=True))
    if not ended:
        return 0
    ids = [jobs.cleanup_job_id(pk, node.pk) for pk in ended]
    with queue.connection.pipeline(transaction=False) as pipe:  # one round trip for them all
        for job_id in ids:
            pipe.exists(queue.job_class.key_for(job_key(queue.name, job_id)))
        queued = pipe.execute()
    sent = 0
    for migration_id, job_id, known in zip(ended, ids, queued, strict=True):
        if not known and jobs.push(node, jobs.CLEANUP_FUNCTION, migration_id, node.pk, job_id=job_id):
            sent += 1
    return sent


def send_operations(node: Node) -> int:
    """Operations queued for NODE's servers by another node's worker (a start after a failed
    move), which could only wake this node: queued here. Not those of a server with an
    operation running (its worker takes them when done), nor those with a job already."""
    from ..actions import enqueue
    from ..models import Operation

    busy = Operation.objects.filter(server__node=node, status=OperationStatus.RUNNING).values("server_id")
    sent = 0  # (those Redis was down for are the reconcile's: resend_lost)
    for operation in (Operation.objects.filter(server__node=node, status=OperationStatus.QUEUED, job_id="")
                      .exclude(server_id__in=busy).exclude(error__startswith=DELAYED_PREFIX).select_related("server__node").order_by("pk")):
        enqueue(operation)  # outside a transaction: pushed right away, job_id recorded
        sent += 1
    return sent


def resend_receives(node: Node, queue) -> int:
    """Migrations shipped to NODE whose receive job is not in Redis (lost, or Redis was down
    when the source pushed it): queued again (a second delivery finds it claimed)."""
    from ..reconcile import will_run

    sent = 0
    for migration in Migration.objects.filter(target=node, phase=MigrationPhase.SHIPPED):
        if will_run(queue.fetch_job(jobs.receive_job_id(migration.pk))):
            continue
        job = queue.fetch_job(jobs.receive_job_id(migration.pk))
        if job is not None and job.get_status(refresh=False) == JobStatus.FINISHED:
            continue  # it ran and found the migration claimed: its row moves on
        if jobs.push(node, jobs.RECEIVE_FUNCTION, migration.pk, job_id=jobs.receive_job_id(migration.pk)):
            sent += 1
    return sent


def remove_leftovers(node: Node, engine) -> int:
    """What NODE holds that the database places elsewhere, where a migration explains it (see
    the module's docstring). The incoming/ listing is read before the migrations: an active
    migration's row exists before its first byte arrives."""
    removed = 0
    incoming = set(engine.incoming())
    installed = set(engine.names())
    active = {
        m.server.engine_name
        for m in Migration.objects.filter(target=node, phase__in=ACTIVE_PHASES).select_related("server")
    }
    for name in sorted(incoming - active - installed):
        log.warning("node %s: discarding incoming/%s, which no move to this node explains", node.name, name)
        engine.migrate_discard(name)
        removed += 1
    explained = (
        Migration.objects.filter(Q(source=node, phase=MigrationPhase.DONE)
                                 | Q(target=node, phase=MigrationPhase.FAILED))
        .exclude(server__node=node)
        .select_related("server", "server__node")
        .order_by("-pk")
    )
    seen = set()
    for migration in explained:
        server = migration.server
        name = server.engine_name
        if name in seen or name in active or (name not in installed and name not in incoming):
            continue
        seen.add(name)
        if jobs.remove_copy(server, node, engine):
            removed += 1
    return removed
