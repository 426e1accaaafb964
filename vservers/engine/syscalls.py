"""Thin ctypes wrappers for the Linux system calls Python 3.11's os module lacks.

Python 3.12 gained os.unshare/os.setns; the new mount API (open_tree, mount_setattr,
move_mount) has no wrapper in any Python version, so these are written by hand.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

_libc = ctypes.CDLL(None, use_errno=True)  # the process already has libc loaded
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x00100000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

# openat2's "how.resolve" flags (linux/openat2.h).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

# The mount-API and openat2 numbers are the same on every architecture; pivot_root is not.
_NR = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "openat2": 437,
    "mount_setattr": 442,
    "pivot_root": {"x86_64": 155, "aarch64": 41}.get(os.uname().machine),
}


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | os.PathLike | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | None, target: str | os.PathLike, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    result = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(result, f"mount {fstype or source} on {target}")


def umount(target: str | os.PathLike, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0), "prctl")


MADV_POPULATE_WRITE = 23  # Linux 5.14
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_runs(start: int, length: int) -> list[tuple[int, int]]:
    """(address, length) of each run of pages in [START, START+LENGTH) that is in memory (mincore)."""
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    vector = (ctypes.c_ubyte * pages)()
    _check(_libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vector), "mincore")
    runs: list[tuple[int, int]] = []
    first = None
    for i, flags in enumerate([*vector, 0]):
        if flags & 1 and first is None:
            first = i
        elif not flags & 1 and first is not None:
            runs.append((start + first * PAGE_SIZE, (i - first) * PAGE_SIZE))
            first = None
    return runs


def populate_write(start: int, length: int) -> None:
    """madvise(MADV_POPULATE_WRITE): fault the range in writable now, copying what is shared
    copy-on-write, instead of page by page on the first writes."""
    _check(_libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), ctypes.c_int(MADV_POPULATE_WRITE)),
           "madvise")


def open_tree(path: str | os.PathLike, flags: int, dir_fd: int = AT_FDCWD) -> int:
    """open_tree(2); with OPEN_TREE_CLONE a detached copy of the mount at PATH (or of DIR_FD's
    own mount, with path "" and AT_EMPTY_PATH)."""
    return _check(
        _libc.syscall(_NR["open_tree"], ctypes.c_int(dir_fd), _b(path), ctypes.c_uint(flags)),
        f"open_tree {path or dir_fd}",
    )


def new_mount(fstype: str, options: Mapping[str, str | None], attrs: int) -> int:
    """A new, still detached mount of FSTYPE (fsopen, fsconfig, fsmount: Linux 5.2): an fd of its
    root, to be attached with move_mount_fd. OPTIONS maps each option to its value, or None for a
    flag; ATTRS are MOUNT_ATTR_* of the mount."""
    fs_fd = _check(_libc.syscall(_NR["fsopen"], _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")
    try:
        for key, value in options.items():
            command = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            result = _libc.syscall(
                _NR["fsconfig"], ctypes.c_int(fs_fd), ctypes.c_uint(command), _b(key), _b(value), ctypes.c_int(0)
            )
            _check(result, f"{fstype} option {key}={value}")
        _check(
            _libc.syscall(_NR["fsconfig"], ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None,
                          ctypes.c_int(0)),
            f"create {fstype}",
        )
        return _check(
            _libc.syscall(_NR["fsmount"], ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)),
            f"fsmount {fstype}",
        )
    finally:
        os.close(fs_fd)


def move_mount_fd(mount_fd: int, target_fd: int, what: str) -> None:
    """Attach the mount of MOUNT_FD on top of whatever TARGET_FD is: no path is looked up, so
    nothing between the caller's resolution of TARGET_FD and the mount can redirect it."""
    result = _libc.syscall(
        _NR["move_mount"],
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(target_fd),
        b"",
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
    )
    _check(result, f"mount on {what}")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str | os.PathLike, flags: int, resolve: int) -> int:
    """openat2(2) (Linux 5.6): open PATH relative to DIR_FD with RESOLVE's restrictions on
    how the path is walked (e.g. RESOLVE_IN_ROOT: DIR_FD is "/" for the walk, symlinks
    included). A new fd; OSError as os.open raises it."""
    how = _OpenHow(flags=flags, mode=0, resolve=resolve)
    result = _libc.syscall(
        _NR["openat2"], ctypes.c_int(dir_fd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return result


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(fd: int, attr_set: int, userns_fd: int = 0, flags: int = AT_EMPTY_PATH) -> None:
    attr = _MountAttr(attr_set=attr_set, attr_clr=0, propagation=0, userns_fd=userns_fd)
    result = _libc.syscall(
        _NR["mount_setattr"],
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, "mount_setattr")


def move_mount(fd: int, target: str | os.PathLike) -> None:
    result = _libc.syscall(
        _NR["move_mount"],
        ctypes.c_int(fd),
        b"",
        ctypes.c_int(AT_FDCWD),
        _b(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(result, f"move_mount to {target}")


def idmapped_clone(source: str | os.PathLike, target: str | os.PathLike, userns_fd: int) -> None:
    """Mount a read-only copy of SOURCE at TARGET whose owners are shifted by a user namespace.

    The template stays one copy owned by host root, yet the guest sees its files as its own root's.
    """
    fd = open_tree(source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    try:
        mount_setattr(fd, MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY, userns_fd, AT_EMPTY_PATH | AT_RECURSIVE)
        move_mount(fd, target)
    finally:
        os.close(fd)


def close_fds_except(*keep: int) -> None:
    """Close every fd above stderr but KEEP. A forked child that does not exec keeps its
    parent's fds, and with them the parent's flocks and pipe ends, for as long as it lives."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
