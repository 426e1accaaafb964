"""The bounding set of vservers/engine/capabilities.py, checked without a VPS (test_escape.py
checks it on every process of real VPSs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vservers.engine import capabilities

HEADER = Path("/usr/include/linux/capability.h")
# What a VPS's root needs and must keep (see the module's docstring).
KEPT = ("CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_SETUID",
        "CAP_SETGID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
        "CAP_KILL", "CAP_SYS_CHROOT", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE", "CAP_MKNOD")


def header_numbers() -> dict[str, int]:
    if not HEADER.is_file():
        pytest.skip(f"{HEADER} is not installed (linux-libc-dev)")
    return {name: int(n) for name, n in re.findall(r"#define (CAP_[A-Z_]+)\s+(\d+)\s*$", HEADER.read_text(), re.M)}


def test_names_and_numbers_match_the_kernel_headers():
    numbers = header_numbers()
    for number, (name, why) in capabilities.DROPPED.items():
        assert numbers[name] == number
        assert why
    for name in KEPT:
        assert numbers[name] not in capabilities.DROPPED, f"{name} must stay: a VPS's root needs it"


def _status_after_drop_and_exec(*keep: int) -> dict[str, str]:
    """Drop in a child inside a new user namespace, exec cat of its own status; its fields."""
    from vservers.engine.syscalls import CLONE_NEWUSER, unshare

    host_uid = os.geteuid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            unshare(CLONE_NEWUSER)
            Path("/proc/self/uid_map").write_text(f"0 {host_uid} 1\n")  # root in there, as in a VPS
            capabilities.drop(*keep)
            os.dup2(write_end, 1)
            os.execv("/bin/cat", ["cat", "/proc/self/status"])
        finally:
            os._exit(127)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        text = fh.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_network_admin_is_kept_only_when_asked_for():
    numbers = header_numbers()
    assert numbers["CAP_NET_ADMIN"] == capabilities.CAP_NET_ADMIN
    net_admin = 1 << capabilities.CAP_NET_ADMIN
    assert not capabilities.guest_bounding_set() & net_admin
    assert capabilities.guest_bounding_set(network_admin=True) & net_admin
    assert capabilities.guest_bounding_set(True) & ~net_admin == capabilities.guest_bounding_set()
    status = _status_after_drop_and_exec(capabilities.guest_bounding_set(network_admin=True))
    assert int(status["CapBnd"], 16) == capabilities.guest_bounding_set(network_admin=True)


def test_drop_keeps_no_more_than_it_is_given_and_never_a_dropped_one():
    # What exec does: the bounding set of the server's init, here one that lacks CAP_SYS_ADMIN and
    # (as no init can have) claims CAP_SYS_MODULE.
    keep = capabilities.guest_bounding_set() & ~(1 << 21) | (1 << 16)
    status = _status_after_drop_and_exec(keep)
    assert int(status["CapBnd"], 16) == capabilities.guest_bounding_set() & ~(1 << 21)


def test_dropped_capabilities_are_gone_after_exec_and_the_rest_stay():
    status = _status_after_drop_and_exec()
    all_caps = (1 << (capabilities.last_cap() + 1)) - 1
    mask = sum(1 << number for number in capabilities.DROPPED) | 1 << capabilities.CAP_NET_ADMIN
    assert int(status["CapBnd"], 16) == all_caps & ~mask
    # Root of the new user namespace execs with its full (bounded) set.
    assert int(status["CapEff"], 16) == all_caps & ~mask
    assert int(status["CapInh"], 16) & mask == 0
    assert int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == "0"  # setuid programs inside keep working


def _limits_table(text: str) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits as {name: (soft, hard)}."""
    table = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        table[name] = (soft, hard)
    return table


def test_a_program_run_in_a_server_gets_the_inits_rlimits_not_the_callers(engine, make_server):
    import resource

    name = make_server("rl-web", "198.19.12.10/18")
    init_limits = _limits_table(Path(f"/proc/{engine.status(name).init_pid}/limits").read_text())
    kinds = (resource.RLIMIT_NOFILE, resource.RLIMIT_STACK, resource.RLIMIT_CORE)
    saved = {kind: resource.getrlimit(kind) for kind in kinds}
    # The caller (a worker) has soft limits of its own: none of them may reach the program.
    # (Raising a hard limit above the caller's is not tried: this host's bounding set lacks
    # CAP_SYS_RESOURCE, so even root may not; userns.copy_rlimits then fits under it.)
    resource.setrlimit(resource.RLIMIT_NOFILE, (777, saved[resource.RLIMIT_NOFILE][1]))
    resource.setrlimit(resource.RLIMIT_STACK, (4 << 20, saved[resource.RLIMIT_STACK][1]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, saved[resource.RLIMIT_CORE][1]))
    try:
        seen = _limits_table(engine.run(name, ["cat", "/proc/self/limits"]).stdout)
    finally:
        for kind, value in saved.items():
            resource.setrlimit(kind, value)
    # The control: the caller's values differ from the init's.
    assert init_limits["Max open files"][0] != "777" and init_limits["Max stack size"][0] != str(4 << 20)
    assert seen == init_limits


def test_proc_limits_rows_are_numbered_as_the_kernel_numbers_rlimits():
    import resource

    from vservers.engine import procfs

    limits = procfs.read_limits(os.getpid())
    for name in ("RLIMIT_NOFILE", "RLIMIT_STACK", "RLIMIT_MSGQUEUE", "RLIMIT_SIGPENDING", "RLIMIT_NPROC", "RLIMIT_AS"):
        kind = getattr(resource, name)
        assert limits[kind] == resource.getrlimit(kind), name
