"""Keep and restore: a server's snapshots, its backups and their schedule.

The node is the truth for what exists: a snapshot is a copy of the server's own disk image
under its engine directory, a backup an archive in the node's backup directory. These rows
remember what the panel made and let pages list, authorize and count them without asking
the node; the jobs write them once the engine has done its part, and remove them with it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Snapshot(models.Model):
    """A point-in-time copy of one server's own files, on the server's node."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="snapshots")
    # The engine's name for it (vservers.engine.validate rules), unique per server.
    name = models.CharField(max_length=40)
    label = models.CharField(max_length=100, blank=True, help_text="what the tenant noted about it")
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Space it takes on the node (allocated blocks, not the image's apparent size): what
    # counts against the tenant's disk.
    size_bytes = models.BigIntegerField(default=0)
    # What taking it cost the running server: how long its processes were frozen, and the copy.
    freeze_ms = models.FloatField(null=True, blank=True)
    copy_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["server", "-created"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="unique_snapshot_name_per_server")]

    def __str__(self) -> str:
        return f"{self.server} @ {self.name}"


class BackupKind(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"


class Backup(models.Model):
    """A compressed archive of a server's own files and configuration, in the backup
    directory of a node. It belongs to the tenant and outlives the server it came from, so
    a deleted server can be restored into a new one."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="backups")
    server = models.ForeignKey(
        "vservers.VirtualServer", null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    # The server's names when it was taken, kept for a backup whose server is gone.
    server_name = models.CharField(max_length=40)
    node = models.ForeignKey("vservers.Node", on_delete=models.PROTECT, related_name="backups")
    # The archive's file name in the node's backup directory (engine rules, no path).
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=BackupKind.choices, default=BackupKind.MANUAL)
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    # The archive's manifest as the engine wrote it (template and version, limits,
    # addresses, sizes); shown to users only through fields the views pick.
    manifest = models.JSONField(default=dict, blank=True)
    # Copied to the second destination (settings: PANEL_BACKUP_REMOTE) and when.
    remote_copied = models.DateTimeField(null=True, blank=True)
    # Asked to be deleted when its server was gone (no operation can run on a deleted server):
    # the node's next schedule pass deletes the archive, then the row (vservers.backups.schedule).
    delete_requested = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["node", "name"], name="unique_backup_name_per_node")]

    def __str__(self) -> str:
        return f"{self.server_name} backup {self.name}"


class BackupFrequency(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"


class BackupSchedule(models.Model):
    """When a server is backed up by itself; retention is the plan's backups_kept."""

    server = models.OneToOneField("vservers.VirtualServer", on_delete=models.CASCADE, related_name="backup_schedule")
    enabled = models.BooleanField(default=True)
    frequency = models.CharField(max_length=10, choices=BackupFrequency.choices, default=BackupFrequency.DAILY)
    # Weekly only: 0 Monday .. 6 Sunday.
    weekday = models.PositiveSmallIntegerField(default=0)
    # The time of day in UTC the tenant picked.
    time = models.TimeField()
    # The last run the scheduler queued (whatever its outcome), and the next one due.
    last_queued = models.DateTimeField(null=True, blank=True)
    next_due = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.server} {self.frequency} at {self.time:%H:%M} UTC"


class BackupRestoreRequest(models.Model):
    """A requested server that is to be made from a backup: approval queues a backup_restore
    for it instead of a provisioning (vservers.backups.actions.first_operation)."""

    server = models.OneToOneField("vservers.VirtualServer", on_delete=models.CASCADE, related_name="restore_request")
    backup = models.ForeignKey(Backup, on_delete=models.CASCADE, related_name="restore_requests")

    def __str__(self) -> str:
        return f"{self.server} from {self.backup}"


class BackupDownload(models.Model):
    """A download of a backup: its single-use ticket (kept as its SHA-256, as a console's),
    which the node's broker redeems before it hands the web process the open archive, and the
    record of who downloaded what, when."""

    backup = models.ForeignKey(Backup, null=True, on_delete=models.SET_NULL, related_name="downloads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    ticket_hash = models.CharField(max_length=64, unique=True)
    issued = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()
    # Set by the broker when it redeems the ticket: a ticket with one is spent.
    redeemed = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued"]

    def __str__(self) -> str:
        return f"download of {self.backup} by {self.user}"
