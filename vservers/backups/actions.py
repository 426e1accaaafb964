"""What users ask of backups, for the pages and the REST API alike. Every one goes through
vservers.actions.request_operation (the transitions table, the server's lock, the tenant's
cap on pending operations, the audit entry); the worker does the work (vservers.backups.jobs).

Who sees which backups is decided here, in one place (backups_for, get_backup), with the rules
of vservers.access: operators every backup, a tenant's members their tenant's (also those of
servers deleted since), read-only members only look; anyone else's backup is "not found"."""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404

from accounts.models import AuditEntry

from .. import access, actions
from ..models import Backup, BackupSchedule, Node, Operation, OperationKind, Plan, State, Template, VirtualServer
from ..models.keep import BackupRestoreRequest
from .schedule import next_due


def backups_for(user) -> QuerySet[Backup]:
    """The backups USER may see: operators all, a tenant's members their tenant's."""
    backups = Backup.objects.select_related("server", "node", "tenant").filter(delete_requested__isnull=True)
    if access.is_operator(user):
        return backups
    member = access.membership(user)
    if member is None:
        return backups.none()
    return backups.filter(tenant_id=member.tenant_id)


def get_backup(user, uuid, *, act: bool = False) -> Backup:
    """USER's backup with this UUID, or 404 (also another tenant's); with ACT, 403 for
    read-only members after that check."""
    backup = backups_for(user).filter(uuid=uuid).first()
    if backup is None:
        raise Http404("no such backup")
    if act:
        access.require_act(user)
    return backup


def server_backups(server: VirtualServer) -> QuerySet[Backup]:
    return Backup.objects.filter(server=server, delete_requested__isnull=True).select_related("node")


def backup_now(server: VirtualServer, user, request=None) -> Operation:
    return actions.request_operation(server, OperationKind.BACKUP_CREATE, user, request=request)


def restore(backup: Backup, user, request=None) -> Operation:
    """Put BACKUP back into the server it was taken of (stopped, its files replaced, started)."""
    server = backup.server
    if server is None or not server.is_live:
        raise actions.ActionRefused("its server was deleted; restore it into a new server instead")
    return actions.request_operation(server, OperationKind.BACKUP_RESTORE, user, request=request,
                                     backup=str(backup.uuid))


def delete(backup: Backup, user, request=None) -> Operation | None:
    """Delete BACKUP's archive on its node, then its row: an operation of its server while
    that lives; for a backup whose server is gone (nothing runs on a deleted server, see the
    transitions table) a mark that the node's next schedule pass acts on, within a minute.
    Returns the operation, or None for a mark."""
    server = backup.server
    if server is not None and server.is_live and server.node_id == backup.node_id:
        return actions.request_operation(server, OperationKind.BACKUP_DELETE, user, request=request,
                                         backup=str(backup.uuid))
    from django.utils import timezone

    with transaction.atomic():
        Backup.objects.filter(pk=backup.pk, delete_requested__isnull=True).update(delete_requested=timezone.now())
        if request is not None:
            AuditEntry.record(request, "backup.delete", backup, server=backup.server_name, name=backup.name)
    return None


def save_schedule(server: VirtualServer, data: dict, request=None) -> BackupSchedule:
    """Set SERVER's schedule from a ScheduleForm's cleaned DATA; its next run follows."""
    from django.utils import timezone

    with transaction.atomic():
        schedule = BackupSchedule.objects.select_for_update().filter(server=server).first()
        if schedule is None:
            schedule = BackupSchedule(server=server, time=data["time"])
        schedule.enabled = data["enabled"]
        schedule.frequency = data["frequency"]
        schedule.weekday = data.get("weekday") or 0
        schedule.time = data["time"]
        schedule.next_due = next_due(schedule, timezone.now()) if schedule.enabled else None
        schedule.save()
        if request is not None:
            AuditEntry.record(request, "server.backup_schedule", server, enabled=schedule.enabled,
                              frequency=schedule.frequency, weekday=schedule.weekday,
                              time=f"{schedule.time:%H:%M}")
    return schedule


def template_of(backup: Backup) -> Template:
    """The panel's template the backup's server was made from (its manifest says)."""
    name = backup.manifest.get("template") or (backup.server.template.name if backup.server else "")
    template = Template.objects.filter(name=name).first()
    if template is None:
        raise actions.ActionRefused(f"the template {name or '?'} this backup was taken on is not offered any more")
    return template


def request_from_backup(backup: Backup, user, *, name: str, hostname: str, plan: Plan,
                        request=None) -> VirtualServer:
    """A new server made from BACKUP: requested as any other (quota, name; an operator
    approves it on the backup's node and gives it a new address), with the backup remembered
    so that approval queues its restore instead of a provisioning."""
    template = template_of(backup)
    with transaction.atomic():
        server = actions.request_server(backup.tenant, user, name=name, hostname=hostname, plan=plan,
                                        template=template, request=request)
        BackupRestoreRequest.objects.create(server=server, backup=backup)
        if request is not None:
            AuditEntry.record(request, "server.request_from_backup", server, backup=str(backup.uuid),
                              backup_name=backup.name)
    return server


def approval_node(server: VirtualServer) -> Node | None:
    """The node a server requested from a backup goes on: the backup's (its archive is there)."""
    order = BackupRestoreRequest.objects.select_related("backup__node").filter(server=server).first()
    return order.backup.node if order is not None else None


def first_operation(server: VirtualServer, node: Node) -> tuple[str, dict]:
    """What approval queues for SERVER on NODE: its provisioning, or for a server requested
    from a backup the restore of that backup (refused on a node that does not keep it)."""
    order = BackupRestoreRequest.objects.select_related("backup__node").filter(server=server).first()
    if order is None:
        return OperationKind.PROVISION, {}
    if order.backup.node_id != node.pk:
        raise actions.ActionRefused(
            f"this server is made from a backup kept on node {order.backup.node.name}: approve it on that node")
    return OperationKind.BACKUP_RESTORE, {"backup": str(order.backup.uuid)}


def restore_pending(server: VirtualServer) -> bool:
    return server.state in (State.REQUESTED, State.APPROVED) and BackupRestoreRequest.objects.filter(
        server=server).exists()

