"""User namespaces: root inside a VPS is an unprivileged range of host ids.

Each VPS owns ID_RANGE_SIZE consecutive host uids and gids starting at its uid_base; the
ranges of one installation never overlap (allocated under the root's lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import EngineError
from .spec import ID_RANGE_SIZE
from .syscalls import CLONE_NEWUSER, unshare


def allocate_base(first_base: int, taken: Iterable[int]) -> int:
    """The lowest free range start at or above FIRST_BASE."""
    used = set(taken)
    base = first_base
    while base in used:
        base += ID_RANGE_SIZE
    if base + ID_RANGE_SIZE > 2**32 - 1:
        raise EngineError("no free uid range left")
    return base


def id_map(base: int) -> str:
    return f"0 {base} {ID_RANGE_SIZE}\n"


def create(base: int) -> int:
    """Make a user namespace mapping 0..65535 to BASE.. and return an fd for it.

    A short-lived child unshares the namespace; we write its maps as host root (so no
    setgroups=deny is needed) and keep the namespace alive through the returned fd.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only syscalls until _exit
        code = 0
        try:
            os.close(ready_r)
            os.close(done_w)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise EngineError("could not create a user namespace (is user.max_user_namespaces 0?)")
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{kind}", "w") as fh:
                fh.write(id_map(base))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def read_map(pid: int) -> list[tuple[int, int, int]]:
    """The uid map of process PID as (inside, outside, count) triples."""
    with open(f"/proc/{pid}/uid_map") as fh:
        rows = [line.split() for line in fh if line.strip()]
    return [(int(inside), int(outside), int(count)) for inside, outside, count in rows]
