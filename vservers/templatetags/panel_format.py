"""Filters for how the pages write numbers and times."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django import template

from vservers import formatting

register = template.Library()


@register.filter
def cpus(value: Decimal | float | None) -> str:
    """CPU shares as people write them: 2.00 -> "2", 0.50 -> "0.5"."""
    return formatting.number(value) if value is not None else ""


@register.filter
def duration(seconds: float | None) -> str:
    """12345 -> "3 h"; nothing for None."""
    return formatting.duration(seconds) if seconds is not None else ""


@register.filter
def ago(moment: datetime | None) -> str:
    """How long ago MOMENT was: "just now", "5 min ago"; nothing for None."""
    return formatting.ago(moment) if moment is not None else ""
