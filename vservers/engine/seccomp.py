"""A seccomp filter for every process of a VPS: system calls that reach kernel state shared by
the whole host, and that a user namespace does not already make harmless, are refused.

Policy: a deny list (LXC's default plus Docker's "significant syscalls blocked", less the ones a
system container needs), answering ENOSYS, as if this kernel had no such call:

* programs treat ENOSYS as "feature not available" and fall back (liburing to epoll, keyutils
  users to no keyring, kmod to "modules not supported"), where EPERM often is a hard error;
* a call refused here has no unrefused twin that does the same (init_module/finit_module,
  kexec_load/kexec_file_load, the three io_uring calls are all listed), so a fallback gains
  nothing. One pair is left open on purpose: adjtimex and clock_adjtime also read the clock's
  state (ntp_gettime, chrony's and ntpd's status), which a filter cannot tell from a change;
  the kernel refuses their changes with EPERM (no CAP_SYS_TIME in the host's namespace, and
  capabilities.py drops it from the bounding set too), as tests/engine/test_walls_ucounts.py shows;
* the tests can tell the filter's refusal from the kernel's: the same call made by root of an
  unfiltered user namespace gets EPERM (no capability in the host's namespace), EFAULT,
  EINVAL... but never ENOSYS, unless the kernel lacks the call altogether (then the tests
  check the filter's program itself, dumped from a guest process).

Other system-call ABIs are refused whole: the i386 one of an x86-64 kernel (int 0x80 from any
process, 32-bit binaries) and arm32 on arm64 have their own numbers, which a list of native
numbers would not cover; the x32 ABI (numbers with bit 30 set) likewise. 32-bit programs
therefore cannot run in a VPS.

Why a hand-written classic-BPF program and not libseccomp: its Python bindings come either with
Debian's system Python (python3-seccomp, not importable from our venv) or as a ctypes wrapper on
PyPI (pyseccomp) that would also need libseccomp.so.2 on every host; the filter we need is a
list of equality tests, about forty instructions, built once per process at import and installed
with one prctl, which keeps the per-start cost to microseconds. The numbers are checked against
the kernel headers by tests/engine/test_seccomp.py.

No no_new_privs: without it, installing a filter needs CAP_SYS_ADMIN in the caller's user
namespace, which the guest's root has; with it, setuid programs inside (su, passwd, sudo) would
stop working for the guest's users. A filter is inherited across fork and execve and can never be
removed, so setuid programs run under it too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# What refused calls return (see above), and what everything else gets.
REFUSED_ERRNO = errno.ENOSYS
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_OFFSET_NR = 0
_OFFSET_ARCH = 4


def _offset_arg_low(index: int) -> int:
    return 16 + 8 * index  # the low 32 bits of args[index] on a little-endian machine


AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
X32_SYSCALL_BIT = 0x40000000
MNT_FORCE = 0x1

# name: (x86_64 number, arm64 number or None where the call does not exist there, why refused)
DENIED: dict[str, tuple[int, int | None, str]] = {
    # Kernel code: modules and kexec run code in the one kernel every VPS shares.
    "init_module": (175, 105, "loads a kernel module"),
    "finit_module": (313, 273, "loads a kernel module"),
    "delete_module": (176, 106, "unloads a kernel module"),
    "create_module": (174, None, "obsolete module call"),
    "get_kernel_syms": (177, None, "obsolete module call"),
    "query_module": (178, None, "obsolete module call"),
    "kexec_load": (246, 104, "replaces the running kernel"),
    "kexec_file_load": (320, 294, "replaces the running kernel"),
    # Filesystem handles bypass the mount namespace: the "shocker" container escape.
    "open_by_handle_at": (304, 265, "opens any file of a filesystem by handle, outside the VPS's root"),
    # Host-wide kernel facilities with a long record of exploitable bugs, not namespaced.
    "bpf": (321, 280, "BPF programs and maps are host-wide"),
    "perf_event_open": (298, 241, "observes the host's CPUs and other processes; frequent kernel bugs"),
    "userfaultfd": (323, 282, "stalls kernel page faults at will, a building block of kernel exploits"),
    "io_uring_setup": (425, 425, "io_uring bypasses seccomp and was the source of many kernel exploits"),
    "io_uring_enter": (426, 426, "io_uring (see io_uring_setup)"),
    "io_uring_register": (427, 427, "io_uring (see io_uring_setup)"),
    # Keyrings are not namespaced: keys are per host uid, and the quota is the host's.
    "keyctl": (250, 219, "kernel keyrings are shared with the host"),
    "add_key": (248, 217, "kernel keyrings are shared with the host"),
    "request_key": (249, 218, "kernel keyrings are shared with the host; may run a host upcall"),
    # Hardware and host-global administration (each also needs a host capability).
    "iopl": (172, None, "raw I/O port access"),
    "ioperm": (173, None, "raw I/O port access"),
    "swapon": (167, 224, "host swap"),
    "swapoff": (168, 225, "host swap"),
    "acct": (163, 89, "host process accounting"),
    "quotactl": (179, 60, "host filesystem quotas"),
    "quotactl_fd": (443, 443, "host filesystem quotas"),
    "syslog": (103, 116, "the kernel log is the host's and shows other VPSs' events"),
    "settimeofday": (164, 170, "there is one clock for the whole host"),
    "clock_settime": (227, 112, "there is one clock for the whole host"),
    "lookup_dcookie": (212, 18, "profiling interface of the host (removed from new kernels)"),
    "nfsservctl": (180, 42, "the host's NFS server (removed from the kernel)"),
    "uselib": (134, None, "obsolete a.out loader"),
    "_sysctl": (156, None, "obsolete binary sysctl"),
    # NUMA page migration of other processes: host memory placement, info leaks.
    "move_pages": (279, 239, "moves other processes' pages between NUMA nodes"),
    "migrate_pages": (256, 238, "moves other processes' pages between NUMA nodes"),
}

# Refused with one argument only: umount2(path, MNT_FORCE) aborts requests of a filesystem for
# every mount of it (NFS, FUSE); a plain umount inside the VPS is fine.
DENIED_FLAGS: dict[str, tuple[int, int | None, int, int, str]] = {
    "umount2": (166, 39, 1, MNT_FORCE, "forced unmount affects every user of a filesystem"),
}

# Per machine: the native audit arch, the column of DENIED, and the compat arch refused whole.
_ARCHES = {
    "x86_64": (AUDIT_ARCH_X86_64, 0, AUDIT_ARCH_I386),
    "aarch64": (AUDIT_ARCH_AARCH64, 1, AUDIT_ARCH_ARM),
}

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06


def denied_numbers(machine: str) -> dict[int, str]:
    """The refused system-call numbers of MACHINE's native ABI, with their names."""
    column = _ARCHES[machine][1]
    found: dict[int, str] = {}
    for name, entry in (*DENIED.items(), *DENIED_FLAGS.items()):
        number = entry[column]
        if isinstance(number, int):
            found[number] = name
    return found


def build(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions for MACHINE (default: this one)."""
    machine = machine or os.uname().machine  # platform.machine()'s answer, without platform's import (~1.5 ms)
    if machine not in _ARCHES:
        raise OSError(errno.ENOTSUP, f"no seccomp filter for machine {machine!r}")
    native, column, compat = _ARCHES[machine]
    refuse = (_RET_K, 0, 0, SECCOMP_RET_ERRNO | REFUSED_ERRNO)
    allow = (_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    numbers = sorted(n for entry in DENIED.values() if isinstance(n := entry[column], int))
    flagged = [
        (n, int(entry[2]), int(entry[3]))
        for entry in DENIED_FLAGS.values()
        if isinstance(n := entry[column], int)
    ]

    # Body, after the arch check has loaded the number into A. Jumps are relative to the next
    # instruction; each test is written knowing how many instructions follow it.
    body: list[tuple[int, int, int, int]] = []
    if machine == "x86_64":
        # nr -1 is what a tracer sets to skip a call: let the kernel answer it (ENOSYS).
        body.append((_JEQ_K, 0, 0, 0xFFFFFFFF))  # jt patched below: to "allow"
        body.append((_JGE_K, 0, 0, X32_SYSCALL_BIT))  # jt patched below: to "refuse"
    tests_start = len(body)
    for number in numbers:
        body.append((_JEQ_K, 0, 0, number))  # jt patched below: to "refuse"
    # Argument checks: if nr matches, load the argument and test the flag.
    flag_blocks = []
    for number, arg, flag in flagged:
        flag_blocks.append(len(body))
        body.append((_JEQ_K, 0, 3, number))  # not this call: skip the next three
        body.append((_LD_W_ABS, 0, 0, _offset_arg_low(arg)))
        body.append((_JSET_K, 0, 0, flag))  # jt patched below: to "refuse"
        body.append((_LD_W_ABS, 0, 0, _OFFSET_NR))  # A back to nr for the tests after
    allow_at = len(body)
    body.append(allow)
    refuse_at = len(body)
    body.append(refuse)

    def to(target: int, at: int) -> int:
        offset = target - at - 1
        if not 0 <= offset <= 255:
            raise AssertionError("seccomp filter too long for a classic-BPF jump")
        return offset

    if machine == "x86_64":
        body[0] = (_JEQ_K, to(allow_at, 0), 0, 0xFFFFFFFF)
        body[1] = (_JGE_K, to(refuse_at, 1), 0, X32_SYSCALL_BIT)
    for i in range(tests_start, tests_start + len(numbers)):
        code, _, jf, k = body[i]
        body[i] = (code, to(refuse_at, i), jf, k)
    for start in flag_blocks:
        code, _, jf, k = body[start + 2]
        body[start + 2] = (code, to(refuse_at, start + 2), jf, k)

    head = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 0, 0, native),  # jf patched: to the other-arch tail
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    tail = [
        (_JEQ_K, 0, 1, compat),  # the compat ABI: refused whole, with the same errno
        refuse,
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # an ABI this kernel should not even have
    ]
    head[1] = (_JEQ_K, 0, len(head) - 2 + len(body), native)
    return head + body + tail


def pack(program: list[tuple[int, int, int, int]]) -> bytes:
    """struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def run_filter(program: list[tuple[int, int, int, int]], nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate PROGRAM for one call the way the kernel would (only the opcodes build uses);
    for tests and for reading the policy."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == _LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == _RET_K:
            return k
        elif code in (_JEQ_K, _JGE_K, _JSET_K):
            taken = {_JEQ_K: acc == k, _JGE_K: acc >= k, _JSET_K: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise ValueError(f"opcode {code:#x} not supported")


# Made once in the engine (a symbol lookup costs tens of microseconds in each forked child).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.POINTER(_SockFprog), ctypes.c_ulong, ctypes.c_ulong]


def _prepare() -> tuple[list, object, _SockFprog] | None:
    try:
        program = build()
    except OSError:
        return None  # a machine without a filter: install() says so, at start
    buffer = ctypes.create_string_buffer(pack(program))
    return program, buffer, _SockFprog(len(program), ctypes.addressof(buffer))


# Built once per engine process, at import: forked children only install it.
_PREPARED = _prepare()


def install() -> None:
    """Confine this process and everything it will run; call last before execve."""
    if _PREPARED is None:
        raise OSError(errno.ENOTSUP, f"no seccomp filter for machine {os.uname().machine!r}")
    fprog = _PREPARED[2]
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"installing the seccomp filter: {os.strerror(err)}")
