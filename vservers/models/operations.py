"""Operations: every engine action is one row, saved first, then queued on commit; the
worker re-reads it, marks start and end, and saves output or error for the user."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class OperationKind(models.TextChoices):
    PROVISION = "provision", "Provision"
    START = "start", "Start"
    STOP = "stop", "Stop"
    RESTART = "restart", "Restart"
    DELETE = "delete", "Delete"
    CHANGE_PLAN = "change_plan", "Change plan"
    ACCOUNT_ADD = "account_add", "Add account"
    ACCOUNT_DELETE = "account_delete", "Delete account"
    ACCOUNT_PASSWORD = "account_password", "Set password"
    ACCOUNT_KEY = "account_key", "Add SSH key"
    SERVICE_START = "service_start", "Start service"
    SERVICE_STOP = "service_stop", "Stop service"
    SERVICE_RESTART = "service_restart", "Restart service"
    REFRESH = "refresh", "Refresh"
    # Keep and restore (issue 15): vservers.models.keep holds what they make.
    SNAPSHOT_CREATE = "snapshot_create", "Take snapshot"
    SNAPSHOT_RESTORE = "snapshot_restore", "Restore snapshot"
    SNAPSHOT_DELETE = "snapshot_delete", "Delete snapshot"
    BACKUP_CREATE = "backup_create", "Back up"
    BACKUP_RESTORE = "backup_restore", "Restore backup"
    BACKUP_DELETE = "backup_delete", "Delete backup"
    REINSTALL = "reinstall", "Reinstall"
    RESCUE_ENTER = "rescue_enter", "Start in rescue"
    RESCUE_LEAVE = "rescue_leave", "Leave rescue"
    ROOT_PASSWORD = "root_password", "Reset root password"
    # Issue 16: a cold move to another node (vservers.models.moves.Migration holds its phases).
    MIGRATE = "migrate", "Move to another node"


class OperationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


FINISHED = {OperationStatus.SUCCEEDED, OperationStatus.FAILED}
# Parameters that must not outlive the operation (they are wiped when it ends).
SECRET_PARAMS = {"password"}
# The error of a queued operation that could not be handed to the job queue (Redis down): the
# row is the outbox, the worker and the reconciler hand it over once the queue is back.
QUEUE_DELAYED = (
    "queueing delayed: the job queue cannot be reached right now; this operation is saved "
    "and will run as soon as the queue is back"
)
DELAYED_PREFIX = "queueing delayed"
# The error of an operation whose worker died while it ran it (see vservers.reconcile).
INTERRUPTED = (
    "interrupted: the worker stopped (killed or crashed) while it ran this operation; the "
    "server's state was read again from its node. Try again if it is still needed."
)


class OperationQuerySet(models.QuerySet):
    def restrict(self, user) -> OperationQuerySet:
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(server__tenant__memberships__user=user)


class Operation(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=20, choices=OperationKind.choices)
    params = models.JSONField(default=dict, blank=True)
    # The failed operation this one retries (actions.retry_operation), if any.
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=OperationStatus.choices, default=OperationStatus.QUEUED,
                              db_index=True)
    # Empty until the job reached the queue: a queued row without one is still in the outbox.
    job_id = models.CharField(max_length=64, blank=True)
    # Who claimed it: "host:boot id:pid:process start" of the worker process (jobs.runner_id),
    # so that an operation whose worker died can be told from one still running.
    runner = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    output = models.TextField(blank=True)
    # What the user who asked is told: a plain sentence, never a traceback, host path or
    # command. What went wrong in full (the engine's message, the traceback) is in `detail`,
    # which only operators see.
    error = models.TextField(blank=True)
    detail = models.TextField(blank=True)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["server", "-created"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.server}"

    @property
    def subject(self) -> str:
        """The account or service it acts on, if any."""
        return self.params.get("account") or self.params.get("service") or ""

    @property
    def duration(self) -> float | None:
        """Seconds from its start to its end, once it has ended."""
        return (self.finished - self.started).total_seconds() if self.started and self.finished else None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def is_delayed(self) -> bool:
        """Queued, but not handed to the job queue yet (it was unreachable)."""
        return self.status == OperationStatus.QUEUED and self.error.startswith(DELAYED_PREFIX)

    def claim(self, runner: str = "") -> bool:
        """Queued -> running, for exactly one worker (RUNNER: who runs it)."""
        changed = Operation.objects.filter(pk=self.pk, status=OperationStatus.QUEUED).update(
            status=OperationStatus.RUNNING, started=timezone.now(), runner=runner[:200], error=""
        )
        if changed:
            self.status, self.runner, self.error = OperationStatus.RUNNING, runner[:200], ""
        return changed == 1

    def interrupt(self, error: str = INTERRUPTED) -> bool:
        """Running -> failed, for an operation whose worker died (compare-and-swap on the
        status and the runner: a row that moved on meanwhile is left alone)."""
        params = {k: v for k, v in self.params.items() if k not in SECRET_PARAMS}
        changed = Operation.objects.filter(pk=self.pk, status=OperationStatus.RUNNING, runner=self.runner).update(
            status=OperationStatus.FAILED, finished=timezone.now(), error=error[-5000:], params=params
        )
        if changed:
            self.refresh_from_db()
        return changed == 1

    def finish(self, ok: bool, output: str = "", error: str = "", detail: str = "") -> None:
        # The object takes the values written (no re-read: one query less per job).
        values = {
            "status": OperationStatus.SUCCEEDED if ok else OperationStatus.FAILED,
            "finished": timezone.now(),
            "output": output[-20000:],
            "error": error[-5000:],
            "detail": detail[-20000:],
            "params": {k: v for k, v in self.params.items() if k not in SECRET_PARAMS},
        }
        Operation.objects.filter(pk=self.pk).update(**values)
        for field, value in values.items():
            setattr(self, field, value)
