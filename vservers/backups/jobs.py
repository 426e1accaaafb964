"""The worker's handlers for backup_create, backup_restore and backup_delete (registered in
vservers.jobs.HANDLERS), run like every operation by vservers.jobs.run_claimed.

 - backup_create: the engine archives the server's own files (running or stopped; its state
   does not move) and reports progress, which goes to the operation's output about once a
   second; then the Backup row, the copy to the second destination (a failure there is a note,
   not a failed backup), and for a scheduled one the pruning of the server's scheduled backups
   beyond its plan's backups_kept.
 - backup_restore: into the server it came from, or into a new, approved one (the engine
   creates it first from the manifest's template and version, with the approved plan's limits
   and the addresses given at approval); the engine verifies the archive before it touches
   the server, stops it, puts the files back and starts it.
 - backup_delete: the archive, then the row.

Every step is safe to run again after a crash: the row of a backup is written once the
archive is complete (a kill before leaves no row; the engine removes its partial file),
create and restore are idempotent in the engine, and a delete of a missing archive succeeds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..engine import EngineError, NotFound
from ..engine import templates as engine_templates
from ..models import Backup, BackupKind, Operation, OperationKind, OperationStatus, VirtualServer
from ..models.keep import BackupRestoreRequest

if TYPE_CHECKING:
    from ..jobs import Run

# A template version as the engine names them (templates.new_version): checked before it
# becomes part of a path on the node.
VERSION = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")
# The most often progress is written to the operation's row (seconds between two writes).
PROGRESS_EVERY = 1.0


class ProgressWriter:
    """The engine's progress(done, total) callback: "WHAT: 42 % (12.3 of 29.1 MB)" as the
    running operation's output, at most every PROGRESS_EVERY seconds and once at the end. The
    server's `updated` moves with it, so that its live page (vservers.views.live) shows it;
    the output is replaced by the operation's own lines when it ends."""

    def __init__(self, run: Run, what: str) -> None:
        self.operation_pk = run.operation.pk
        self.server_pk = run.server.pk
        self.what = what
        self.last = 0.0
        self.writes = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        if now - self.last < PROGRESS_EVERY and not finished:
            return
        self.last = now
        self.writes += 1
        percent = min(100, done * 100 // total) if total > 0 else 0
        text = f"{self.what}: {percent} % ({done / 2**20:.1f} of {total / 2**20:.1f} MB)"
        Operation.objects.filter(pk=self.operation_pk, status=OperationStatus.RUNNING).update(output=text)
        VirtualServer.objects.filter(pk=self.server_pk).update(updated=timezone.now())


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def create(run: Run) -> None:
    core._begin(run)
    server = run.server
    run.checkpoint("before-engine")
    info = run.engine.backup_create(run.name, progress=ProgressWriter(run, "Backing up"))
    run.checkpoint("after-engine")
    kind = BackupKind.SCHEDULED if run.operation.params.get("origin") == "scheduled" else BackupKind.MANUAL
    backup, _ = Backup.objects.update_or_create(
        node=server.node, name=info.name,
        defaults={
            "tenant_id": server.tenant_id, "server": server, "server_name": server.name, "kind": kind,
            "created_by": run.operation.requested_by, "size_bytes": info.size_bytes, "sha256": info.sha256,
            "manifest": info.manifest,
        },
    )
    files = info.manifest.get("files")
    run.note(f"Backed up {server.name} to {info.name}: {_megabytes(info.size_bytes)} compressed"
             + (f", {files} files" if isinstance(files, int) else "") + f", sha256 {info.sha256}.")
    push_remote(run, backup)
    if kind == BackupKind.SCHEDULED:
        prune(run, server)


def push_remote(run: Run, backup: Backup) -> None:
    """The copy to the second destination (settings.PANEL_BACKUP_REMOTE), if one is set. A
    failure is a note on the operation, not a failed backup: the archive on the node is whole."""
    destination = settings.PANEL_BACKUP_REMOTE
    if not destination:
        return
    try:
        run.engine.backup_push(backup.name, destination)
    except EngineError as exc:
        run.note(f"Not copied to the second destination: {exc}")
        return
    Backup.objects.filter(pk=backup.pk).update(remote_copied=timezone.now())
    run.note("Copied to the second destination.")


def prune(run: Run, server: VirtualServer) -> list[str]:
    """Delete SERVER's scheduled backups beyond its plan's backups_kept, oldest first (manual
    ones are never pruned). Archive first, then the row: a crash in between leaves a row whose
    archive is gone, which the next pruning deletes again (a missing archive is no error)."""
    kept = server.plan.backups_kept
    old = list(Backup.objects.filter(server=server, kind=BackupKind.SCHEDULED).order_by("-created", "-pk")[kept:])
    pruned = []
    for backup in old:
        run.engine.backup_delete(backup.name)
        backup.delete()
        pruned.append(backup.name)
    if pruned:
        run.note(f"Pruned {len(pruned)} scheduled backup{'s' if len(pruned) != 1 else ''} beyond the plan's "
                 f"{kept}: {', '.join(pruned)}.")
    return pruned


def _backup_of(run: Run) -> Backup:
    backup = Backup.objects.select_related("node").filter(uuid=run.param("backup")).first()
    if backup is None:
        raise core.Refused("the backup does not exist any more")
    if backup.tenant_id != run.server.tenant_id:
        raise core.Refused("the backup belongs to another customer")  # actions never ask for it
    if backup.node_id != run.server.node_id:
        raise core.Refused(f"the backup is kept on node {backup.node.name}, the server runs on another node")
    return backup


def _ensure_created_from(run: Run, backup: Backup) -> None:
    """A new server (approved from a backup) is created on the node first, as the manifest
    says: its template and template version (refused clearly if that version is not built on
    this node any more), the approved plan's limits, the addresses given at approval."""
    try:
        run.engine.spec(run.name)
        return
    except NotFound:
        pass
    template = str(backup.manifest.get("template") or run.server.template.name)
    version = backup.manifest.get("template_version")
    if version is not None and not (isinstance(version, str) and VERSION.fullmatch(version)):
        raise core.Refused("the backup's manifest names no valid template version")
    try:
        engine_templates.get(run.engine.config, template, str(version) if version else None)
    except NotFound:
        raise core.Refused(
            f"the backup was taken of a server made from template {template} version {version}, which is not "
            "built on this node any more; restore it into a server made from the same version"
        ) from None
    addresses = [a.with_prefix for a in run.server.addresses.select_related("pool")]
    if not addresses:
        addresses = [core._allocate(run.server).with_prefix]
    run.engine.create(run.name, template, addresses, core.plan_limits(run.server.plan),
                      hostname=run.server.hostname, autostart=run.server.autostart,
                      template_version=str(version) if version else None)
    run.note(f"Created {run.name} from template {template} version {version} with plan {run.server.plan.name} "
             f"at {', '.join(addresses)}.")


def restore(run: Run) -> None:
    backup = _backup_of(run)
    core._begin(run)
    run.checkpoint("before-engine")
    _ensure_created_from(run, backup)
    run.checkpoint("created")
    if core.init_watch is not None:
        core.init_watch.discard(run.name)  # the engine stops the server itself: not a crash
    status = run.engine.backup_restore(backup.name, run.name, progress=ProgressWriter(run, "Restoring"))
    if status.state != "running":
        status = run.engine.start(run.name)
    run.watch_init(status)
    run.checkpoint("after-engine")
    with transaction.atomic():
        run.server.complete(run.operation.kind)
        BackupRestoreRequest.objects.filter(server=run.server).delete()
    run.note(f"Restored {backup.name} (taken of {backup.server_name} on {backup.created:%Y-%m-%d %H:%M} UTC) "
             f"into {run.server.name}; started it (init pid {status.init_pid}).")
    core._refresh_best_effort(run)


def delete(run: Run) -> None:
    core._begin(run)
    backup = Backup.objects.filter(uuid=run.param("backup"), tenant_id=run.server.tenant_id).first()
    if backup is None:
        run.note("The backup was deleted already.")
        return
    run.checkpoint("before-engine")
    run.engine.backup_delete(backup.name)
    run.checkpoint("after-engine")
    backup.delete()
    run.note(f"Deleted backup {backup.name} of {backup.server_name}.")


FAILED_SENTENCES: dict[str, str] = {
    OperationKind.BACKUP_CREATE: "The backup could not be made; the previous backups are kept",
    OperationKind.BACKUP_RESTORE: "The backup could not be restored",
    OperationKind.BACKUP_DELETE: "The backup could not be deleted",
}

HANDLERS: dict[str, Callable[[Run], None]] = {
    OperationKind.BACKUP_CREATE: create,
    OperationKind.BACKUP_RESTORE: restore,
    OperationKind.BACKUP_DELETE: delete,
}

# Last: vservers.jobs imports this module at its end for HANDLERS, and this one uses its helpers
# (Run, Refused, _begin...) only when a handler runs, so either may be imported first.
from .. import jobs as core  # noqa: E402
