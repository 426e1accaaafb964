"""The virtualization engine: OS-level virtual private servers from the kernel's own parts.

A pure library (no Django) with a CLI, `vserver`. Start with `Engine`::

    from vservers.engine import Engine
    engine = Engine()                      # configured from VSERVER_* environment variables
    engine.create("web1", "busybox", ["198.18.0.10/16"])
    engine.start("web1")
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms at start)
if TYPE_CHECKING:
    from .config import EngineConfig
    from .errors import Conflict, EngineError, InvalidInput, NotFound
    from .lifecycle import Engine
    from .spec import Limits, ServerSpec, Status, Usage

# Each name is imported from its module on first use. Engine loads the modules that talk to
# the kernel (namespaces, seccomp, ctypes, pyroute2); and every process that imports any engine
# module (`vserver --help` among them) runs this file first, so it imports nothing: config's
# and spec's dataclasses alone cost ~15 ms at start (python -X importtime, 2026-12-06).
_WHERE = {
    "Conflict": "errors",
    "Engine": "lifecycle",
    "EngineConfig": "config",
    "EngineError": "errors",
    "InvalidInput": "errors",
    "Limits": "spec",
    "NotFound": "errors",
    "ServerSpec": "spec",
    "Status": "spec",
    "Usage": "spec",
}


def __getattr__(name: str):
    # Imported here: `vserver`'s way to the resident server (command.py) loads this file, and
    # importlib with warnings cost it ~1 ms of ~17 (python -S, paired medians of 40, 2026-12-07).
    import importlib

    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
