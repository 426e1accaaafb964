"""The virtualization engine: OS-level virtual private servers from the kernel's own parts.

A pure library (no Django) with a CLI, `vserver`. Start with `Engine`::

    from vservers.engine import Engine
    engine = Engine()                      # configured from VSERVER_* environment variables
    engine.create("web1", "busybox", ["198.18.0.10/16"])
    engine.start("web1")
"""

from __future__ import annotations

from .config import EngineConfig
from .errors import Conflict, EngineError, InvalidInput, NotFound
from .lifecycle import Engine
from .spec import Limits, ServerSpec, Status, Usage

__all__ = [
    "Conflict",
    "Engine",
    "EngineConfig",
    "EngineError",
    "InvalidInput",
    "Limits",
    "NotFound",
    "ServerSpec",
    "Status",
    "Usage",
]
