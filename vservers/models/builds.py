"""Template builds: the operator's "Build" of a template runs on each node's worker, as an
operation does, but it belongs to a template and a node, not to a server (an Operation's
every reader, its state machine and its tenant scoping assume a server). And what each node's
worker last found built of each template, which the Templates page reads: the web process
never looks at the engine's files."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .operations import OperationStatus

BUILD_PENDING = (OperationStatus.QUEUED, OperationStatus.RUNNING)


class TemplateBuild(models.Model):
    """One build of TEMPLATE on NODE: the row first, queued on commit, claimed by one worker
    with a compare-and-swap, its outcome (output, the user's sentence, the operator's detail)
    on the row. At most one is queued or running per template and node: the partial unique
    constraint is the backstop of actions.build_template's check."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    template = models.ForeignKey("vservers.Template", on_delete=models.CASCADE, related_name="builds")
    node = models.ForeignKey("vservers.Node", on_delete=models.CASCADE, related_name="template_builds")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=OperationStatus.choices, default=OperationStatus.QUEUED)
    job_id = models.CharField(max_length=64, blank=True)
    runner = models.CharField(max_length=200, blank=True)  # as Operation.runner
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["template", "node"], condition=Q(status__in=["queued", "running"]),
                name="one_pending_build_per_template_and_node",
            ),
        ]

    def __str__(self) -> str:
        return f"build of {self.template.name} on {self.node.name}"

    @property
    def is_pending(self) -> bool:
        return self.status in BUILD_PENDING

    def claim(self, runner: str) -> bool:
        """Queued -> running, for exactly one worker."""
        changed = TemplateBuild.objects.filter(pk=self.pk, status=OperationStatus.QUEUED).update(
            status=OperationStatus.RUNNING, started=timezone.now(), runner=runner[:200]
        )
        return changed == 1

    def finish(self, ok: bool, output: str = "", error: str = "", detail: str = "") -> None:
        TemplateBuild.objects.filter(pk=self.pk).update(
            status=OperationStatus.SUCCEEDED if ok else OperationStatus.FAILED, finished=timezone.now(),
            output=output[-20000:], error=error[-5000:], detail=detail[-20000:],
        )
        self.refresh_from_db()


class BuiltTemplate(models.Model):
    """The current version of TEMPLATE that NODE's worker found built, as it last looked (after
    each build, and in each reconcile run). No row: not built there."""

    template = models.ForeignKey("vservers.Template", on_delete=models.CASCADE, related_name="built")
    node = models.ForeignKey("vservers.Node", on_delete=models.CASCADE, related_name="built_templates")
    version = models.CharField(max_length=64)
    built_at = models.DateTimeField(null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    checked = models.DateTimeField()

    class Meta:
        ordering = ["node__name"]
        constraints = [models.UniqueConstraint(fields=["template", "node"], name="one_built_row_per_template_and_node")]
