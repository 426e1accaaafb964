"""Virtual servers and their life. The table of transitions is in .transitions; the model
methods here carry them out (begin, complete, fail).

Every transition is a compare-and-swap UPDATE (filter on the old state, act only when
exactly one row changed), so two workers or a worker and a request can never both move the
same server; see healthchecks' Check.ping for the pattern.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class State(models.TextChoices):
    REQUESTED = "requested", "Awaiting approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    PROVISIONING = "provisioning", "Provisioning"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    # Keep and restore (issue 15): a snapshot or backup being put back, a reinstall, and a
    # server running from the rescue system with its own files at /mnt.
    RESTORING = "restoring", "Restoring"
    REINSTALLING = "reinstalling", "Reinstalling"
    RESCUE = "rescue", "In rescue"
    # Issue 16: being moved to another node (cold: stopped, shipped, started there).
    MIGRATING = "migrating", "Moving to another node"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    ERROR = "error", "Error"


TERMINAL = {State.REJECTED, State.DELETED}
# States from which the kernel has (or may have) a server to act on.
ON_NODE = {
    State.STOPPED, State.RUNNING, State.STARTING, State.STOPPING, State.ERROR,
    State.RESTORING, State.REINSTALLING, State.RESCUE, State.MIGRATING,
}


class ServerQuerySet(models.QuerySet):
    def restrict(self, user) -> ServerQuerySet:
        """The one place that scopes servers to a user: operators see all, a tenant member
        the tenant's own, anyone else nothing."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(tenant__memberships__user=user)

    def visible(self) -> ServerQuerySet:
        return self.exclude(state__in=TERMINAL)

    def fingerprint(self, nodes: bool = False) -> tuple:
        """What changes whenever anything a listing of these servers shows changes, from one
        aggregate query: every state and plan change bumps a server's `updated`, every usage
        sample its `sampled_at`, addresses come and go with their ids, servers with the count.
        Not covered: an operator renaming a plan, template or tenant. A node going silent or
        coming back changes how many of them show "unknown" (vservers.nodes.status); with NODES,
        any node's (the dashboard's nodes table), from a subquery of the same query. For ETags
        (the server list's polled rows, the API's server list and details)."""
        from ..nodes.status import silent_nodes, unknown_servers

        extra = {"silent_nodes": models.Max(silent_nodes())} if nodes else {}
        totals = self.order_by().aggregate(
            n_servers=models.Count("pk", distinct=True),
            last_updated=models.Max("updated"),
            last_sampled=models.Max("sampled_at"),
            n_addresses=models.Count("addresses__pk"),
            last_address=models.Max("addresses__pk"),
            n_unknown=models.Count("pk", filter=unknown_servers(), distinct=True),
            **extra,
        )
        return tuple(totals.values())

    def rejected_undismissed(self) -> ServerQuerySet:
        """Requests an operator rejected that the tenant has not dismissed yet: the server
        list shows them with the operator's reason."""
        return self.filter(state=State.REJECTED, dismissed=False)


class VirtualServer(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.PROTECT, related_name="servers")
    name = models.CharField(max_length=40)
    hostname = models.CharField(max_length=253)
    plan = models.ForeignKey("vservers.Plan", on_delete=models.PROTECT, related_name="servers")
    template = models.ForeignKey("vservers.Template", on_delete=models.PROTECT, related_name="servers")
    node = models.ForeignKey("vservers.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="servers")
    state = models.CharField(max_length=20, choices=State.choices, default=State.REQUESTED, db_index=True)
    state_reason = models.CharField(max_length=500, blank=True)
    autostart = models.BooleanField(default=True)
    # A rejected request the tenant has read and dismissed (VirtualServer.dismiss).
    dismissed = models.BooleanField(default=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_plan = models.ForeignKey(
        "vservers.Plan", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="a plan change the tenant asked for, waiting for an operator",
    )
    # Given with the request for root, applied by provisioning and then cleared (jobs.apply_order):
    # a public key, and the password only as a SHA-512 crypt hash (vservers.passwords).
    root_ssh_key = models.TextField(blank=True)
    root_password_hash = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # The last sample of the worker's periodic job.
    cpu_seconds = models.FloatField(default=0)
    memory_bytes = models.BigIntegerField(default=0)
    pids = models.PositiveIntegerField(default=0)
    disk_used_bytes = models.BigIntegerField(default=0)
    sampled_at = models.DateTimeField(null=True, blank=True)

    objects = ServerQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=~models.Q(state__in=["rejected", "deleted"]),
                name="unique_live_server_name_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}" if self.tenant_id else self.name

    @property
    def engine_name(self) -> str:
        """The engine's name: unique on every node, valid for the engine, never reused."""
        return f"vs-{self.uuid.hex[:12]}"

    @property
    def in_progress(self) -> bool:
        from .transitions import IN_PROGRESS

        return self.state in IN_PROGRESS

    def may(self, kind: str) -> bool:
        """Whether an operation of KIND may be asked for in the server's current state."""
        from .transitions import may_ask

        return may_ask(self.state, kind)

    @property
    def is_live(self) -> bool:
        return self.state not in TERMINAL

    def ip_list(self) -> list[str]:
        return [a.address for a in self.addresses.all()]

    # -- transitions ---------------------------------------------------------------------

    def move(self, from_states, to_state: str, reason: str = "") -> bool:
        """Compare-and-swap the state; True if this call made the change."""
        changed = VirtualServer.objects.filter(pk=self.pk, state__in=list(from_states)).update(
            state=to_state, state_reason=reason[:500], updated=timezone.now()
        )
        if changed:
            self.state, self.state_reason = to_state, reason[:500]
        return changed == 1

    def begin(self, kind: str) -> bool:
        """The worker starts an operation of KIND: into its in-progress state, from a state
        it may start from (compare-and-swap); for kinds that leave the state alone, only the
        check. False: the server is in no state to run it."""
        from .transitions import transition

        t = transition(kind)
        if t.busy is None:
            return self.state in t.runs_from
        return self.move(t.runs_from, t.busy)

    def complete(self, kind: str, reason: str = "", back_to: str | None = None) -> bool:
        """The operation of KIND did its work: from its in-progress state into its target, or
        BACK_TO for a kind whose table row has none (a migration ends running or stopped, as
        the server was before)."""
        from .transitions import transition

        t = transition(kind)
        target = t.target or back_to
        if t.busy is None or target is None:
            return True
        return self.move([t.busy], target, reason)

    def approve(self, node) -> bool:
        if not self.move([State.REQUESTED], State.APPROVED):
            return False
        VirtualServer.objects.filter(pk=self.pk).update(node=node)
        self.node = node
        return True

    def reject(self, reason: str) -> bool:
        return self.move([State.REQUESTED], State.REJECTED, reason)

    def dismiss(self) -> bool:
        """The tenant has read the rejection: stop showing it (compare-and-swap, so a double
        click records one dismissal). True if this call dismissed it."""
        changed = VirtualServer.objects.filter(pk=self.pk, state=State.REJECTED, dismissed=False).update(
            dismissed=True, updated=timezone.now()
        )
        if changed:
            self.dismissed = True
        return changed == 1

    def fail(self, reason: str) -> None:
        """Any non-terminal state can end in error; retry or delete start from there."""
        self.move([s for s in State if s not in TERMINAL], State.ERROR, reason)

    def forget_order(self) -> None:
        """Drop root's key and password hash given with the request (a request withdrawn,
        rejected or deleted never gets them applied)."""
        VirtualServer.objects.filter(pk=self.pk).update(root_ssh_key="", root_password_hash="")
        self.root_ssh_key = self.root_password_hash = ""

    def release_addresses(self) -> None:
        self.addresses.all().delete()
