"""How the panel writes numbers and times for people: one place for the pages, the
messages of vservers.actions and the template filters (templatetags.panel_format)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone


def number(value: Decimal | float | int) -> str:
    """2.00 -> "2", 0.50 -> "0.5" (CPU shares are decimals)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def duration(seconds: float) -> str:
    """12345 -> "3 h": the largest whole unit."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if whole >= size:
            return f"{whole // size} {unit}"
    return f"{whole} s"


def ago(moment: datetime) -> str:
    seconds = (timezone.now() - moment).total_seconds()
    return "just now" if seconds < 10 else f"{duration(seconds)} ago"
