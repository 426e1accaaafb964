"""A server's state as the pages show it, and a node's reachability (vservers.nodes.status):
"unknown" for a server on a node that is not online. No query when the view fetched the
server with its node (select_related), as the lists do."""

from __future__ import annotations

from django import template

from vservers.nodes import status

register = template.Library()


@register.filter
def shown_state(server) -> str:
    return status.shown_state(server.state, status.server_online(server))


@register.filter
def shown_state_label(server) -> str:
    return status.shown_label(server.state, status.server_online(server))
