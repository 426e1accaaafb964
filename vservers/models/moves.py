"""Moving a server between nodes (issue 16): one Migration row per MIGRATE operation, with the
phase it reached and which process runs that phase, so that either node's recovery can tell
what a dead worker left behind. The database says where a server lives (server.node); the
commit that changes it is the migration's one point of no return."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class MigrationPhase(models.TextChoices):
    SHIPPING = "shipping", "Copying to the target"  # the source's worker stops and ships
    SHIPPED = "shipped", "Copied; waiting for the target"  # handed to the target's queue
    RECEIVING = "receiving", "Starting on the target"  # the target's worker adopts and starts
    DONE = "done", "Done"  # server.node is the target; the source's copy is removed
    FAILED = "failed", "Failed"  # the server stays on the source; the target's copy is removed


ACTIVE_PHASES = (MigrationPhase.SHIPPING, MigrationPhase.SHIPPED, MigrationPhase.RECEIVING)


class Migration(models.Model):
    operation = models.OneToOneField("vservers.Operation", on_delete=models.CASCADE, related_name="migration")
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="migrations")
    source = models.ForeignKey("vservers.Node", on_delete=models.PROTECT, related_name="migrations_out")
    target = models.ForeignKey("vservers.Node", on_delete=models.PROTECT, related_name="migrations_in")
    phase = models.CharField(max_length=12, choices=MigrationPhase.choices, default=MigrationPhase.SHIPPING)
    # The process running the current phase (vservers.jobs.runner_id), on the source while
    # shipping and on the target while receiving.
    runner = models.CharField(max_length=200, blank=True)
    was_running = models.BooleanField(default=False)  # started again on the target if so
    # Whether the server takes new addresses from the target's pools (different layer-2
    # networks) or keeps its own (a pool shared with the target).
    readdress = models.BooleanField(default=True)
    old_addresses = models.JSONField(default=list, blank=True)
    new_addresses = models.JSONField(default=list, blank=True)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["server"], condition=Q(phase__in=["shipping", "shipped", "receiving"]),
                name="one_active_migration_per_server",
            ),
        ]

    def __str__(self) -> str:
        return f"move of {self.server_id} from {self.source_id} to {self.target_id} ({self.phase})"
