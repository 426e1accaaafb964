"""Services inside a VPS, through the guest's own supervisor (runit's sv)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from . import validate
from .errors import EngineError, InvalidInput, NotFound

ACTIONS = {"start": "start", "stop": "stop", "restart": "restart"}
_STATUS_LINE = re.compile(
    r"^(?P<state>run|down|finish|fail|warning): (?P<path>[^:]+):\s*(?:\(pid (?P<pid>\d+)\)\s*)?(?P<secs>\d+)?s?"
)
# Lists the service directories; the directory arrives as $1, never inside the script.
_STATUS_SCRIPT = r"""
cd "$1" || exit 3
for s in *; do [ -d "$s" ] && sv status "$1/$s"; done
exit 0
"""


@dataclass(frozen=True)
class Service:
    name: str
    state: str  # "running" | "stopped" | "failed"
    pid: int | None
    seconds: int | None

    def to_json(self) -> dict:
        return asdict(self)


def parse_status(text: str) -> list[Service]:
    found = []
    for line in text.splitlines():
        match = _STATUS_LINE.match(line.strip())
        if not match:
            continue
        state = {"run": "running", "down": "stopped", "finish": "stopping"}.get(match["state"], "failed")
        found.append(
            Service(
                name=match["path"].rstrip("/").rsplit("/", 1)[-1],
                state=state,
                pid=int(match["pid"]) if match["pid"] else None,
                seconds=int(match["secs"]) if match["secs"] else None,
            )
        )
    return found


class Services:
    def __init__(self, engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def _service_dir(self) -> str:
        from . import templates

        spec = self.engine.spec(self.name)
        return templates.get(self.engine.config, spec.template, spec.template_version).service_dir

    def list(self) -> list[Service]:
        result = self.engine.run(self.name, ["/bin/sh", "-c", _STATUS_SCRIPT, "sh", self._service_dir()])
        if result.returncode != 0:
            raise EngineError(f"could not list services: {result.stderr.strip()}")
        return parse_status(result.stdout)

    def control(self, service: str, action: str) -> Service:
        validate.service_name(service)
        if action not in ACTIONS:
            raise InvalidInput(f"unknown action {action!r} (use start, stop or restart)")
        if not any(s.name == service for s in self.list()):
            raise NotFound(f"no service {service!r} in {self.name!r}")
        path = f"{self._service_dir()}/{service}"
        result = self.engine.run(self.name, ["sv", "-w", "10", ACTIONS[action], path])
        if result.returncode != 0:
            raise EngineError(f"sv {action} {service} failed: {(result.stdout + result.stderr).strip()}")
        return next(s for s in self.list() if s.name == service)
