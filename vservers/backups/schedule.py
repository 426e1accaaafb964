"""The backup schedule: every minute each node's worker queues one pass over the node's
schedules (job id "backup-schedule-<node pk>", vservers.worker.Watch); a pass queues a
backup_create (kind scheduled) for each schedule that is due, unless one of the server's
backups is queued or running, and moves the schedule to its next time. Retention is the
job's: after a scheduled backup succeeded, vservers.backups.jobs.prune deletes the server's
scheduled backups beyond its plan's backups_kept.

Times are UTC: the tenant picks a time of day (and a weekday for a weekly backup) in UTC, and
the form says so."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.db import close_old_connections, transaction
from rq.job import JobStatus

from .. import actions
from ..engine import EngineError
from ..models import Backup, BackupFrequency, BackupSchedule, Node, OperationKind, OperationStatus, State
from ..models.operations import Operation

log = logging.getLogger(__name__)

PASS_FUNCTION = "vservers.backups.schedule.run_pass"
PASS_SECONDS = 60
# The states in which a due backup is taken; in any other the run is skipped (not queued late).
BACKED_UP = (State.RUNNING, State.STOPPED)


def job_id(node_id: int) -> str:
    return f"backup-schedule-{node_id}"


def next_due(schedule: BackupSchedule, after: datetime) -> datetime:
    """The first time strictly after AFTER at which SCHEDULE is due (UTC)."""
    after = after.astimezone(UTC)
    candidate = after.replace(hour=schedule.time.hour, minute=schedule.time.minute, second=0, microsecond=0)
    step = timedelta(days=1)
    if schedule.frequency == BackupFrequency.WEEKLY:
        candidate += timedelta(days=(schedule.weekday - candidate.weekday()) % 7)
        step = timedelta(days=7)
    if candidate <= after:
        candidate += step
    return candidate


def run_pass(node_id: int) -> str:
    """The job: one pass for NODE_ID now."""
    close_old_connections()
    try:
        node = Node.objects.filter(pk=node_id, is_active=True).first()
        if node is None:
            return "node gone or inactive"
        return schedule_pass(node, datetime.now(UTC))
    finally:
        close_old_connections()


def schedule_pass(node: Node, now: datetime) -> str:
    """Queue the backups due at NOW on NODE (see the module's docstring); returns a summary.

    Each schedule moves on with a compare-and-swap on its next_due, so of two passes at once
    (two workers, a pass run twice) only one queues its backup."""
    due = (BackupSchedule.objects.select_related("server__node", "server__tenant", "server__plan")
           .filter(enabled=True, next_due__lte=now, server__node=node).order_by("next_due"))
    queued = skipped = 0
    for schedule in due:
        server = schedule.server
        with transaction.atomic():
            # A schedule another pass holds (or a tenant saving it) is skipped on PostgreSQL
            # instead of waited for: that pass queues it, a saved one is due anew next pass.
            if BackupSchedule.objects.select_for_update(skip_locked=True).filter(pk=schedule.pk).first() is None:
                continue
            moved = BackupSchedule.objects.filter(pk=schedule.pk, next_due=schedule.next_due).update(
                last_queued=now, next_due=next_due(schedule, now))
            if not moved:
                continue
            pending = Operation.objects.filter(server=server, kind=OperationKind.BACKUP_CREATE,
                                               status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING])
            if server.state not in BACKED_UP or server.plan.backups_kept == 0 or pending.exists():
                skipped += 1
                continue
            try:
                actions.request_operation(server, OperationKind.BACKUP_CREATE, None, origin="scheduled")
            except actions.ActionRefused as exc:
                log.info("scheduled backup of %s not queued: %s", server.engine_name, exc)
                skipped += 1
            else:
                queued += 1
    deleted = delete_requested(node)
    return f"{queued} backups queued, {skipped} skipped" + (f", {deleted} deleted" if deleted else "")


def delete_requested(node: Node) -> int:
    """Delete the archives of NODE's backups whose deletion was asked for after their server
    was gone (vservers.backups.actions.delete), then their rows: archive first, so a crash in
    between leaves a row that the next pass deletes again (a missing archive is no error)."""
    from .. import jobs

    marked = list(Backup.objects.filter(node=node, delete_requested__isnull=False))
    for backup in marked:
        try:
            jobs.get_engine().backup_delete(backup.name)
        except EngineError as exc:
            log.warning("backup %s not deleted: %s", backup.name, exc)
            continue
        backup.delete()
    return len(marked)


def queue_pass(queue, node_id: int) -> str:
    """Queue NODE_ID's pass under its fixed id, unless it is queued or running, or ended less
    than half a period ago (as the usage sampler's: passes never overlap or pile up)."""
    from ..reconcile import will_run  # the worker's side: the web process imports this module too

    job = queue.fetch_job(job_id(node_id))
    if job is not None and will_run(job):
        return "waiting" if job.get_status(refresh=False) == JobStatus.QUEUED else "running"
    if job is not None and job.ended_at and (datetime.now(UTC) - job.ended_at).total_seconds() < PASS_SECONDS / 2:
        return "recent"
    queue.enqueue(PASS_FUNCTION, node_id, job_id=job_id(node_id), result_ttl=PASS_SECONDS * 2, failure_ttl=86400)
    return "queued"
