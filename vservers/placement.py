"""Which node a server goes on: when an operator approves it without naming one, and when a
migration or an evacuation looks for a target.

A node qualifies when it is active and not draining, has the server's template built (a
migration ships the template, so it need not), has a free address in a pool of its own or
shared with it (a migration needs one only when the server cannot keep its addresses there),
and stays within every overcommit ratio once the server's plan is added (capacity.py). Of the
nodes that qualify the one with the most free capacity wins: the largest free share of its
scarcest resource after adding the server, free share meaning what is left of physical ×
ratio (what the node may still take); ties go by name. Nodes whose worker reports in come
first; one that has not reported in is chosen only when no online node qualifies, and the
reason says so.

Nothing here writes: the approval allocates the address in its own transaction (pool lock and
unique constraint), so a node that lost its last address meanwhile refuses there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from django.db.models import Count

from .capacity import Allocation, NodeCapacity, node_capacities, plan_amounts
from .models import BuiltTemplate, IPPool, Node

# How a resource is named in a reason, in the order a reason lists them (capacity.py's order is
# CPUs, memory, disk).
_NAMES = {"CPUs": "CPUs", "MB memory": "memory", "MB disk": "disk"}
_REASON_ORDER = ("MB memory", "CPUs", "MB disk")


@dataclass(frozen=True)
class Placement:
    """The node chosen and why, as a sentence the operator reads in the approval message."""

    node: Node
    reason: str


class NoPlacement(Exception):
    """No node qualifies; str() is a sentence for the operator naming what failed on each."""


@dataclass(frozen=True)
class _Candidate:
    capacity: NodeCapacity
    after: list[Allocation]
    address: str  # "a free address in pool b-net", "keeps its addresses (pool a-net)"

    @property
    def node(self) -> Node:
        return self.capacity.node

    @property
    def scarcest(self) -> Decimal:
        return min(_free_share(a) for a in self.after)

    def reason(self, of: int, template: str) -> str:
        by_name = {a.resource: a for a in self.after}
        shares = ", ".join(
            f"{_NAMES[r]} {_percent(_free_share(by_name[r]))} %" + (" free" if i == 0 else "")
            for i, r in enumerate(_REASON_ORDER))
        why = ("the only node that qualifies" if of == 1
               else f"the most free capacity of {of} nodes that qualify, by its scarcest resource")
        return f"node {self.node.name}: {why} ({shares}); {template}; {self.address}"


def _free_share(allocation: Allocation) -> Decimal:
    """What is left of physical × ratio after adding, as a share of it (0 when it has none)."""
    limit = allocation.limit
    if limit <= 0:
        return Decimal(0)
    return max(Decimal(0), (limit - allocation.allocated) / limit)


def _percent(share: Decimal) -> int:
    """Rounded down: a node with anything allocated is never shown 100 % free."""
    return int((share * 100).to_integral_value(rounding=ROUND_FLOOR))


def choose_node(server, *, exclude: Iterable[Node] = (), for_migration: bool = False) -> Placement:
    """The node SERVER should go on (see the module's docstring for the rules): the one with
    the largest free share of its scarcest resource after adding SERVER's plan, ties by name,
    online nodes before those that have not reported in. EXCLUDE: nodes not to consider (a
    migration's source). FOR_MIGRATION: the template need not be built (it is shipped with the
    server), and an address is needed only when the server cannot keep its own there.

    Raises NoPlacement naming, for each node, why it does not qualify."""
    excluded = {node.pk for node in exclude}
    capacities = [c for c in node_capacities(Node.objects.order_by("name")) if c.node.pk not in excluded]
    if not capacities:
        raise NoPlacement("there is no node to run the server on")
    template = server.template
    built = set(BuiltTemplate.objects.filter(template=template).values_list("node_id", flat=True))
    pools = list(IPPool.objects.annotate(used=Count("addresses")).prefetch_related("shared_with").order_by("pk"))
    # The pools the server's addresses are in: a migration keeps them on a node that shares them.
    own_pools = set(server.addresses.values_list("pool_id", flat=True)) if for_migration else set()
    # A request adds its plan; a migrating server adds its current plan to the target.
    adding = plan_amounts(server.plan)

    candidates: list[_Candidate] = []
    failures: list[str] = []
    for capacity in capacities:
        node = capacity.node
        failed: list[str] = []
        if not node.is_active:
            failed.append("inactive")
        if node.draining:
            failed.append("draining")
        if not for_migration and node.pk not in built:
            failed.append(f"template {template.name} not built")
        address = _address(node, pools, own_pools)
        if address is None:
            usable = _usable(node, pools)
            failed.append("no address pool" if not usable
                          else f"no free address in pool {usable[0].name}" if len(usable) == 1
                          else f"no free address in its pools ({', '.join(p.name for p in usable)})")
        after = capacity.allocations(adding)
        for before_, after_ in zip(capacity.allocations(), after, strict=True):
            if after_.over_limit and after_.allocated > before_.allocated:
                failed.append(f"{_NAMES[after_.resource]} would pass its {after_.ratio_text} limit "
                              f"({after_.figures})")
        if failed:
            failures.append(f"{node.name}: {', '.join(failed)}")
        else:
            assert address is not None
            candidates.append(_Candidate(capacity, after, address))

    if not candidates:
        raise NoPlacement(f"no node can take {server.name} ({'; '.join(failures)})")
    online = [c for c in candidates if c.node.is_online]
    pool = online or candidates
    # Most free first; among equals the name decides (sorted is stable, capacities are by name).
    best = sorted(pool, key=lambda c: c.scarcest, reverse=True)[0]
    template_text = "template shipped with it" if for_migration else f"template {template.name} built"
    reason = best.reason(len(pool), template_text)
    if not online:
        reason += f"; no node that qualifies is online, and node {best.node.name} has not reported in " \
                  f"{'since ' + best.node.last_seen.strftime('%Y-%m-%d %H:%M UTC') if best.node.last_seen else 'yet'}"
    return Placement(best.node, reason)


def _usable(node: Node, pools: Sequence[IPPool]) -> list[IPPool]:
    """The pools NODE may allocate from: its own first, then those shared with it."""
    own = [p for p in pools if p.node_id == node.pk]
    shared = [p for p in pools if p.node_id != node.pk and any(n.pk == node.pk for n in p.shared_with.all())]
    return own + shared


def _address(node: Node, pools: Sequence[IPPool], own_pools: set[int]) -> str | None:
    """How the server gets an address on NODE, or None when it cannot."""
    usable = _usable(node, pools)
    if own_pools and own_pools <= {p.pk for p in usable}:
        names = ", ".join(sorted(p.name for p in usable if p.pk in own_pools))
        return f"keeps its addresses (pool {names} reaches it)"
    for pool in usable:
        if pool.used < pool.size:  # type: ignore[attr-defined]  # the annotation
            return f"a free address in pool {pool.name}"
    return None


__all__ = ["NoPlacement", "Placement", "choose_node"]
