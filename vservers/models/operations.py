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


class OperationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


FINISHED = {OperationStatus.SUCCEEDED, OperationStatus.FAILED}
# Parameters that must not outlive the operation (they are wiped when it ends).
SECRET_PARAMS = {"password"}


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
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=OperationStatus.choices, default=OperationStatus.QUEUED,
                              db_index=True)
    job_id = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["server", "-created"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.server}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def claim(self) -> bool:
        """Queued -> running, for exactly one worker."""
        changed = Operation.objects.filter(pk=self.pk, status=OperationStatus.QUEUED).update(
            status=OperationStatus.RUNNING, started=timezone.now()
        )
        if changed:
            self.status = OperationStatus.RUNNING
        return changed == 1

    def finish(self, ok: bool, output: str = "", error: str = "") -> None:
        params = {k: v for k, v in self.params.items() if k not in SECRET_PARAMS}
        Operation.objects.filter(pk=self.pk).update(
            status=OperationStatus.SUCCEEDED if ok else OperationStatus.FAILED,
            finished=timezone.now(),
            output=output[-20000:],
            error=error[-5000:],
            params=params,
        )
        self.refresh_from_db()
