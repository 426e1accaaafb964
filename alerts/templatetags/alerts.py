"""{% alerts_card server can_edit operator %}: the Alerts section of a server's page, with its
own two queries (the rules, the open and last episodes), so the server views stay as they are."""

from __future__ import annotations

from django import template
from django.urls import reverse

from ..forms import AlertsForm
from ..models import AlertEpisode, rules_of

register = template.Library()


@register.inclusion_tag("alerts/_card.html")
def alerts_card(server, can_edit: bool, operator: bool = False) -> dict:
    rules = rules_of(server)
    name = "op_server_alerts" if operator else "server_alerts"
    episodes = list(AlertEpisode.objects.filter(rule__server=server).select_related("rule")[:5])
    return {
        "server": server,
        "form": AlertsForm(rules=rules, read_only=not can_edit),
        "can_edit": can_edit,
        "action": reverse(name, kwargs={"uuid": server.uuid}),
        "open_episodes": [e for e in episodes if e.ended is None],
        "episodes": episodes,
    }
