"""What every page's operator navigation needs: how many decisions wait (the Approvals link)."""

from __future__ import annotations

from django.db.models import Count, Q
from django.utils.functional import cached_property


class Waiting:
    """Server requests and plan changes waiting for an operator, counted with one aggregate
    query, and only when a template reads a count."""

    @cached_property
    def counts(self) -> dict[str, int]:
        from vservers.models import TERMINAL, State, VirtualServer

        return VirtualServer.objects.aggregate(
            requests=Count("pk", filter=Q(state=State.REQUESTED)),
            plan_changes=Count("pk", filter=Q(requested_plan__isnull=False) & ~Q(state__in=list(TERMINAL))),
        )

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    @property
    def plan_changes(self) -> int:
        return self.counts["plan_changes"]

    @property
    def total(self) -> int:
        return self.requests + self.plan_changes


def approvals(request) -> dict:
    """`approvals_waiting` for staff users; nothing (and no query) for anyone else."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return {}
    return {"approvals_waiting": Waiting()}
