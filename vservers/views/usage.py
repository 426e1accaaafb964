"""Usage over time on the pages: the JSON the server's and the node's plots draw
(static/js/plots.js with uPlot) and the operator's node page (the lists' sparklines:
vservers.views.sparklines).

The figures come from vservers.usage.queries (the sampler's rollups); this module only
checks who may see them, picks the window, and adds the limits the plots draw as lines: the
server's plan, or the node's capacity. A window that is not one of queries.WINDOWS is a 400
with the error shape of the REST API, never a guess.

Access is the server page's own (vservers.access.get_server): the owner's members, read-only
ones too, and operators; another tenant's server is 404. The node's figures are the
operator's (operator_required, 403 for anyone else).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from .. import access
from ..models import Node, Plan
from ..usage import queries
from .operator import operator_required

DEFAULT_WINDOW = "24h"
MIB = 1024 * 1024
# The windows as the buttons say them ("Showing the last 24 hours").
WINDOW_LABELS = {"1h": "hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days"}


class BadWindow(ValueError):
    pass


def window_of(request: HttpRequest) -> str:
    """The ?window= of REQUEST (default 24h), or BadWindow."""
    window = request.GET.get("window", DEFAULT_WINDOW)
    if window not in queries.WINDOWS:
        raise BadWindow(f"window must be one of {', '.join(queries.WINDOWS)}, not {window[:20]!r}")
    return window


def plan_limits(plan: Plan) -> dict[str, float]:
    """What the plan allows, in the plots' units: CPU in cores, memory and disk in bytes."""
    return {"cpu": float(plan.cpus), "memory": plan.memory_mb * MIB, "disk": plan.disk_mb * MIB, "pids": plan.pids}


def node_limits(node: Node) -> dict[str, float]:
    """The node's physical capacity (its servers' totals may pass it: overcommit)."""
    return {"cpu": float(node.cpus), "memory": node.memory_mb * MIB, "disk": node.disk_mb * MIB}


def usage_payload(series: queries.Series, limits: dict[str, float]) -> dict:
    return {**series.to_json(), "limits": limits}


def _bad_window(exc: BadWindow) -> JsonResponse:
    return JsonResponse({"detail": str(exc), "code": "invalid", "fields": {"window": [str(exc)]}}, status=400)


@login_required
@require_GET
def server_usage(request: HttpRequest, uuid) -> HttpResponse:
    """GET /servers/<uuid>/usage.json?window=24h: the server's series and its plan's limits."""
    server = access.get_server(request.user, uuid)
    try:
        window = window_of(request)
    except BadWindow as exc:
        return _bad_window(exc)
    return JsonResponse(usage_payload(queries.server_series(server, window), plan_limits(server.plan)))


@operator_required
@require_GET
def node_usage(request: HttpRequest, name: str) -> HttpResponse:
    """GET /operator/nodes/<name>/usage.json?window=24h: the node's totals and its capacity."""
    node = get_object_or_404(Node, name=name)
    try:
        window = window_of(request)
    except BadWindow as exc:
        return _bad_window(exc)
    return JsonResponse(usage_payload(queries.node_series(node, window), node_limits(node)))


@operator_required
@require_GET
def node_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A node's totals over time: what all its servers used together, against its capacity."""
    node = get_object_or_404(Node, name=name)
    return render(request, "vservers/operator/node_detail.html", {"section": "nodes", "node": node})


# -- the plots' markup -----------------------------------------------------------------------

# The figures of a usage section, in order; static/js/plots.js knows what each draws.
PLOTS = (
    ("cpu", "CPU use"),
    ("memory", "Memory"),
    ("disk", "Disk"),
    ("pids", "Processes"),
    ("net", "Network"),
)


def plots_context(url: str, limit_label: str, title: str = "Usage over time") -> dict:
    """What templates/vservers/_usage_plots.html needs (templatetags.panel_usage)."""
    return {
        "usage_url": url,
        "limit_label": limit_label,
        "usage_title": title,
        "usage_windows": list(WINDOW_LABELS.items()),
        "usage_default": DEFAULT_WINDOW,
        "usage_plots": [{"key": key, "title": label} for key, label in PLOTS],
    }
