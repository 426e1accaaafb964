"""What an operator asks for: move one server to another node, or every server off a node
(evacuate). Like every action, an Operation row queued on the server's node (the SOURCE's
queue) once the transaction commits; here with its Migration row in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from accounts.models import AuditEntry

from .. import access
from ..actions import ActionRefused, _request
from ..models import ACTIVE_PHASES, IPPool, Migration, Node, Operation, OperationKind, State, VirtualServer


@dataclass(frozen=True)
class Plan:
    """Where a server would go and whether it keeps its addresses there."""

    source: Node
    node: Node
    reason: str
    readdress: bool


def keeps_addresses(server: VirtualServer, target: Node) -> bool:
    """Whether every address of SERVER lies in a pool of TARGET or one shared with it (the same
    layer-2 network): then it keeps them; else it takes new ones from TARGET's pools."""
    addresses = list(server.addresses.all())
    if not addresses:
        return False
    reachable = set(
        IPPool.objects.filter(node=target).values_list("pk", flat=True)
    ) | set(IPPool.objects.filter(shared_with=target).values_list("pk", flat=True))
    return all(a.pool_id in reachable for a in addresses)


def plan_move(server: VirtualServer, target: Node | None = None) -> Plan:
    """The target (placement's choice when TARGET is None) and whether the server keeps its
    addresses there; ActionRefused with a sentence when it cannot move now."""
    if server.state not in (State.RUNNING, State.STOPPED):
        raise ActionRefused(f"only a running or stopped server can be moved; {server} is "
                            f"{server.get_state_display().lower()}")
    source = server.node
    if source is None:
        raise ActionRefused(f"{server} is on no node")
    if not source.is_online:
        raise ActionRefused(f"node {source.name} has not reported in; a server moves only from a node that is online")
    if target is None:
        from ..placement import NoPlacement, choose_node

        try:
            placed = choose_node(server, exclude=[source], for_migration=True)
        except NoPlacement as exc:
            raise ActionRefused(f"no node can take {server}: {exc}") from None
        target, reason = placed.node, placed.reason
    else:
        reason = f"node {target.name}: chosen by the operator"
    if target.pk == source.pk:
        raise ActionRefused(f"{server} is on node {target.name} already")
    if not target.is_active:
        raise ActionRefused(f"node {target.name} is not active")
    if target.draining:
        raise ActionRefused(f"node {target.name} is draining: it takes no new servers")
    if not target.is_online:
        raise ActionRefused(f"node {target.name} has not reported in; it cannot take a server now")
    return Plan(source, target, reason, readdress=not keeps_addresses(server, target))


def request_migration(server: VirtualServer, by, target: Node | None = None, request=None) -> Operation:
    """Move SERVER to TARGET (or to the node placement chooses): operators only. One
    transaction: the MIGRATE operation (params {"target": node pk}, audited) and its Migration
    row; queued on the source's queue."""
    access.require_operator(by)
    server = VirtualServer.objects.select_related("node", "tenant", "plan", "template").get(pk=server.pk)
    plan = plan_move(server, target)
    with transaction.atomic():
        VirtualServer.objects.select_for_update(of=("self",)).filter(pk=server.pk).first()
        if Migration.objects.filter(server=server, phase__in=ACTIVE_PHASES).exclude(
                operation__params__target=plan.node.pk).exists():
            raise ActionRefused(f"{server} is being moved already")
        operation = _request(server, OperationKind.MIGRATE, by, request, {"target": plan.node.pk})
        Migration.objects.get_or_create(operation=operation, defaults={
            "server": server, "source": plan.source, "target": plan.node, "readdress": plan.readdress,
            "old_addresses": server.ip_list(),
        })
    # Where it goes and why, for the caller's message.
    operation.placement = plan  # type: ignore[attr-defined]
    return operation


@dataclass
class Evacuation:
    queued: list[Operation] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "shop/web: no node can take it: ..."

    @property
    def message(self) -> str:
        parts = [f"{len(self.queued)} server{'s' if len(self.queued) != 1 else ''} queued to move"]
        if self.refused:
            parts.append("not moved: " + "; ".join(self.refused))
        return ". ".join(parts) + "."


def evacuate(node: Node, by, request=None) -> Evacuation:
    """Mark NODE draining (no new servers), then one migration per running or stopped server
    on it, placement choosing each target. A server that cannot be moved is named, with why."""
    access.require_operator(by)
    Node.objects.filter(pk=node.pk).update(draining=True)
    node.draining = True
    if request is not None:
        AuditEntry.record(request, "node.evacuate", node)
    result = Evacuation()
    servers = VirtualServer.objects.filter(node=node).exclude(
        state__in=[State.DELETED, State.REJECTED, State.REQUESTED]).select_related("tenant", "node").order_by("pk")
    for server in servers:
        if Migration.objects.filter(server=server, phase__in=ACTIVE_PHASES).exists():
            continue  # on its way already
        try:
            result.queued.append(request_migration(server, by, request=request))
        except ActionRefused as exc:
            result.refused.append(f"{server}: {exc}")
    return result
