"""{% console_sessions server %}: the operator's record of a server's browser consoles (who, as
whom, from where, start, end, why it ended), on the operator's server page without a change to
its view."""

from __future__ import annotations

from django import template

from ..models import ConsoleSession

register = template.Library()

SHOWN = 20


@register.inclusion_tag("consoles/_sessions.html")
def console_sessions(server) -> dict:
    sessions = ConsoleSession.objects.filter(server=server).select_related("user")[:SHOWN]
    return {"console_sessions": sessions, "shown": SHOWN}
