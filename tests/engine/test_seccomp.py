"""The seccomp filter of vservers/engine/seccomp.py, checked without a VPS: its numbers against
the kernel headers, its policy by evaluating the program for every system call, and its effect
in a process that installs it (tests/engine/test_escape.py checks it inside real VPSs)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from vservers.engine import seccomp

REFUSED = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}
NATIVE = {"x86_64": seccomp.AUDIT_ARCH_X86_64, "aarch64": seccomp.AUDIT_ARCH_AARCH64}
COMPAT = {"x86_64": seccomp.AUDIT_ARCH_I386, "aarch64": seccomp.AUDIT_ARCH_ARM}
# Calls a VPS needs, by name; each must pass the filter.
NEEDED = ("read", "write", "openat", "execve", "clone", "clone3", "unshare", "setns", "mount", "umount2",
          "pivot_root", "reboot", "ptrace", "setuid", "chroot", "sethostname", "name_to_handle_at",
          "adjtimex", "clock_adjtime", "seccomp", "mknodat", "kill", "socket")


def header_numbers(machine: str) -> dict[str, int]:
    path = HEADERS[machine]
    if not path.is_file():
        pytest.skip(f"{path} is not installed (linux-libc-dev)")
    found = {}
    for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)\b", path.read_text()):
        found.setdefault(name, int(number))
    return found


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_numbers_match_the_kernel_headers(machine):
    numbers = header_numbers(machine)
    column = 0 if machine == "x86_64" else 1
    for name, entry in (*seccomp.DENIED.items(), *seccomp.DENIED_FLAGS.items()):
        number = entry[column]
        if number is None:
            assert name not in numbers, f"{name} exists on {machine}: give its number"
        else:
            assert numbers.get(name) == number, f"{name} on {machine}: {number} != {numbers.get(name)}"


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_the_policy_for_every_call_number(machine):
    program = seccomp.build(machine)
    denied = seccomp.denied_numbers(machine)
    flagged = {entry[0 if machine == "x86_64" else 1] for entry in seccomp.DENIED_FLAGS.values()}
    arch = NATIVE[machine]
    for nr in range(0, 1024):
        expected = REFUSED if nr in denied and nr not in flagged else seccomp.SECCOMP_RET_ALLOW
        assert seccomp.run_filter(program, nr, arch) == expected, (machine, nr, denied.get(nr))
    numbers = header_numbers(machine)
    for name in NEEDED:
        if name in numbers:
            assert seccomp.run_filter(program, numbers[name], arch) == seccomp.SECCOMP_RET_ALLOW, name


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_only_a_forced_unmount_is_refused(machine):
    program = seccomp.build(machine)
    umount2 = seccomp.DENIED_FLAGS["umount2"][0 if machine == "x86_64" else 1]
    arch = NATIVE[machine]
    assert seccomp.run_filter(program, umount2, arch, (0, 0)) == seccomp.SECCOMP_RET_ALLOW
    assert seccomp.run_filter(program, umount2, arch, (0, 2)) == seccomp.SECCOMP_RET_ALLOW  # MNT_DETACH
    assert seccomp.run_filter(program, umount2, arch, (0, seccomp.MNT_FORCE)) == REFUSED
    assert seccomp.run_filter(program, umount2, arch, (0, seccomp.MNT_FORCE | 2)) == REFUSED
    # A later call is checked with the number again, not the flag.
    assert seccomp.run_filter(program, umount2 + 1, arch, (0, seccomp.MNT_FORCE)) in (
        seccomp.SECCOMP_RET_ALLOW, REFUSED)


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_other_abis_are_refused_whole(machine):
    program = seccomp.build(machine)
    for nr in (0, 1, 20, 39, 172, 400):
        assert seccomp.run_filter(program, nr, COMPAT[machine]) == REFUSED
        assert seccomp.run_filter(program, nr, 0x12345678) == seccomp.SECCOMP_RET_KILL_PROCESS
    if machine == "x86_64":
        for nr in (0, 39, 512, 0x3FFFFFFF):
            assert seccomp.run_filter(program, nr | seccomp.X32_SYSCALL_BIT, NATIVE[machine]) == REFUSED
        # -1 is a tracer skipping a call: the kernel answers it, the filter lets it through.
        assert seccomp.run_filter(program, -1, NATIVE[machine]) == seccomp.SECCOMP_RET_ALLOW


def _in_child(body) -> int:
    """Run BODY in a forked child inside a new user namespace; its exit code."""
    from vservers.engine.syscalls import CLONE_NEWUSER, unshare

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            unshare(CLONE_NEWUSER)
            code = body()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_installed_the_filter_refuses_with_enosys_and_allows_the_rest():
    import ctypes

    if os.uname().machine != "x86_64":
        pytest.skip("the numbers below are x86-64's")
    libc = ctypes.CDLL(None, use_errno=True)

    def body() -> int:
        seccomp.install()
        if libc.syscall(321, 0xFFFF, None, 0) != -1 or ctypes.get_errno() != errno.ENOSYS:  # bpf
            return 2
        if libc.syscall(39) != os.getpid():  # getpid
            return 3
        status = Path("/proc/self/status").read_text()
        if "Seccomp:\t2" not in status or "Seccomp_filters:\t1" not in status:
            return 4
        return 0

    assert _in_child(body) == 0
