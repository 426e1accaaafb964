"""User namespaces: root inside a VPS is an unprivileged range of host ids, and the VPS has its
own share of the kernel's per-user limits.

Each VPS owns ID_RANGE_SIZE consecutive host uids and gids starting at its uid_base; the
ranges of one installation never overlap (allocated under the root's lock).

Per-user limits ("ucounts", kernel/ucount.c) are counted per (user namespace, uid) and each
count is checked at every level up to the host: an object made by uid U in namespace N counts
at (N, U) against N's `user.max_*`, then at (N's parent, N's owner) against the parent's max,
and so on. Which host uid a guest's objects land on is therefore the uid that *created* the
namespace. Two namespaces per VPS make that the VPS's own, with limits the guest cannot lift:

    host (init)  ── (host, uid_base) against the host's per-user max
      └─ outer   made by host uid uid_base; its user.max_* are the VPS's totals (GuestLimits),
         │       written by the engine from inside it; no guest process is ever in it
         └─ guest made by the outer namespace's root (= uid_base); what the VPS runs in

Every object of the guest counts at (outer, uid_base) against the outer namespace's max: one
counter per VPS. The guest's root holds CAP_SYS_RESOURCE in the guest namespace only, so it can
tune its own per-user `user.max_*` (like any admin) but never the outer ones, and it cannot
enter the outer namespace (that needs CAP_SYS_ADMIN there). RLIMIT_MSGQUEUE and
RLIMIT_SIGPENDING are counted the same way; their cap one level up is the creator's rlimit at
the namespace's creation, so the creators run with the VPS's totals as their rlimits.
"""

from __future__ import annotations

import _thread  # threading's lock, without importing threading on the CLI's create path
import functools
import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace

from .errors import EngineError
from .spec import ID_RANGE_SIZE
from .syscalls import CLONE_NEWUSER, PR_SET_DUMPABLE, prctl, unshare

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .forker import ForkServer

NAMESPACE_KINDS = ("user", "pid", "uts", "ipc", "net", "mnt", "cgroup", "time")


@dataclass(frozen=True)
class GuestLimits:
    """What one VPS may hold in all of its processes together of the kernel's per-user objects.

    Measured on a Debian bookworm VPS with sysvinit, sshd, cron, rsyslog and Apache (see
    docs/security.md): no namespace, no inotify or fanotify instance, no message queue and no
    queued signal at rest; the values leave room for a few editors, `tail -f`, a file
    synchroniser and a handful of nested containers or `ip netns`, and stay small next to the
    host's own per-user defaults so that 1,000 VPSs cannot exhaust the host together.
    """

    # Made by the guest, besides the VPS's own one of each kind (the engine's).
    namespaces: int = 64
    # Network namespaces among those (limits_for(): none without "network admin inside").
    net_namespaces: int = 64
    inotify_instances: int = 128  # the kernel's default per user
    inotify_watches: int = 8192  # the kernel's minimum default per user; each pins an inode
    fanotify_groups: int = 16
    fanotify_marks: int = 8192
    msgqueue_bytes: int = 819_200  # RLIMIT_MSGQUEUE's default per user (MQ_BYTES_MAX)
    pending_signals: int = 4096

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or not 0 <= value < 2**31 - 1:
                raise EngineError(f"guest limit {field.name} must be an integer from 0 to 2^31-2, not {value!r}")

    def ucount_sysctls(self) -> dict[str, int]:
        """The values of /proc/sys/user/* for the VPS's namespaces."""
        values = {f"max_{kind}_namespaces": self.namespaces + 1 for kind in NAMESPACE_KINDS}
        values["max_net_namespaces"] = min(self.namespaces, self.net_namespaces) + 1
        values.update(max_inotify_instances=self.inotify_instances, max_inotify_watches=self.inotify_watches,
                      max_fanotify_groups=self.fanotify_groups, max_fanotify_marks=self.fanotify_marks)
        return values

    def rlimits(self) -> dict[int, int]:
        return {resource.RLIMIT_MSGQUEUE: self.msgqueue_bytes, resource.RLIMIT_SIGPENDING: self.pending_signals}


GUEST_LIMITS = GuestLimits()


def limits_for(network_admin: bool) -> GuestLimits:
    """The VPS's totals. Without "network admin inside" the guest makes no network namespace
    of its own: a user namespace it makes starts with every capability, CAP_NET_ADMIN included,
    over the network namespaces made in it, so one would give back what dropping CAP_NET_ADMIN
    from its bounding set keeps out (permanent neighbour entries without bound, a neighbour
    table filled past the next-hop guard; measured in tests/engine/test_walls_network.py)."""
    return GUEST_LIMITS if network_admin else replace(GUEST_LIMITS, net_namespaces=0)


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


def set_rlimits(limits: GuestLimits = GUEST_LIMITS) -> None:
    """Make LIMITS' rlimits this process's soft and hard limits. Raising a hard limit needs
    CAP_SYS_RESOURCE in the host's namespace: called as host root, what the guest inherits it
    can lower but never raise."""
    for kind, value in limits.rlimits().items():
        _set_rlimit(kind, value)


def copy_rlimits(limits: dict[int, tuple[int, int]]) -> None:
    """Make LIMITS this process's rlimits. Where a hard limit is above ours and we may not
    raise it (no CAP_SYS_RESOURCE in the host's bounding set), ours stays and the soft limit
    fits under it: never more than LIMITS, never an error."""
    for kind, (soft, hard) in limits.items():
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, PermissionError):
            hard = _smaller(hard, resource.getrlimit(kind)[1])
            resource.setrlimit(kind, (_smaller(soft, hard), hard))


def _smaller(a: int, b: int) -> int:
    """The smaller of two rlimit values, where RLIM_INFINITY (-1 in Python) is the largest."""
    if a == resource.RLIM_INFINITY:
        return b
    if b == resource.RLIM_INFINITY:
        return a
    return min(a, b)


def _set_rlimit(kind: int, value: int) -> None:
    try:
        resource.setrlimit(kind, (value, value))
    except ValueError:  # above our hard limit, and no CAP_SYS_RESOURCE: the most we may give
        hard = resource.getrlimit(kind)[1]
        resource.setrlimit(kind, (hard, hard))


def _write_ucount_sysctls(limits: GuestLimits) -> None:
    # /proc/sys/user shows the caller's own user namespace's table, writable with
    # CAP_SYS_RESOURCE there (which the namespace's creator has). Plain fds, not open(): the
    # helpers write these on the way of every start, and io's file objects cost several times
    # the system calls' time.
    for name, value in limits.ucount_sysctls().items():
        try:
            fd = os.open(f"/proc/sys/user/{name}", os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # max_fanotify_* and max_time_* are newer than some kernels
            continue
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)


def _write_maps(pid: int, text: str) -> None:
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as fh:
            fh.write(text)


def _expect(fd: int, what: bytes) -> None:
    got = os.read(fd, 64)
    if got != what:
        raise EngineError(got[1:].decode(errors="replace") if got.startswith(b"e") else "helper gave up")


def _fork_helper(body: Callable[[int, int], None], forker: ForkServer | None = None) -> tuple[int, int, int]:
    """Fork a helper that runs BODY(up_w, down_r) and exits: it talks up to its parent on one
    pipe and hears back on another, and an exception reaches the parent as b"e<text>" on the
    up pipe. Returns (pid, up_r, down_w), the parent's ends. With FORKER the helper is the fork
    server's child (BODY must pickle), which the caller does not wait for (see reap)."""
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork() if forker is None else forker.fork(_helper_main, [up_w, down_r], body)
    except BaseException:
        for fd in (up_r, up_w, down_r, down_w):
            os.close(fd)
        raise
    if pid == 0:  # child: only syscalls until _exit
        os.close(up_r)
        os.close(down_w)
        _helper_main(up_w, down_r, body)
    os.close(up_w)
    os.close(down_r)
    return pid, up_r, down_w


def _helper_main(up_w: int, down_r: int, body: Callable[[int, int], None]) -> None:
    code = 1
    try:
        body(up_w, down_r)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        try:
            os.write(up_w, f"e{exc}".encode())
        except OSError:
            pass
    os._exit(code)


def _outer_child(base: int, limits: GuestLimits, to_engine: int, from_engine: int) -> None:
    """Host root until it becomes BASE and makes the outer namespace; there it sets the VPS's
    totals, has its own child make the guest namespace, and maps that child's ids."""
    _set_rlimit(resource.RLIMIT_NPROC, resource.RLIM_INFINITY)  # see create()
    set_rlimits(limits)
    os.setgroups([])
    os.setresgid(base, base, base)
    os.setresuid(base, base, base)
    # Changing uid made us undumpable: /proc/<us and our child>/*_map would then belong to host
    # root, and we could not write our child's maps. Nothing else of this host uid runs.
    prctl(PR_SET_DUMPABLE, 1)
    unshare(CLONE_NEWUSER)
    os.write(to_engine, b"o")
    _expect(from_engine, b"m")  # the engine has mapped us: we are root of the outer namespace
    _write_ucount_sysctls(limits)

    def guest(up_w: int, down_r: int) -> None:
        os.close(to_engine)
        unshare(CLONE_NEWUSER)
        os.write(up_w, b"u")
        _expect(down_r, b"m")
        _write_ucount_sysctls(limits)  # the guest's own per-user values start the same
        os.write(up_w, b"s")
        os.read(from_engine, 1)  # EOF once the engine holds the namespace

    pid, up_r, down_w = _fork_helper(guest)
    try:
        _expect(up_r, b"u")
        _write_maps(pid, f"0 0 {ID_RANGE_SIZE}\n")  # the outer namespace's ids, one to one
        os.write(down_w, b"m")
        _expect(up_r, b"s")
        os.write(to_engine, f"g{pid}".encode())
        os.read(from_engine, 1)
    finally:
        os.close(down_w)
        os.waitpid(pid, 0)


# One creation at a time in a process: its helpers wait for EOF on pipes from the engine, and a
# helper forked by another thread's creation meanwhile would hold copies of their write ends.
_CREATING = _thread.allocate_lock()


def create(base: int, limits: GuestLimits = GUEST_LIMITS) -> int:
    """Make a VPS's user namespace, mapping 0..65535 to BASE.., and return an fd for it.

    Host uid BASE creates an outer namespace holding the VPS's totals (see the module's
    docstring), and the guest namespace is made inside it; host root writes the outer maps
    (no setgroups=deny needed), the outer root the guest's. The returned fd keeps the guest
    namespace, and through it the outer one, alive. RLIMIT_NPROC is lifted for the creators (to
    infinity, as for host root before, or else to the worker's hard limit): the VPS's pids
    cgroup bounds its processes, not the worker's rlimit.
    """
    creation = Creation(base, limits)
    try:
        return creation.finish()
    finally:
        creation.reap()


class Creation:
    """create() in three steps, for a caller with other work meanwhile: the constructor forks
    the helper, which starts on its own (uid change, first unshare) while the caller goes on;
    finish() does the handshake and returns the namespace's fd, after which the helpers exit by
    themselves; reap() waits for them (call it in every case, also after a failed finish).
    Forking itself, it holds the process's creation lock from construction until finish()
    returns or fails; with a fork server (FORKER), whose children the server reaps, it needs
    neither the lock nor the wait."""

    def __init__(self, base: int, limits: GuestLimits = GUEST_LIMITS, forker: ForkServer | None = None) -> None:
        self.base = base
        self.pid = 0
        self._ours = forker is None  # a fork server's child is not ours to wait for
        # Forked by the server, the helper holds no copies of this process's pipes: creations in
        # several threads need not wait for each other.
        self._locked = False
        if self._ours:
            _CREATING.acquire()
            self._locked = True
        try:
            pid, up_r, down_w = _fork_helper(functools.partial(_outer_child, base, limits), forker)
        except BaseException:
            self._unlock()
            raise
        self.pid, self._up_r, self._down_w = pid, up_r, down_w

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            _CREATING.release()

    def finish(self) -> int:
        """The guest namespace's fd (close-on-exec). The helpers are told to go either way."""
        try:
            first = os.read(self._up_r, 256)
            if first != b"o":
                detail = first[1:].decode(errors="replace") if first.startswith(b"e") else "no answer"
                raise EngineError(f"could not create a user namespace ({detail}; is user.max_user_namespaces 0?)")
            _write_maps(self.pid, id_map(self.base))
            os.write(self._down_w, b"m")
            answer = os.read(self._up_r, 256)
            if not answer.startswith(b"g"):
                detail = answer[1:].decode(errors="replace") if answer.startswith(b"e") else "no answer"
                raise EngineError(f"could not create the guest's user namespace: {detail}")
            return os.open(f"/proc/{int(answer[1:])}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            self._release()

    def _release(self) -> None:
        if self._down_w >= 0:
            os.close(self._down_w)  # EOF: the helpers exit
            os.close(self._up_r)
            self._down_w = self._up_r = -1
        self._unlock()

    def reap(self) -> None:
        """Wait for the helper (it exits once finish() is done, or failed)."""
        self._release()
        if self.pid and self._ours:
            os.waitpid(self.pid, 0)
        self.pid = 0


def read_map(pid: int) -> list[tuple[int, int, int]]:
    """The uid map of process PID as (inside, outside, count) triples, in host ids."""
    with open(f"/proc/{pid}/uid_map") as fh:
        rows = [line.split() for line in fh if line.strip()]
    return [(int(inside), int(outside), int(count)) for inside, outside, count in rows]


def create_mapping(lines: Iterable[tuple[int, int, int]]) -> int:
    """A bare user namespace with LINES (inside, outside, count) as its uid and gid maps, for
    an idmapped mount: an fd for it. No process ever runs in it; the child that made it exits
    once the fd is open."""
    text = "".join(f"{inside} {outside} {count}\n" for inside, outside, count in lines)

    def bare(up_w: int, down_r: int) -> None:
        unshare(CLONE_NEWUSER)
        os.write(up_w, b"u")
        os.read(down_r, 1)  # EOF once the engine holds the namespace

    pid, up_r, down_w = _fork_helper(bare)
    try:
        _expect(up_r, b"u")
        _write_maps(pid, text)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(down_w)
        os.close(up_r)
        os.waitpid(pid, 0)
