"""Backups: a tenant's (those of deleted servers too), a server's, backing up now, restoring
into the same server or a new one, deleting, the schedule, and the streamed download.

Found through vservers.backups.actions.get_backup and vservers.access, as on the pages:
another tenant's backup or server is 404, a read-only member's write 403. Every change is a
call of vservers.backups.actions (operations: 202 with the operation)."""

from __future__ import annotations

from datetime import time

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.models import AuditEntry
from vservers import access
from vservers import actions as server_actions
from vservers.backups import actions, downloads
from vservers.backups.forms import RestoreNewForm, ScheduleForm
from vservers.models import Backup, BackupFrequency, BackupSchedule

from ..errors import ErrorSerializer
from ..serializers import OperationSerializer, by_name, run_form
from .base import ApiView, PageQuery, queued


class BackupSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField(help_text="the archive's file name on its node")
    server = serializers.SerializerMethodField(help_text="the server it was taken of; null once that is deleted")
    server_name = serializers.CharField()
    node = serializers.CharField(source="node.name")
    kind = serializers.CharField(help_text="manual or scheduled")
    created = serializers.DateTimeField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    template = serializers.SerializerMethodField()
    template_version = serializers.SerializerMethodField()
    remote_copied = serializers.DateTimeField(allow_null=True)

    def get_server(self, backup: Backup) -> str | None:
        server = backup.server
        return str(server.uuid) if server is not None and server.is_live else None

    def get_template(self, backup: Backup) -> str:
        return str(backup.manifest.get("template", ""))

    def get_template_version(self, backup: Backup) -> str:
        return str(backup.manifest.get("template_version", ""))


class TimeOfDay(serializers.RegexField):
    """A time of day as "HH:MM" both ways (OpenAPI's "time" format wants a UTC offset too,
    which a schedule in UTC does not need)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", **kwargs)

    def to_representation(self, value) -> str:
        return value.strftime("%H:%M") if hasattr(value, "strftime") else str(value)


class ScheduleSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    frequency = serializers.ChoiceField(choices=BackupFrequency.choices)
    weekday = serializers.IntegerField(min_value=0, max_value=6, required=False, default=0,
                                       help_text="weekly only: 0 Monday .. 6 Sunday")
    time = TimeOfDay(help_text="the time of day, HH:MM, in UTC")
    next_due = serializers.DateTimeField(read_only=True, allow_null=True)
    backups_kept = serializers.SerializerMethodField(help_text="scheduled backups the server's plan keeps")

    def get_backups_kept(self, schedule: BackupSchedule) -> int:
        return schedule.server.plan.backups_kept


class NewServerInput(serializers.Serializer):
    name = serializers.CharField(max_length=32)
    hostname = serializers.CharField(max_length=253)
    plan = serializers.CharField(max_length=40, help_text="a plan's name")


class BackupListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: BackupSerializer(many=True)})
    def get(self, request):
        """Every backup this user sees (a tenant's, also of servers deleted since; operators:
        every tenant's), newest first."""
        self.filters(PageQuery)
        return self.paged(actions.backups_for(request.user).order_by("-created", "-pk"), BackupSerializer)


class BackupDetailView(ApiView):
    @extend_schema(responses={200: BackupSerializer, 404: ErrorSerializer})
    def get(self, request, uuid):
        """One backup."""
        return Response(BackupSerializer(actions.get_backup(request.user, uuid)).data)


class ServerBackupsView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: BackupSerializer(many=True)})
    def get(self, request, uuid):
        """This server's backups, newest first."""
        self.filters(PageQuery)
        server = access.get_server(request.user, uuid)
        return self.paged(actions.server_backups(server).order_by("-created", "-pk"), BackupSerializer)

    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Back the server up now: 202 with the operation (its output shows the progress)."""
        server = access.get_server(request.user, uuid, act=True)
        return queued(request, actions.backup_now(server, request.user, request=request))


class BackupRestoreView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer, 409: ErrorSerializer})
    def post(self, request, uuid):
        """Put the backup back into the server it was taken of: stopped, its files replaced,
        started. 409 when that server is deleted (make a new server from it) or busy."""
        backup = actions.get_backup(request.user, uuid, act=True)
        return queued(request, actions.restore(backup, request.user, request=request))


class BackupNewServerView(ApiView):
    @extend_schema(request=NewServerInput, responses={201: OpenApiResponse(description="the requested server")})
    def post(self, request, uuid):
        """Request a new server made from the backup (its system, the plan given, a new
        address): an operator approves it on the backup's node; then the backup is restored
        into it."""
        backup = actions.get_backup(request.user, uuid, act=True)
        given = NewServerInput(data=request.data)
        given.is_valid(raise_exception=True)
        data = run_form(by_name(RestoreNewForm(data=given.validated_data, backup=backup), plan="name"))
        try:
            server = actions.request_from_backup(backup, request.user, name=data["name"],
                                                 hostname=data["hostname"], plan=data["plan"], request=request)
        except server_actions.NameTaken as exc:
            raise serializers.ValidationError({"name": [str(exc)]}) from None
        return Response({"uuid": str(server.uuid), "name": server.name, "state": server.state},
                        status=status.HTTP_201_CREATED, headers={"Location": f"/api/v1/servers/{server.uuid}/"})


class BackupDeleteView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer, 204: None})
    def post(self, request, uuid):
        """Delete the backup (its archive on the node, then its row): 202 with the operation
        of its server; 204 for a backup whose server is deleted (its node deletes it within a
        minute; it is no longer listed)."""
        backup = actions.get_backup(request.user, uuid, act=True)
        operation = actions.delete(backup, request.user, request=request)
        if operation is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return queued(request, operation)


class BackupDownloadView(ApiView):
    @extend_schema(request=None, responses={
        (200, "application/zstd"): OpenApiResponse(description="the archive (tar, zstd), streamed"),
        503: ErrorSerializer})
    def post(self, request, uuid):
        """The archive, streamed (a POST: each download spends a single-use ticket on the
        node and is audited)."""
        backup = actions.get_backup(request.user, uuid, act=True)
        ticket = downloads.issue(backup, request.user)
        AuditEntry.record(request, "backup.download", backup, server=backup.server_name, name=backup.name)
        try:
            fd, size = downloads.fetch(ticket, request.user.pk or 0)
        except downloads.DownloadRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return downloads.response(request, fd, size, downloads.file_name(backup))


class ScheduleView(ApiView):
    @extend_schema(responses={200: ScheduleSerializer})
    def get(self, request, uuid):
        """The server's backup schedule (times in UTC)."""
        server = access.get_server(request.user, uuid)
        schedule = BackupSchedule.objects.filter(server=server).first() or BackupSchedule(
            server=server, enabled=False, time=time(3, 0))
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(request=ScheduleSerializer, responses={200: ScheduleSerializer})
    def put(self, request, uuid):
        """Set the schedule: daily or weekly (a weekday), at a time of day in UTC."""
        server = access.get_server(request.user, uuid, act=True)
        given = ScheduleSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = dict(given.validated_data)
        cleaned = run_form(ScheduleForm(data=data, server=server))
        schedule = actions.save_schedule(server, cleaned, request=request)
        return Response(ScheduleSerializer(schedule).data)
