"""What this test session built from nothing: the paths that fill caches on a new machine.

A test that reuses a cache for speed leans on one of these having run in the same session;
the session's summary lists them, so CI's output shows the cold builds ran."""

from __future__ import annotations

import json
import time
from pathlib import Path

SESSION_START = time.time()
_built: dict[str, str] = {}


def note(what: str, detail: str) -> None:
    _built[what] = detail


def summary() -> list[str]:
    return [f"cold path: {what}: {detail}" for what, detail in _built.items()]


def busybox_compiled_this_session(cache: Path) -> dict | None:
    """The record of the busybox compile in CACHE if it happened during this session."""
    from vservers.engine.templates import busybox

    record = cache / f"busybox-{busybox.BUSYBOX_VERSION}" / f"busybox-{busybox.cache_key()}.json"
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("built_at", 0) >= SESSION_START else None
