"""What the kernel says about processes and this boot, read from /proc: one parser for
/proc/PID/stat and one reader of the boot id, for the engine, the panel's jobs and worker,
and the tests; and a writer of sysctls.

Nothing is read at import (the web process imports the engine without touching the kernel).
"""

from __future__ import annotations

import os

BOOT_ID = "/proc/sys/kernel/random/boot_id"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~8 ms)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import NamedTuple

    class _StatFields(NamedTuple):
        pid: int
        comm: str
        state: str
        ppid: int
        pgrp: int
        session: int
        start_time: int
else:
    # A named tuple of collections, not a dataclass nor typing's: `vserver list` reads /proc
    # through this module, and importing either of those took it more time than listing
    # does (dataclasses with inspect ~10 ms, typing ~8 ms; callgrind, 2026-12-07).
    from collections import namedtuple

    _StatFields = namedtuple("_StatFields", "pid comm state ppid pgrp session start_time")


class ProcStat(_StatFields):
    """The fields of /proc/PID/stat that we use, as proc(5) numbers them: pid (1), comm (2,
    without its parentheses), state (3: one letter, R S D T t Z X ...), ppid (4), pgrp (5),
    session (6), start_time (22: clock ticks after boot; with the boot id it names one
    process)."""

    __slots__ = ()

    @property
    def alive(self) -> bool:
        """Not a zombie or a dead task (one that exited holds nothing but its pid)."""
        return self.state not in ("Z", "X")


def parse_stat(data: bytes) -> ProcStat:
    """Parse the contents of a /proc/PID/stat file.

    The command name may hold spaces and parentheses (a process names itself), so the
    fields are split only after the last ')', as the kernel's format requires.
    """
    close = data.rindex(b")")
    head, comm = data[:close].split(b" (", 1)
    fields = data[close + 2 :].split()
    return ProcStat(
        pid=int(head),
        comm=comm.decode(errors="replace"),
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat parsed; None when there is no such process (any longer). Other errors
    (out of file descriptors, say) raise: they do not mean the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_stat(data)


def start_time(pid: int) -> int | None:
    """When process PID started (field 22), None if it is gone or a zombie: with the boot id
    it tells a live process from a later one that reuses its pid."""
    stat = read_stat(pid)
    return stat.start_time if stat is not None and stat.alive else None


def boot_id() -> str:
    """This boot of the host (the kernel's random boot id, with its dashes)."""
    with open(BOOT_ID) as fh:
        return fh.read().strip()


def still_running(pid: int, started: int, boot: str) -> bool:
    """Whether the process PID that started at STARTED (start_time) in boot BOOT (boot_id; ""
    when not recorded, as in state files older than boot ids) still runs: neither gone nor a
    later process that reuses its pid, in this boot or after a reboot."""
    if boot and boot != boot_id():
        return False
    return start_time(pid) == started


def parse_limits(text: str) -> dict[int, tuple[int, int]]:
    """/proc/PID/limits as {RLIMIT_* number: (soft, hard)}, "unlimited" as RLIM_INFINITY.

    The kernel prints one row per rlimit in the order of their numbers (fs/proc/base.c), so
    the row's position is the number; the names are only for people."""
    import resource

    limits = {}
    for number, line in enumerate(text.splitlines()[1:]):
        soft, hard = line[26:].split()[:2]  # the name column is 26 wide, and names have spaces
        limits[number] = tuple(resource.RLIM_INFINITY if value == "unlimited" else int(value) for value in (soft, hard))
    return limits  # type: ignore[return-value]


def read_limits(pid: int) -> dict[int, tuple[int, int]]:
    """Every rlimit of process PID. Read from /proc, not with prlimit(2): that needs
    CAP_SYS_RESOURCE over a process of another user, which host root may lack."""
    with open(f"/proc/{pid}/limits") as fh:
        return parse_limits(fh.read())


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until PID has exited (any process, not only our children); True if it did. Here,
    not in launch.py, so that a stop does not import what starting needs (ctypes, seccomp)."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        exited = bool(readable)
    finally:
        os.close(pidfd)
    if exited:
        reap(pid)
    return exited


def catches(pid: int, signum: int) -> bool:
    """Whether SIGNUM sent to PID now surely reaches it: PID has a handler for it or blocks it
    (SigCgt, SigBlk in /proc/PID/status). False also when PID is gone, and for a process that
    waits for it in sigtimedwait(2), which unblocks what it waits for meanwhile."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith((b"SigBlk:", b"SigCgt:")) and int(line[7:], 16) >> (signum - 1) & 1:
                    return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return False


def reap(pid: int) -> None:
    """Collect PID's exit status if it is our child (we may be its subreaper)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def write_sysctls(values: Iterable[tuple[str, str]]) -> None:
    """Write each (path under /proc/sys, value) of VALUES where the kernel has the path (no
    net/ipv6/ on a host with IPv6 off). Paths under /proc/sys/net show the network namespace
    of the calling thread."""
    for path, value in values:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
