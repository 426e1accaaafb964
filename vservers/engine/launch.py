"""Starting a VPS: from a stopped server on disk to its init running as PID 1.

No process of ours stays behind: the engine forks a setup child that builds the mounts and
namespaces, forks the guest's init, and exits, so init is adopted by the host's init (or the
nearest subreaper) like any daemon. Every mount lives only in the VPS's mount namespaces, and
the loop device has autoclear set, so when the VPS's last process dies the kernel removes all
of it by itself: a crash of the engine at any line cannot leave a mount or loop device behind.

The order matters, and is the one that works on this kernel (see KERNEL-FACTS):
 1. setup child (host root): move itself into the VPS's cgroups, unshare a private mount
    namespace, loop-mount the VPS's disk image; meanwhile the engine makes a user namespace
    mapping 0..65535 to the VPS's host range and hands it over;
 2. setup child: mount the template idmapped through that user namespace, and the overlay
    (template below, the disk's upper dir on top);
 3. setup child: enter the user namespace, unshare mount, UTS, IPC, net, cgroup and PID
    namespaces (now owned by the guest's root), set the hostname, fork init;
 4. init-to-be (PID 1): mount /proc, /sys, /dev, /run, pivot_root into the overlay, wait
    until the engine has wired the network, then exec the template's init;
 5. engine: wires a veth into the new network namespace, records the runtime state, says go.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import capabilities, loopdev, seccomp, syscalls, userns
from .errors import EngineError
from .syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_SET_DUMPABLE,
)

DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# Host state under /proc and /sys that a VPS must neither see nor change (the OCI runtime spec's
# defaults). Masked: a file gets /dev/null bound over it, a directory an empty read-only tmpfs.
# Read-only: bound onto itself and remounted read-only. /proc/sys stays writable below net/
# only, like LXC's proc:mixed: every file there belongs to the VPS's own network namespace.
# Mounted by the guest's root, these are a first layer: the guest's root could unmount them;
# under them the host's files are still owned by host root and guarded by capabilities of the
# host's user namespace (see tests/engine/test_escape.py).
MASKED_PATHS = (
    "proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats", "proc/sched_debug",
    "proc/scsi", "proc/timer_list", "proc/timer_stats", "sys/firmware", "sys/devices/virtual/powercap",
)
READ_ONLY_PATHS = ("proc/bus", "proc/fs", "proc/irq", "proc/sysrq-trigger")


def _present_on_host(paths: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """(path, is a directory) of the entries this kernel has: the guest's fresh /proc and /sys
    show the same ones."""
    return tuple((path, os.path.isdir(f"/{path}")) for path in paths if os.path.lexists(f"/{path}"))


# Looked up once per engine process, as a failed lookup in /proc costs about as much as a
# mount; at first use, not import, so the web process can import the engine without /proc.
@functools.cache
def _masked_present() -> tuple[tuple[str, bool], ...]:
    return _present_on_host(MASKED_PATHS)


@functools.cache
def _read_only_present() -> tuple[str, ...]:
    return tuple(path for path, _ in _present_on_host(READ_ONLY_PATHS))


def __getattr__(name: str) -> object:
    # launch._MASKED_PRESENT was a module constant; tests/engine/test_escape.py still reads it.
    if name == "_MASKED_PRESENT":
        return _masked_present()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LaunchPlan:
    hostname: str
    uid_base: int
    template_rootfs: Path
    image: Path
    disk_dir: Path  # mount point of the disk image (private to the VPS)
    lower_dir: Path  # mount point of the idmapped template
    rootfs_dir: Path  # mount point of the overlay
    init_argv: tuple[str, ...]
    join_cgroups: Callable[[], None]  # moves the calling (single-threaded) process in
    network_admin: bool = False  # root inside keeps CAP_NET_ADMIN (see capabilities.py)


@dataclass(frozen=True)
class Launched:
    init_pid: int
    loop_device: str


def launch(plan: LaunchPlan, wire_network: Callable[[int], None], record: Callable[[Launched], None]) -> Launched:
    """Start the guest; WIRE_NETWORK(init_pid) runs before init is exec'd, RECORD before go.

    On failure the half-started guest is killed (which releases its mounts) and EngineError
    is raised; the caller removes cgroups and veths.
    """
    # Looked up in the engine, where the answer is kept, not in each forked child that uses it.
    _masked_present()
    _read_only_present()
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    to_setup, setup_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    setup_pid = os.fork()
    if setup_pid == 0:
        os.close(report_r)
        os.close(go_w)
        to_setup.close()
        _child_main(report_w, lambda: _setup_child(plan, report_w, go_r, setup_end))
    os.close(report_w)
    os.close(go_r)
    setup_end.close()
    launched: Launched | None = None
    try:
        # The setup child joins its cgroups and loop-mounts the disk meanwhile; it waits for
        # "j" and the user namespace before it mounts the template and makes the namespaces.
        with to_setup:
            userns_fd = userns.create(plan.uid_base)
            try:
                socket.send_fds(to_setup, [b"j"], [userns_fd])
            finally:
                os.close(userns_fd)
        with os.fdopen(report_r, "r", closefd=True) as report:
            messages = _read_until_pid(report)
            os.waitpid(setup_pid, 0)
            setup_pid = 0
            if "pid" not in messages:
                raise EngineError(messages.get("error", "setup of the guest failed without a message"))
            launched = Launched(init_pid=int(messages["pid"]), loop_device=messages.get("loop", ""))
            try:
                wire_network(launched.init_pid)
                record(launched)
            except BaseException as exc:
                # If init died while we wired it, its own error says more than ours.
                kill_and_wait(launched.init_pid)
                early = _parse(report.read()).get("error")
                if early:
                    raise EngineError(early) from exc
                raise
            try:
                os.write(go_w, b"g")
            except BrokenPipeError:
                pass  # init died early; its error is on the report pipe
            os.close(go_w)
            go_w = -1
            rest = report.read()  # EOF when init has exec'd (the pipe is close-on-exec)
            if rest.strip():
                raise EngineError(_parse(rest).get("error", rest.strip()))
        return launched
    except BaseException:
        if launched is not None:
            kill_and_wait(launched.init_pid)
        raise
    finally:
        if go_w >= 0:
            os.close(go_w)
        if setup_pid:
            os.waitpid(setup_pid, 0)


def _parse(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, value)
    return found


def _read_until_pid(report) -> dict[str, str]:
    messages: dict[str, str] = {}
    for line in report:
        key, _, value = line.rstrip("\n").partition(" ")
        messages.setdefault(key, value)
        if key in ("pid", "error"):
            break
    return messages


def _child_main(report_w: int, body: Callable[[], None]) -> None:
    """Run BODY in a forked child; report any exception on the pipe; never return."""
    code = 0
    try:
        body()
    except BaseException as exc:  # noqa: BLE001 - everything must reach the engine
        code = 1
        text = f"{exc}" if isinstance(exc, OSError | EngineError) else traceback.format_exc(limit=3)
        try:
            os.write(report_w, f"error {' '.join(text.split())}\n".encode())
        except OSError:
            pass
    os._exit(code)


def _setup_child(plan: LaunchPlan, report_w: int, go_r: int, engine: socket.socket) -> None:
    # First of all: everything from here on, init included, is the VPS's (and its cgroup
    # namespace will be rooted here).
    plan.join_cgroups()
    syscalls.unshare(CLONE_NEWNS)
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    loop_device = _mount_disk(plan)
    os.write(report_w, f"loop {loop_device}\n".encode())
    message, fds, _flags, _address = socket.recv_fds(engine, 1, 1)
    engine.close()
    if message != b"j" or len(fds) != 1:
        raise EngineError("start aborted by the engine")
    userns_fd = fds[0]
    syscalls.idmapped_clone(plan.template_rootfs, plan.lower_dir, userns_fd)
    syscalls.mount(
        "overlay",
        plan.rootfs_dir,
        "overlay",
        0,
        f"lowerdir={plan.lower_dir},upperdir={plan.disk_dir}/upper,workdir={plan.disk_dir}/work",
    )
    # The VPS's share of pending signals and message queue bytes per process, as hard limits
    # set while we are still host root: init and all it starts inherit them and cannot raise
    # them (the VPS's total is capped by its user namespaces, see userns.py).
    userns.set_rlimits()
    syscalls.setns(userns_fd, CLONE_NEWUSER)
    os.close(userns_fd)
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)
    syscalls.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWPID)
    socket.sethostname(plan.hostname)
    init_pid = os.fork()
    if init_pid == 0:
        _child_main(report_w, lambda: _init_child(plan, go_r, report_w))
    os.write(report_w, f"pid {init_pid}\n".encode())


def _mount_disk(plan: LaunchPlan) -> str:
    device, device_fd = loopdev.attach(plan.image)
    try:
        syscalls.mount(device, plan.disk_dir, "ext4", MS_NODEV)
    finally:
        os.close(device_fd)  # from here the mount alone keeps the device; autoclear frees it
    for sub in ("upper", "work"):
        path = plan.disk_dir / sub
        if not path.is_dir():
            path.mkdir(mode=0o755)
            os.chown(path, plan.uid_base, plan.uid_base)
    return device


def _init_child(plan: LaunchPlan, go_r: int, report_w: int) -> None:
    """PID 1 of the new namespace, still running our code until it execs the guest's init."""
    syscalls.prctl(PR_SET_DUMPABLE, 0)
    root = plan.rootfs_dir
    # Mounts made by host root arrive locked in the guest's mount namespace, and pivot_root
    # refuses a locked new root; a bind of the overlay onto itself made here is not locked.
    syscalls.mount(str(root), root, None, MS_BIND)
    mount_guest_filesystems(root)
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    syscalls.umount(".", MNT_DETACH)
    os.chdir("/")
    if os.read(go_r, 1) != b"g":  # the engine died or gave up: leave nothing running
        raise EngineError("start aborted by the engine")
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # A session of its own: a signal to the engine's process group (Ctrl-C in the operator's
    # terminal, a service manager stopping the worker) must not reach the guest.
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # Nothing of the host may leak in; the report pipe is close-on-exec, so it stays only
    # until exec succeeds and still carries an exec failure back to the engine.
    os.closerange(3, report_w)
    os.closerange(report_w + 1, os.sysconf("SC_OPEN_MAX"))
    env = {"PATH": GUEST_PATH, "HOME": "/root", "TERM": "linux", "container": "vserver"}
    # Last before exec: the bounding set and the seccomp filter hold for init and everything it
    # starts (see capabilities.py, seccomp.py); guest.py does the same for exec'd programs.
    capabilities.drop(capabilities.guest_bounding_set(plan.network_admin))
    seccomp.install()
    os.execve(plan.init_argv[0], list(plan.init_argv), env)


def mount_guest_filesystems(root: Path) -> None:
    """The guest's own /proc, read-only /sys, minimal /dev with its own devpts, /dev/shm,
    POSIX message queues and /run; run as the guest's root inside its namespaces."""
    nosuid_nodev_noexec = MS_NOSUID | MS_NODEV | MS_NOEXEC
    syscalls.mount("proc", root / "proc", "proc", nosuid_nodev_noexec)
    syscalls.mount("sysfs", root / "sys", "sysfs", nosuid_nodev_noexec | MS_RDONLY)
    _mask_host_state(root)
    dev = root / "dev"
    # nodev: the device nodes below are mounts of their own; nothing else here may be one.
    syscalls.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=1024k")
    for node in (*DEVICE_NODES, "console"):
        target = dev / node
        target.touch(mode=0o666)
        # mknod is refused in a user namespace, so the host's nodes are bind-mounted.
        syscalls.mount("/dev/null" if node == "console" else f"/dev/{node}", target, None, MS_BIND)
    (dev / "pts").mkdir()
    syscalls.mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620,gid=5")
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "fd").symlink_to("/proc/self/fd")
    for number, stream in enumerate(("stdin", "stdout", "stderr")):
        (dev / stream).symlink_to(f"/proc/self/fd/{number}")
    (dev / "shm").mkdir(mode=0o1777)
    syscalls.mount("tmpfs", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    (dev / "mqueue").mkdir()
    syscalls.mount("mqueue", dev / "mqueue", "mqueue", nosuid_nodev_noexec)
    syscalls.mount("tmpfs", root / "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")


def _mask_host_state(root: Path) -> None:
    """Mask and make read-only the host's entries of the guest's fresh /proc and /sys."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    base = f"{root}/"
    for relative, is_dir in _masked_present():
        if is_dir:
            syscalls.mount("tmpfs", base + relative, "tmpfs", flags | MS_RDONLY, "mode=555,size=4k,nr_inodes=1")
        else:
            syscalls.mount("/dev/null", base + relative, None, MS_BIND)
    for relative in _read_only_present():
        _bind_read_only(base + relative, flags)
    proc_sys = base + "proc/sys"
    syscalls.mount(proc_sys + "/net", proc_sys + "/net", None, MS_BIND)  # stays writable
    _bind_read_only(proc_sys, flags, MS_REC)  # carries the writable net/ along


def _bind_read_only(path: str, flags: int, recursive: int = 0) -> None:
    syscalls.mount(path, path, None, MS_BIND | recursive)
    syscalls.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until PID has exited (any process, not only our children); True if it did."""
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


def reap(pid: int) -> None:
    """Collect PID's exit status if it is our child (we may be its subreaper)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait_exit(pid, timeout):
        raise EngineError(f"process {pid} did not die after SIGKILL")
