"""What every benchmark does with its figures: print them (JSON, then the Markdown tables),
plot them with matplotlib, and format numbers for the tables. Results files and the sections of
SUMMARY.md are common.write_results."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import MB


def show(result: dict, markdown: str) -> None:
    """Print RESULT as JSON, a blank line, then MARKDOWN."""
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    print()
    print(markdown)


def pyplot():
    """matplotlib.pyplot without a display (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Write FIG to PATH as PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


# --- numbers for the tables -------------------------------------------------------------------


def f1(value) -> str:
    """One decimal; "—" for None or NaN."""
    return "—" if value is None or value != value else f"{value:.1f}"


def fmt(x: float | None, digits: int = 0) -> str:
    """Thousands separated, DIGITS decimals; "—" for None."""
    return "—" if x is None else f"{x:,.{digits}f}"


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal; "—" for None."""
    return "—" if x is None else f"{x * 100:.1f} %"


def fmt_bytes(value: float | None) -> str:
    """Bytes as MB (2 decimals) from 1 MB up, else kB; "—" for None."""
    if value is None:
        return "—"
    if value >= MB:
        return f"{value / MB:.2f} MB"
    return f"{value / 1000:.0f} KB"
