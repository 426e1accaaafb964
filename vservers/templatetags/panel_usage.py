"""{% usage_plots url limit_label %}: the usage plots of a server or a node
(templates/vservers/_usage_plots.html, drawn by static/js/plots.js)."""

from __future__ import annotations

from django import template

from ..views.usage import plots_context

register = template.Library()


@register.inclusion_tag("vservers/_usage_plots.html")
def usage_plots(url: str, limit_label: str = "Plan limit", title: str = "Usage over time") -> dict:
    return plots_context(url, limit_label, title)
