"""What the plans of a node's live servers add up to, against what the node has and what its
overcommit ratios allow: one place for the nodes page, the dashboard and the approval row.

A node at 200 % CPU is not an error: CPU time is shared by the cgroups, and a ratio of 4
allows it. So the percentage is never capped; above 100 % the node is overcommitted (shown
as such), above physical × ratio it is over its limit (an approval warns; the operator
decides, nothing is refused here).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Q, Sum

from .formatting import number
from .models import TERMINAL, Node, Plan, State

LIVE_STATES = [s for s in State if s not in TERMINAL]


@dataclass(frozen=True)
class Allocation:
    """One resource of a node: what is allocated of what it physically has."""

    resource: str  # as a person reads it after the figures: "CPUs", "MB memory", "MB disk"
    allocated: Decimal
    physical: Decimal
    ratio: Decimal

    @property
    def limit(self) -> Decimal:
        return self.physical * self.ratio

    @property
    def percent(self) -> int:
        """Of the physical capacity, uncapped (a node with none allocates nothing: 0)."""
        return round(100 * self.allocated / self.physical) if self.physical else 0

    @property
    def bar(self) -> int:
        """How much of a meter's bar to fill: the percentage up to a full bar."""
        return min(100, self.percent)

    @property
    def overcommitted(self) -> bool:
        return self.allocated > self.physical

    @property
    def over_limit(self) -> bool:
        return self.allocated > self.limit

    @property
    def level(self) -> str:
        """ "danger" over the ratio's limit, "warn" when overcommitted within it, else ""."""
        return "danger" if self.over_limit else "warn" if self.overcommitted else ""

    @property
    def figures(self) -> str:
        return f"{number(self.allocated)} / {number(self.physical)} {self.resource}"

    @property
    def text(self) -> str:
        """ "4 / 2 CPUs · 200 %"."""
        return f"{self.figures} · {self.percent} %"

    @property
    def ratio_text(self) -> str:
        return f"{number(self.ratio)}×"

    def plus(self, amount: Decimal) -> Allocation:
        return Allocation(self.resource, self.allocated + amount, self.physical, self.ratio)


@dataclass(frozen=True)
class NodeCapacity:
    """A node with what its live servers' plans add up to."""

    node: Node
    server_count: int
    cpus: Decimal
    memory_mb: int
    disk_mb: int

    def allocations(self, adding: Amounts | None = None) -> list[Allocation]:
        """CPUs, memory and disk, with ADDING added if given (what approving a server or a
        plan change on it would make them)."""
        node = self.node
        found = [
            Allocation("CPUs", Decimal(self.cpus), Decimal(node.cpus), Decimal(node.cpu_ratio)),
            Allocation("MB memory", Decimal(self.memory_mb), Decimal(node.memory_mb), Decimal(node.memory_ratio)),
            Allocation("MB disk", Decimal(self.disk_mb), Decimal(node.disk_mb), Decimal(node.disk_ratio)),
        ]
        if adding is None:
            return found
        return [a.plus(amount) for a, amount in zip(found, adding, strict=True)]

    @property
    def cpu(self) -> Allocation:
        return self.allocations()[0]

    @property
    def memory(self) -> Allocation:
        return self.allocations()[1]

    @property
    def disk(self) -> Allocation:
        return self.allocations()[2]

    def warnings(self, adding: Amounts, lead: str = "Approving puts") -> list[str]:
        """Why adding ADDING here (plan_amounts) passes a ratio, empty when it does not:
        "Approving puts local at 5 / 2 CPUs, above its 2× limit". Only resources that grow:
        a node already past a limit that this approval does not add to says so on the nodes
        page, not in every approval."""
        return [
            f"{lead} {self.node.name} at {after.figures}, above its {after.ratio_text} limit"
            for before, after in zip(self.allocations(), self.allocations(adding), strict=True)
            if after.over_limit and after.allocated > before.allocated
        ]


# What a server adds to a node: CPUs, MB memory, MB disk.
Amounts = tuple[Decimal, Decimal, Decimal]


def plan_amounts(plan: Plan, instead_of: Plan | None = None) -> Amounts:
    """What a server on PLAN adds to its node, or, INSTEAD_OF its current plan, what the
    change adds (negative where it shrinks)."""
    def of(p: Plan | None) -> Amounts:
        zero = Decimal(0)
        return (Decimal(p.cpus), Decimal(p.memory_mb), Decimal(p.disk_mb)) if p else (zero, zero, zero)

    new, old = of(plan), of(instead_of)
    return (new[0] - old[0], new[1] - old[1], new[2] - old[2])


def node_capacities(nodes=None) -> list[NodeCapacity]:
    """NODES (all by default) with what their live servers' plans add up to, in one query."""
    live = Q(servers__state__in=LIVE_STATES)
    annotated = (nodes if nodes is not None else Node.objects.all()).annotate(
        server_count=Count("servers", filter=live),
        cpus_allocated=Sum("servers__plan__cpus", filter=live),
        memory_allocated=Sum("servers__plan__memory_mb", filter=live),
        disk_allocated=Sum("servers__plan__disk_mb", filter=live),
    )
    return [
        NodeCapacity(node, node.server_count, Decimal(node.cpus_allocated or 0), node.memory_allocated or 0,
                     node.disk_allocated or 0)
        for node in annotated
    ]



def approval_warnings(server, node: Node | None, lead: str = "Approving puts") -> list[str]:
    """What approving SERVER's request (or its waiting plan change) on NODE would pass; the
    operator sees it beside Approve and after approving. Empty without a node."""
    if node is None:
        return []
    (capacity,) = node_capacities(Node.objects.filter(pk=node.pk))
    return capacity.warnings(request_amounts(server), lead)


def request_amounts(server) -> Amounts:
    """What approving SERVER adds: its plan for a request, the difference for a plan change."""
    if server.state == State.REQUESTED:
        return plan_amounts(server.plan)
    return plan_amounts(server.requested_plan, instead_of=server.plan)
