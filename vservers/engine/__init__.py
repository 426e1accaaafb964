"""The virtualization engine: OS-level virtual private servers from the kernel's own parts.

A pure library (no Django) with a CLI, `vserver`. Start with `Engine`::

    from vservers.engine import Engine
    engine = Engine()                      # configured from VSERVER_* environment variables
    engine.create("web1", "busybox", ["198.18.0.10/16"])
    engine.start("web1")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import EngineConfig
from .errors import Conflict, EngineError, InvalidInput, NotFound
from .spec import Limits, ServerSpec, Status, Usage

if TYPE_CHECKING:
    from .lifecycle import Engine


def __getattr__(name: str):
    # Engine loads the modules that talk to the kernel (namespaces, seccomp, ctypes, pyroute2);
    # importing it on first use keeps `vservers.engine.validate` and the other plain modules
    # free of that for the web process and for tools that only parse or check.
    if name == "Engine":
        from .lifecycle import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
