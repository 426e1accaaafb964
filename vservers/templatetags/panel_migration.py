"""The operator's "Move to another node" card: which nodes a server may move to, and whether it
keeps its addresses on each (a pool of that node or shared with it) or takes new ones."""

from __future__ import annotations

from django import template

from ..models import IPPool, State

register = template.Library()


@register.inclusion_tag("vservers/operator/_migrate_server.html", takes_context=True)
def migrate_card(context, server, nodes):
    others = [node for node in nodes if node.pk != server.node_id]
    movable = server.state in (State.RUNNING, State.STOPPED) and server.node_id is not None and bool(others)
    options = []
    if movable:
        pools = {a.pool_id for a in server.addresses.all()}
        reach: dict[int, set[int]] = {}
        for pool in IPPool.objects.prefetch_related("shared_with"):
            for node_id in {pool.node_id, *(n.pk for n in pool.shared_with.all())}:
                reach.setdefault(node_id, set()).add(pool.pk)
        options = [(node, bool(pools) and pools <= reach.get(node.pk, set())) for node in others]
    return {"server": server, "options": options, "movable": movable, "csrf_token": context.get("csrf_token")}
