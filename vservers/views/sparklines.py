"""The server lists' CPU sparklines: the last 24 h of each row as an inline SVG polyline,
rendered on the server (no script, nothing for the Content-Security-Policy to allow), from
one query for the whole page (vservers.usage.queries.sparklines)."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..usage import queries

# The drawing's own units (the SVG scales to its CSS box): wide and flat like a line of text.
SPARK_WIDTH = 100
SPARK_HEIGHT = 24


@dataclass(frozen=True)
class Sparkline:
    """A server's CPU over the last 24 h as SVG polylines, one per run of samples: a stopped
    period breaks the line (no point is made up for it). LABEL says it in words."""

    lines: list[str]  # each a polyline's "points" attribute
    label: str

    def svg(self) -> SafeString:
        """The markup (plots.css draws it; the attributes draw it without CSS too)."""
        polylines = format_html_join(
            "", '<polyline points="{}" fill="none" stroke="currentColor"/>', ((line,) for line in self.lines)
        )
        return format_html(
            '<svg class="sparkline" viewBox="0 0 {} {}" preserveAspectRatio="none" role="img" aria-label="{}">'
            "<title>{}</title>{}</svg>",
            SPARK_WIDTH, SPARK_HEIGHT, self.label, self.label, polylines,
        )


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
