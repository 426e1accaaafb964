"""The kernel's per-user limits are per VPS (issue 10, finding 4), and the clock calls answer
what docs/security.md says (finding 12).

Per-user objects (user and other namespaces, inotify instances and watches, fanotify groups and
marks, POSIX message queue bytes, queued signals) count against the host uid that created the
user namespace they were made in (kernel/ucount.c). ucount_probe.c, built statically on the
host, takes as many of each as it can from inside and says where it stopped.

Positive control: a user namespace made the old way, by host root, lets a process inside take
host root's own inotify instances; then host root itself gets EMFILE.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pty
import select
import struct
import sys
import time
from pathlib import Path

import pytest

from tests.engine.helpers import compile_static, install_in_guest
from tests.leaks import TEST_ENV
from vservers.engine import syscalls, userns

ATTACKER_IP, NEIGHBOUR_IP, LATECOMER_IP, CLOCK_IP = "198.19.44.10", "198.19.44.11", "198.19.44.12", "198.19.44.13"
PROBE = "/usr/local/bin/ucount-probe"
LIMITS = userns.GUEST_LIMITS
# Everything at once, in this order: watches and marks take an inotify instance and a fanotify
# group of their own before the instances and groups are counted.
EVERYTHING = ["userns", "watches", "/dev/shm/watches", "fanmarks", "/dev/shm/marks", "inotify", "fanotify",
              "mqueue", "sigpending"]
NS_GET_PARENT, NS_GET_OWNER_UID = 0xB702, 0xB704
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return compile_static("ucount_probe.c", tmp_path_factory.mktemp("ucount"))


def parse(text: str) -> dict[str, tuple[int, str]]:
    """The probe's "kind=COUNT ERRNO" lines."""
    found = {}
    for line in text.splitlines():
        kind, sep, rest = line.partition("=")
        if sep and " " in rest:
            count, _, err = rest.partition(" ")
            found[kind] = (int(count), err)
    return found


def install(engine, name: str, probe: Path) -> None:
    install_in_guest(engine, name, PROBE, probe.read_bytes())


def expect_full_share(found: dict[str, tuple[int, str]], who: str) -> None:
    """FOUND is exactly one VPS's share of everything, each stopped by the kernel's refusal."""
    assert found["userns"] == (LIMITS.namespaces, "ENOSPC"), who
    assert found["watches"] == (LIMITS.inotify_watches, "ENOSPC"), who
    assert found["fanmarks"] == (LIMITS.fanotify_marks, "ENOSPC"), who
    assert found["inotify"] == (LIMITS.inotify_instances - 1, "EMFILE"), who
    assert found["fanotify"] == (LIMITS.fanotify_groups - 1, "EMFILE"), who
    # Queues are counted with their bookkeeping, so the bytes asked for stay a little below.
    assert LIMITS.msgqueue_bytes * 0.95 < found["mqueue"][0] <= LIMITS.msgqueue_bytes, who
    assert found["mqueue"][1] == "EMFILE", who
    # A signal the kernel queues meanwhile (SIGCHLD) counts too.
    assert LIMITS.pending_signals - 4 <= found["sigpending"][0] <= LIMITS.pending_signals, who
    assert found["sigpending"][1] == "EAGAIN", who


def run_in_namespace(userns_fd: int | None, argv: list[str]) -> _Held:
    """ARGV as root of the user namespace USERNS_FD (None: a new one made here by host root, the
    way the engine made every VPS's before), with its own IPC namespace; stdout is a pipe."""
    read_end, write_end = os.pipe()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.dup2(write_end, 1)
            # Opened as host root: the tests' temporary directory is closed to the namespace's ids.
            program = os.open(argv[0], os.O_RDONLY | os.O_CLOEXEC)
            if userns_fd is None:
                syscalls.unshare(syscalls.CLONE_NEWUSER)
                os.write(ready_w, b"r")
                os.read(go_r, 1)
            else:
                syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            syscalls.unshare(syscalls.CLONE_NEWIPC)  # its queues die with it
            os.execve(program, argv, {})
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"run_in_namespace: {exc!r}\n".encode())
        os._exit(code)
    os.close(write_end)
    os.close(ready_w)
    os.close(go_r)
    if userns_fd is None:
        assert os.read(ready_r, 1) == b"r"
        for kind in ("uid_map", "gid_map"):  # a range no VPS of the tests uses
            Path(f"/proc/{pid}/{kind}").write_text("0 2100000000 65536\n")
    os.write(go_w, b"g")
    os.close(go_w)
    os.close(ready_r)
    return _Held(pid, read_end)


class _Held:
    """A forked probe: read its lines until "ready", kill it when done."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.stream = pid, os.fdopen(fd, "r")

    def until_ready(self) -> str:
        lines = []
        for line in self.stream:
            if line.strip() == "ready":
                return "".join(lines)
            lines.append(line)
        raise AssertionError(f"the probe ended early: {''.join(lines)!r}")

    def stop(self) -> None:
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        self.stream.close()


def host_root_can(probe: Path) -> dict[str, tuple[int, str]]:
    """One of each kind, taken by host root in a forked child (and its own IPC namespace)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.dup2(write_end, 1)
            syscalls.unshare(syscalls.CLONE_NEWIPC)
            os.execv(str(probe), [str(probe), "max", "1", "userns", "inotify", "fanotify", "mqueue", "sigpending"])
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return parse(text)


def owner_uid(ns_fd: int) -> int:
    return struct.unpack("I", fcntl.ioctl(ns_fd, NS_GET_OWNER_UID, b"\0" * 4))[0]


# -- the chain: whose uid a VPS's objects count against ---------------------------------------


def test_a_vps_counts_against_its_own_host_uid_and_never_host_root(probe, config):
    # Positive control: a namespace made by host root (the engine's way before). Its root takes
    # every inotify instance host root may have, and host root itself then gets EMFILE.
    old = run_in_namespace(None, [str(probe), "hold", "inotify"])
    try:
        taken_old = parse(old.until_ready())["inotify"]
        root_during_old = host_root_can(probe)["inotify"]
    finally:
        old.stop()
    host_max = int(Path("/proc/sys/user/max_inotify_instances").read_text())
    assert taken_old[1] == "EMFILE" and 0 < taken_old[0] <= host_max
    assert root_during_old == (0, "EMFILE"), "the control did not reach host root's count"
    assert host_root_can(probe)["inotify"] == (1, "-")

    # The engine's way: owned by the VPS's uid base through the outer namespace, which holds
    # the VPS's totals; host root keeps its own, and so does a second VPS's namespace.
    bases = (config.uid_base + 40 * 65536, config.uid_base + 41 * 65536)  # ranges the tests leave free
    fds = [userns.create(base) for base in bases]
    held = []
    try:
        for fd, base in zip(fds, bases, strict=True):
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
            try:
                assert owner_uid(fd) == base and owner_uid(parent) == base
            finally:
                os.close(parent)
        first = run_in_namespace(fds[0], [str(probe), "hold", "inotify"])
        held.append(first)
        assert parse(first.until_ready())["inotify"] == (LIMITS.inotify_instances, "EMFILE")
        assert host_root_can(probe)["inotify"] == (1, "-")
        second = run_in_namespace(fds[1], [str(probe), "hold", "inotify"])
        held.append(second)
        assert parse(second.until_ready())["inotify"] == (LIMITS.inotify_instances, "EMFILE")
        assert host_root_can(probe)["inotify"] == (1, "-")
    finally:
        for process in held:
            process.stop()
        for fd in fds:
            os.close(fd)


# -- one VPS holding all it may -------------------------------------------------------------


def test_a_vps_holding_all_it_may_leaves_neighbours_and_the_host_whole(engine, make_server, probe):
    limits = dict(memory_bytes=256 * 2**20, pids=128, disk_bytes=64 * 2**20)
    attacker = make_server("uc-attacker", f"{ATTACKER_IP}/18", **limits)
    neighbour = make_server("uc-neighbour", f"{NEIGHBOUR_IP}/18", **limits)
    for name in (attacker, neighbour):
        install(engine, name, probe)

    # Before: the neighbour can take its whole share (and gives it all back on exit).
    before = parse(engine.run(neighbour, [PROBE, *EVERYTHING]).stdout)
    expect_full_share(before, "neighbour before")

    # The attacker's root first lifts its own namespace's limits (its right: CAP_SYS_RESOURCE
    # in its own user namespace), then takes all it can and holds it.
    raised = engine.run(attacker, ["/bin/sh", "-c",
                                   "umount -l /proc/sys && for f in /proc/sys/user/max_*; do "
                                   "echo 1000000 > $f || exit 1; done; cat /proc/sys/user/max_user_namespaces"])
    assert raised.returncode == 0 and raised.stdout.strip() == "1000000", raised.stderr
    started = engine.run(attacker, ["/bin/sh", "-c", f"{PROBE} hold {' '.join(EVERYTHING)} > /tmp/took 2>&1 &"])
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 60
    took = ""
    while "ready" not in took:
        assert time.monotonic() < deadline, f"the attack did not finish: {took!r}"
        time.sleep(0.2)
        took = engine.run(attacker, ["cat", "/tmp/took"]).stdout
    expect_full_share(parse(took), "attacker")  # its outer namespace's totals, not its own 1000000

    # During: the neighbour still gets its whole share, exec and enter work in it, a new VPS
    # starts, and host root can still make each kind.
    during = parse(engine.run(neighbour, [PROBE, *EVERYTHING]).stdout)
    expect_full_share(during, "neighbour during the attack")
    assert engine.run(neighbour, ["echo", "exec works"]).stdout == "exec works\n"
    assert b"inotify=4 -" in _enter_and_run(neighbour, f"{PROBE} max 4 inotify; tty")
    make_server("uc-latecomer", f"{LATECOMER_IP}/18", **limits)
    assert engine.status("uc-latecomer").state == "running"
    assert host_root_can(probe) == {kind: (81920 if kind == "mqueue" else 1, "-")
                                    for kind in ("userns", "inotify", "fanotify", "mqueue", "mqueues", "sigpending")}


def _enter_and_run(name: str, command: str) -> bytes:
    """`vserver enter NAME` on a terminal of ours, run COMMAND in its shell, return the output."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "vservers.engine.cli", "enter", name],
                  {**os.environ, **TEST_ENV})
    output = b""
    try:
        output = _read_until(fd, b"# ")
        os.write(fd, f"{command}; echo end-$((6*7)); exit\n".encode())
        output += _read_until(fd, b"end-42")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"/dev/pts/" in output, output
    return output


def _read_until(fd: int, marker: bytes, timeout: float = 20) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    return output


# -- finding 12: what the clock calls answer --------------------------------------------------


def _clock_answers(text: str) -> dict[str, str]:
    """The probe's "call=RET:ERRNO" lines as {call: "ok" or the errno name}."""
    found = {}
    for line in text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and ":" in rest:
            ret, _, err = rest.partition(":")
            found[name] = "ok" if int(ret) >= 0 else err
    return found


def _realtime_minus_monotonic() -> float:
    return time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)


def test_clock_calls_answer_what_the_docs_say(engine, make_server, probe, config):
    """docs/security.md: settimeofday and clock_settime get ENOSYS from the filter; adjtimex and
    clock_adjtime are left to the kernel, which answers a read and refuses any change with
    EPERM (CAP_SYS_TIME of the host's namespace)."""
    name = make_server("uc-clock", f"{CLOCK_IP}/18")
    install(engine, name, probe)
    offset = _realtime_minus_monotonic()
    inside = _clock_answers(engine.run(name, [PROBE, "clock"]).stdout)
    assert inside == {
        "adjtimex_read": "ok", "clock_adjtime_read": "ok",
        "adjtimex_setoffset": "EPERM", "adjtimex_frequency": "EPERM", "clock_adjtime_setoffset": "EPERM",
        "settimeofday": "ENOSYS", "clock_settime": "ENOSYS",
    }
    # Each change asked for an hour; the host's clock moved by none of it.
    assert abs(_realtime_minus_monotonic() - offset) < 60
    # Control: root of an unfiltered user namespace gets the kernel's EPERM for all five
    # changes, so the ENOSYS inside is the filter's and the EPERM is the kernel's.
    fd = userns.create(config.uid_base + 42 * 65536)
    try:
        process = run_in_namespace(fd, [str(probe), "clock"])
        try:
            unfiltered = _clock_answers(process.until_ready())
        finally:
            process.stop()
    finally:
        os.close(fd)
    assert unfiltered == {**inside, "settimeofday": "EPERM", "clock_settime": "EPERM"}


# -- what a real server uses of them ---------------------------------------------------------


def _held_by(pids: list[int]) -> dict[str, int]:
    """Per-user objects the processes PIDS hold, read on the host."""
    held = {"inotify": 0, "fanotify": 0, "pending_signals": 0}
    namespaces: dict[str, set[int]] = {kind: set() for kind in userns.NAMESPACE_KINDS}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                held["inotify"] += target == "anon_inode:inotify"
                held["fanotify"] += target == "anon_inode:[fanotify]"
            for kind in namespaces:
                namespaces[kind].add(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue  # it ended meanwhile
        queued = next(line for line in status.splitlines() if line.startswith("SigQ:")).split()[1]
        held["pending_signals"] = max(held["pending_signals"], int(queued.split("/")[0]))
    # The VPS's own namespace of each kind is the engine's, not counted in GuestLimits.namespaces.
    held["namespaces"] = max(len(found) - 1 for found in namespaces.values())
    return held


@pytest.mark.slow
def test_a_debian_server_uses_a_small_part_of_its_share(engine, make_server, debian_template):
    """sysvinit, runit and Apache at rest and under a few requests: what GuestLimits leaves room
    for (printed with -s; the figures are in docs/security.md)."""
    from tests.engine.helpers import http_get, wait_for_http

    name = make_server("uc-debian", f"{LATECOMER_IP}/18", template="debian",
                       memory_bytes=256 * 2**20, pids=256, disk_bytes=512 * 2**20)
    wait_for_http(LATECOMER_IP, timeout=60)
    for _ in range(20):
        assert http_get(LATECOMER_IP)[0] == 200
    pids = sorted({int(pid) for path in engine.cgroup_procs(name) for pid in path.read_text().split()})
    held = _held_by(pids)
    queues = engine.run(name, ["/bin/sh", "-c", "ls -A /dev/mqueue | wc -l"]).stdout.strip()
    print(f"\ndebian server, {len(pids)} processes: {held}, message queues {queues}")
    assert held["namespaces"] <= LIMITS.namespaces // 4
    assert held["inotify"] <= LIMITS.inotify_instances // 4
    assert held["fanotify"] <= LIMITS.fanotify_groups // 4
    assert held["pending_signals"] <= LIMITS.pending_signals // 4
    assert queues == "0"
