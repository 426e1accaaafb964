"""Pseudo-terminals: each VPS's devpts instance is capped, and the host's pool sized for all.

The kernel counts every pty of every devpts instance against one host-wide limit,
kernel.pty.max, of which kernel.pty.reserve is kept for the host's own (initial) instance: on
a default host (4096, 1024) all guests together get 3,071, and one guest could take them all,
after which no neighbour could open a terminal (`vserver enter` fails) though host root still
could. So each guest's instance is mounted with max=PER_VPS (the kernel refuses the next one
with ENOSPC), and the host limit is raised, never lowered, when the bridge is set up, to room
for PER_VPS in each of VPS_PER_HOST guests on top of the host's reserve.

What a pty costs (measured in tests/engine/test_walls_startpath.py, 1,024 ptys opened by one
busybox guest on kernel 6.18): ~3.3 KiB of slab (tty_struct, inode, dentry, file), charged to
the guest's memory cgroup (memory.kmem.usage_in_bytes grew 3.2 KiB a pty), and ~24 KiB of
vmalloc (consistent with n_tty's read and echo buffers, 12 KiB for each end, allocated
without accounting), charged to no cgroup. So the cap is
also the bound on host memory a guest can take through its /dev/pts outside its cgroup:
PER_VPS * ~24 KiB. (A devpts the guest's root mounts itself has no cap; its memory cgroup and
the host's pool bound it: see docs/security.md, "The pty pool".)

PER_VPS = 256: far above what one server uses (ssh sessions, tmux panes, one per `vserver
enter`), and ~6 MiB of uncharged host memory per VPS at worst; LXC's common.conf allows
1,024, which would be ~24 MiB. The host's pool then needs 1,000 * 256 + 1,024 (the default
reserve) + 1 = 257,025 ptys, well under the kernel's ceiling of 2^20 (NR_UNIX98_PTY_MAX).
"""

from __future__ import annotations

PER_VPS = 256
UNCHARGED_BYTES_BOUND = 32 * 1024  # what one pty may cost outside the guest's cgroup (measured ~24 KiB)
VPS_PER_HOST = 1000
CEILING = 1 << 20  # NR_UNIX98_PTY_MAX: the largest kernel.pty.max the kernel takes
_MAX = "/proc/sys/kernel/pty/max"
_RESERVE = "/proc/sys/kernel/pty/reserve"


def devpts_options() -> dict[str, str | None]:
    """Mount options of a guest's own devpts instance."""
    return {"newinstance": None, "ptmxmode": "0666", "mode": "0620", "gid": "5", "max": str(PER_VPS)}


def host_floor(reserve: int) -> int:
    """The kernel.pty.max that gives every guest its PER_VPS with RESERVE kept for the host: the
    kernel refuses a guest's pty once the count reaches max - reserve, hence the 1."""
    return min(PER_VPS * VPS_PER_HOST + reserve + 1, CEILING)


def _read(path: str) -> int:
    with open(path) as fh:
        return int(fh.read())


def raise_host_limit() -> int | None:
    """Raise kernel.pty.max to host_floor() if it is lower; the value written, or None. Two
    small reads when it is already high enough (every start asks)."""
    from .errors import EngineError

    try:
        current = _read(_MAX)
        floor = host_floor(_read(_RESERVE))
        if current >= floor:
            return None
        with open(_MAX, "w") as fh:
            fh.write(str(floor))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot raise kernel.pty.max: {exc}") from exc
    return floor
