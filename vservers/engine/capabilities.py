"""The capabilities a VPS's processes can never have: dropped from the bounding set before the
guest's init and every program the engine runs inside (exec, accounts, services, enter).

Root of a VPS holds every capability, but only in the VPS's own user namespace: what it can
reach with them is what that namespace owns (its network, mounts, hostname, IPC, processes).
Each capability dropped below guards only host-wide state, and on this kernel every check of it
is made against the host's user namespace, so a VPS loses nothing it could use; dropping them is
defence in depth against a kernel bug that checks one against the wrong namespace.

Reference: LXC's `lxc.cap.drop = mac_admin mac_override sys_time sys_module sys_rawio`
(common.conf), plus what the OCI/Docker default set leaves out and is host-wide. Kept on purpose,
unlike Docker's default set, because a VPS is a whole system with its own administrator:
CAP_SYS_ADMIN (mounts inside), CAP_SYS_PTRACE (strace,
gdb), CAP_SYS_BOOT (see below), CAP_SYS_NICE, CAP_SYS_RESOURCE, CAP_AUDIT_WRITE (login and
sshd send audit records; the kernel refuses them from a user namespace, which they tolerate),
CAP_MKNOD (the kernel refuses device nodes in a user namespace anyway; FIFOs need no cap),
CAP_SETFCAP (packages set file capabilities, e.g. ping).

CAP_SYS_BOOT stays: reboot(2) from a PID namespace other than the host's ends that namespace
instead of the machine, and it needs CAP_SYS_BOOT in the namespace's owner. That is how the
templates' init finishes a shutdown (busybox init after SIGUSR2 from `vserver stop`, sysvinit's
`halt -f -p` in Debian), and how a guest `reboot` restarts the VPS.

CAP_NET_ADMIN goes too unless the server's plan has "network admin inside" (``network_admin``),
as OpenVZ does by default: the engine sets the guest's addresses and routes from outside, and
what CAP_NET_ADMIN over its own network namespace reaches is charged to no cgroup (permanent
neighbour entries: ~150 MB of host slab per 300,000, exempt from the table's limit; see
docs/security.md, "Network defences"). Without it the guest cannot change its addresses, routes,
neighbours, links, traffic control or firewall, nor write /proc/sys/net.

Setuid programs still work inside (no no_new_privs): exec gives root's programs the bounding set
at most, so `su` and `passwd` get what they need and never a dropped capability.
"""

from __future__ import annotations

import ctypes
import errno
import os

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# number: (name, why no VPS may have it)
DROPPED: dict[int, tuple[str, str]] = {
    16: ("CAP_SYS_MODULE", "load and unload kernel modules: code in the kernel every VPS shares"),
    17: ("CAP_SYS_RAWIO", "raw I/O ports, /dev/mem, /proc/kcore, FIBMAP: the host's hardware and memory"),
    20: ("CAP_SYS_PACCT", "switch the host's process accounting"),
    25: ("CAP_SYS_TIME", "set the clock: there is one for the whole host"),
    30: ("CAP_AUDIT_CONTROL", "configure the host's audit subsystem"),
    32: ("CAP_MAC_OVERRIDE", "override the host's mandatory access control (LSM) policy"),
    33: ("CAP_MAC_ADMIN", "change the host's LSM policy"),
    34: ("CAP_SYSLOG", "read or clear the kernel log: the host's, with other VPSs' events"),
    35: ("CAP_WAKE_ALARM", "set alarms that wake the host from suspend"),
    36: ("CAP_BLOCK_SUSPEND", "keep the host from suspending"),
    37: ("CAP_AUDIT_READ", "read the host's audit log over netlink"),
    38: ("CAP_PERFMON", "performance monitoring of the host's CPUs and processes"),
    39: ("CAP_BPF", "load BPF programs and maps: host-wide kernel objects"),
}
NAMES = {name: number for number, (name, _) in DROPPED.items()}
CAP_NET_ADMIN = 12

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


# Everything ctypes needs is made here, in the engine, once: looking a symbol up or making an
# array type costs tens of microseconds in each freshly forked child otherwise.
_libc = ctypes.CDLL(None, use_errno=True)  # glibc's prctl, capget, capset: the raw calls
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_capget = _libc.capget
_capset = _libc.capset
_CapDataPair = _CapData * 2
_capget.argtypes = _capset.argtypes = [ctypes.POINTER(_CapHeader), _CapDataPair]
_DROP_MASK = sum(1 << number for number in DROPPED)


def _fail(what: str):
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        return int(fh.read())


# Read once, on the host, when the engine imports this module: drop() runs where /proc is the
# guest's own mount, whose files its root could replace.
_ALL_CAPS = (1 << (last_cap() + 1)) - 1


def guest_bounding_set(network_admin: bool = False) -> int:
    """The bounding set of every process of a VPS: all capabilities but DROPPED, and but
    CAP_NET_ADMIN unless NETWORK_ADMIN."""
    keep = _ALL_CAPS & ~_DROP_MASK
    return keep if network_admin else keep & ~(1 << CAP_NET_ADMIN)


def drop(keep: int | None = None) -> None:
    """Leave in this process's bounding set only what is in KEEP (a mask; by default
    guest_bounding_set(), the stricter one) and never DROPPED, and clear the rest from its
    inheritable and ambient sets, through which a capability could otherwise survive execve.
    Needs CAP_SETPCAP in the current user namespace (the guest's root has it); takes effect for
    whatever this process execs. Programs run inside by exec pass the bounding set of the VPS's
    init, so they get exactly what the init got."""
    if keep is None:
        keep = guest_bounding_set()
    gone = ~keep | _DROP_MASK
    for number in range(_ALL_CAPS.bit_length()):
        if not gone >> number & 1:
            continue
        # EINVAL: a capability this (older) kernel does not know, so nobody can have it.
        if _prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            name = DROPPED[number][0] if number in DROPPED else f"capability {number}"
            _fail(f"dropping {name} from the bounding set")
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        _fail("clearing the ambient capabilities")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    if _capget(header, data) != 0:
        _fail("capget")
    inheritable = data[0].inheritable | (data[1].inheritable << 32)
    if inheritable & gone:
        inheritable &= ~gone
        data[0].inheritable = inheritable & 0xFFFFFFFF
        data[1].inheritable = inheritable >> 32
        if _capset(header, data) != 0:
            _fail("capset")


def bounding_set(pid: int | str = "self") -> int:
    """The bounding set of process PID as a bit mask (CapBnd in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapBnd in /proc/{pid}/status")
