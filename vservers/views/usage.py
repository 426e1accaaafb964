"""Usage over time on the pages: the JSON the server's and the node's plots draw
(static/js/plots.js with uPlot), the operator's node page, and the CPU sparklines of the
server lists.

The figures come from vservers.usage.queries (the sampler's rollups); this module only
checks who may see them, picks the window, and adds the limits the plots draw as lines: the
server's plan, or the node's capacity. A window that is not one of queries.WINDOWS is a 400
with the error shape of the REST API, never a guess.

Access is the server page's own (vservers.access.get_server): the owner's members, read-only
ones too, and operators; another tenant's server is 404. The node's figures are the
operator's (operator_required, 403 for anyone else).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# -- sparklines ------------------------------------------------------------------------------

# The drawing's own units (the SVG scales to its CSS box): wide and flat like a line of text.
SPARK_WIDTH = 100
SPARK_HEIGHT = 24


@dataclass(frozen=True)
class Sparkline:
    """A server's CPU over the last 24 h as SVG polylines, one per run of samples: a stopped
    period breaks the line (no point is made up for it). LABEL says it in words."""

    lines: list[str]  # each a polyline's "points" attribute
    label: str


def _cores(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def sparkline(values: list[float | None], limit: float) -> Sparkline | None:
    """VALUES (CPU in cores, None for no sample) drawn against LIMIT (the plan's cores): the
    line's top is the limit, or the highest value when it went above it. None without any
    sample at all (the list then shows nothing rather than an empty box)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    top = max(limit, *known) or 1.0
    last = len(values) - 1 or 1
    lines: list[str] = []
    run: list[str] = []
    for index, value in enumerate(values):
        if value is None:
            if run:
                lines.append(" ".join(run))
            run = []
            continue
        x = SPARK_WIDTH * index / last
        y = SPARK_HEIGHT - SPARK_HEIGHT * value / top
        run.append(f"{x:.1f},{y:.1f}")
    if run:
        lines.append(" ".join(run))
    # A lone sample between gaps is a point: a polyline of one point draws nothing.
    lines = [line if " " in line else f"{line} {line}" for line in lines]
    latest = next((v for v in reversed(values) if v is not None), 0.0)
    label = (f"CPU over the last 24 hours: now {_cores(latest)}, peak {_cores(max(known))} "
             f"of {_cores(limit)} cores")
    return Sparkline(lines, label)


def sparklines_for(rows: list[tuple[int, float]]) -> dict[int, Sparkline | None]:
    """Sparklines for ROWS, (server id, the plan's cores) each, from ONE query of the history
    (queries.sparklines), whatever the number of rows."""
    if not rows:
        return {}
    found = queries.sparklines([server_id for server_id, _ in rows])
    return {server_id: sparkline(found.get(server_id) or [], limit) for server_id, limit in rows}


# -- the plots' markup -----------------------------------------------------------------------

# The figures of a usage section, in order; static/js/plots.js knows what each draws.
PLOTS = (
    ("cpu", "CPU"),
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
