"""Services inside a VPS, through the guest's own supervisor (runit's sv)."""

from __future__ import annotations

import builtins
import errno
import os
import re
import stat
import struct
import time
from dataclasses import asdict, dataclass

from . import validate
from .errors import EngineError, InvalidInput, NotFound

ACTIONS = {"start": "start", "stop": "stop", "restart": "restart"}
_STATUS_LINE = re.compile(
    r"^(?P<state>run|down|finish|fail|warning): (?P<path>[^:]+):\s*(?:\(pid (?P<pid>\d+)\)\s*)?(?P<secs>\d+)?s?"
    r"(?P<rest>.*)$"
)
# Lists the service directories; the directory arrives as $1, never inside the script.
_STATUS_SCRIPT = r"""
cd "$1" || exit 3
for s in *; do [ -d "$s" ] && sv status "$1/$s"; done
exit 0
"""


# runit's supervise/status (busybox's runsv writes the same 20 bytes): TAI64N start time
# (big-endian seconds, nanoseconds), pid (little-endian), paused, want, got TERM, and
# 0 (down), 1 (run) or 2 (finish). TAI64 labels Unix time t as t + _TAI_OFFSET, as sv does.
_STATUS_TIME = struct.Struct(">QI")
_STATUS_REST = struct.Struct("<I4B")
_STATUS_SIZE = _STATUS_TIME.size + _STATUS_REST.size  # 20
_TAI_OFFSET = 0x400000000000000A
# Looking a service's files up failed in a way that says nothing about the service (a mount
# or symlink the host-side reader does not follow): the list is left to `sv status`.
_NOT_FOR_US = (errno.EXDEV, errno.ELOOP, errno.ENOSYS, errno.EPERM, errno.EACCES)
# The most entries of the service directory list_from_files looks at (each costs a few
# system calls, and the guest's root can make that directory as large as its disk allows).
LIST_LIMIT = 1000
SETTLED = frozenset({"running", "stopped"})
SETTLE_TIMEOUT = 2.0  # seconds; a busybox guest settles within ~10 ms of its start
SETTLE_POLL = 0.01


@dataclass(frozen=True)
class Service:
    """A service supervised inside a server, and its state."""

    name: str
    state: str  # "running" | "starting" | "stopping" | "stopped" | "failed"
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
        if state == "stopped" and "want up" in match["rest"]:
            state = "starting"  # runsv is about to (re)start it
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
        from .guest import OPERATION_TIMEOUT

        result = self.engine.run(self.name, ["/bin/sh", "-c", _STATUS_SCRIPT, "sh", self._service_dir()],
                                 timeout=OPERATION_TIMEOUT)
        if result.returncode != 0:
            raise EngineError(f"could not list services: {result.stderr.strip()}")
        return parse_status(result.stdout)

    def list_from_files(self) -> builtins.list[Service]:
        """What list() says (`sv status` of each service directory), read by the host from
        the files runsv keeps in each service's supervise/ directory instead of by programs
        run inside the guest (about a millisecond instead of an exec). The files are looked
        up as the guest sees them, but only on its root filesystem, and opened only if they
        are of the kind runsv makes (vservers.engine.guest.open_in_root): a FIFO is opened
        for writing without blocking (to see whether runsv still reads it, as sv does) and a
        regular file read. OSError or EngineError when the files cannot be read this way
        (e.g. supervise/ is a symlink into /run, as Debian's runit makes it): list() still
        works then. Only the first LIST_LIMIT entries (in sh's order) are looked at."""
        from . import guest

        service_dir = self._service_dir()
        root = guest.open_root(self.engine, self.name)
        try:
            dir_fd = guest.open_in_root(root, service_dir, stat.S_IFDIR, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = sorted(name for name in os.listdir(dir_fd) if not name.startswith("."))[:LIST_LIMIT]  # sh's `*`
            finally:
                os.close(dir_fd)
            now = int(time.time())
            return [
                _supervise_status(root, f"{service_dir}/{name}", name, now)
                for name in names
                if _is_dir(root, f"{service_dir}/{name}")
            ]
        finally:
            os.close(root)

    def settled(self, timeout: float = SETTLE_TIMEOUT) -> builtins.list[Service]:
        """The list once the guest's supervisor has caught up with what it was told, or as it
        is after TIMEOUT seconds. Right after a start runsvdir has not yet spawned every runsv
        (the service reads as "failed": nothing supervises it) and runsv has not yet run every
        service ("starting"); a list taken then would show the tenant a server whose services
        all seem down. A service that keeps failing costs the whole TIMEOUT."""
        from . import guest

        deadline = time.monotonic() + timeout
        while True:
            services = guest.listing(self)
            if all(s.state in SETTLED for s in services) or time.monotonic() >= deadline:
                return services
            time.sleep(SETTLE_POLL)

    def control(self, service: str, action: str) -> Service:
        validate.service_name(service)
        if action not in ACTIONS:
            raise InvalidInput(f"unknown action {action!r} (use start, stop or restart)")
        if not any(s.name == service for s in self.list()):
            raise NotFound(f"no service {service!r} in {self.name!r}")
        path = f"{self._service_dir()}/{service}"
        from .guest import OPERATION_TIMEOUT

        result = self.engine.run(self.name, ["sv", "-w", "10", ACTIONS[action], path], timeout=OPERATION_TIMEOUT)
        if result.returncode != 0:
            raise EngineError(f"sv {action} {service} failed: {(result.stdout + result.stderr).strip()}")
        return next(s for s in self.list() if s.name == service)


def _is_dir(root: int, path: str) -> bool:
    """`[ -d PATH ]` in the guest, for the host-side reader."""
    from . import guest

    try:
        os.close(guest.open_in_root(root, path, stat.S_IFDIR, os.O_RDONLY | os.O_DIRECTORY))
    except EngineError:
        return False  # not a directory
    except OSError as exc:
        if exc.errno in _NOT_FOR_US:
            raise
        return False  # e.g. a dangling symlink
    return True


def _supervise_status(root: int, path: str, name: str, now: int) -> Service:
    """`sv status PATH`, read from PATH/supervise/ok (a FIFO that runsv holds open: writable
    without blocking while it runs) and PATH/supervise/status; "failed" where sv would fail
    or warn."""
    from . import guest

    failed = Service(name=name, state="failed", pid=None, seconds=None)
    try:
        os.close(guest.open_in_root(root, f"{path}/supervise/ok", stat.S_IFIFO, os.O_WRONLY))
        fd = guest.open_in_root(root, f"{path}/supervise/status", stat.S_IFREG)
    except EngineError:
        return failed  # not what runsv makes
    except OSError as exc:
        if exc.errno in _NOT_FOR_US:
            raise
        return failed  # no supervise/ (runsv never ran) or ENXIO: runsv is not running
    try:
        data = os.read(fd, _STATUS_SIZE)
    finally:
        os.close(fd)
    if len(data) != _STATUS_SIZE:
        return failed
    started, _nsec = _STATUS_TIME.unpack_from(data)
    pid, _paused, want, _got_term, run_or_finish = _STATUS_REST.unpack_from(data, _STATUS_TIME.size)
    state = {0: "stopped", 1: "running", 2: "stopping"}.get(run_or_finish)
    if state is None:
        return failed
    if state == "stopped" and want == ord("u"):
        state = "starting"  # what sv prints as "down: ..., want up"
    return Service(
        name=name,
        state=state,
        pid=pid if run_or_finish else None,
        seconds=max(0, now + _TAI_OFFSET - started),
    )
