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
    namespaces (now owned by the guest's root), set the hostname, fork init, hand the engine
    an fd of the network namespace and a netlink socket in it, then put the guest's network
    guard in place there (firewall.guard_here) and exit;
 4. init-to-be (PID 1): mount /proc, /sys, /dev, /run on fds opened inside the overlay (no
    guest link is ever followed), pivot_root into it, wait until the engine has wired the
    network, then exec the template's init;
 5. engine: wires a veth into the new network namespace, records the runtime state, says go
    once the guard is in place.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import capabilities, firewall, loopdev, ptys, seccomp, syscalls, userns
from .errors import EngineError
from .procfs import wait_exit, write_sysctls
from .rescue import RescueLayers
from .spec import GUEST_PATH
from .syscalls import (
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MS_BIND,
    MS_NODEV,
    MS_PRIVATE,
    MS_REC,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    PR_SET_DUMPABLE,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_SYMLINKS,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from .forker import ForkServer

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


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the forked children of a start need, decided by the engine beforehand."""

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
    direct_io: bool = False  # attach the disk with direct I/O where the kernel can (loopdev.py)
    # The btrfs backend's (upper, work) directories, used instead of the image's.
    upper_work: tuple[Path, Path] | None = None
    # Rescue mode (rescue.py): the root is the rescue system, the overlay above at /mnt.
    rescue: RescueLayers | None = None
    # (path under /proc/sys/net, value) written in the guest's network namespace as soon as it
    # exists, before any interface is made there (defaults that its interfaces start with).
    netns_sysctls: tuple[tuple[str, str], ...] = ()

    @property
    def root_dir(self) -> Path:
        """What the guest's init pivots into."""
        return self.rescue.root_dir if self.rescue is not None else self.rootfs_dir


@dataclass(frozen=True)
class Launched:
    """What a start made: the guest's init and the loop device its disk is on."""

    init_pid: int
    loop_device: str
    buffered_reason: str = ""  # why the disk is buffered although direct I/O was asked for


def launch(plan: LaunchPlan, wire_network: Callable[[int, int, socket.socket], None],
           record: Callable[[Launched], None], forker: ForkServer | None = None) -> Launched:
    """Start the guest; WIRE_NETWORK(init_pid, netns_fd, route) runs before init is exec'd,
    RECORD before go. NETNS_FD is an fd of the guest's network namespace and ROUTE a
    NETLINK_ROUTE socket opened in it (both closed after WIRE_NETWORK; it may close ROUTE
    itself), where the setup child has put firewall.GUEST_GUARD in place. With FORKER,
    the user namespace's helpers and the setup child are forked by that fork server
    (forker.py), and PLAN must pickle.

    On failure the half-started guest is killed (which releases its mounts) and EngineError
    is raised; the caller removes cgroups and veths.
    """
    # Looked up in the engine, where the answer is kept, not in each forked child that uses it.
    _masked_present()
    _read_only_present()
    # The setup child is forked first: its cgroup join and loop mount are the longer way to the
    # template's mount; the user namespace (two forked helpers, one inside the other) is made
    # meanwhile, and is ready before the setup child asks for it.
    creation: userns.Creation | None = None
    setup_pid = 0
    go_w = -1
    launched: Launched | None = None
    try:
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        to_setup, setup_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        if forker is not None:
            forker.fork(_setup_main, [report_w, go_r, setup_end.fileno()], plan)  # the server reaps it
        else:
            setup_pid = os.fork()
            if setup_pid == 0:
                # Another thread of the engine (start_many) may hold the pipes of its own start
                # open: copies kept here would hold back the EOFs its start waits for, until
                # this child and its init are gone.
                syscalls.close_fds_except(report_w, go_r, setup_end.fileno())
                _setup_main(report_w, go_r, setup_end.fileno(), plan)
        os.close(report_w)
        os.close(go_r)
        setup_end.close()
        # The setup child waits for "j" and the user namespace before it mounts the template
        # and makes the namespaces; it sends back the handles on the network namespace.
        with to_setup:
            creation = userns.Creation(plan.uid_base, userns.limits_for(plan.network_admin), forker)
            userns_fd = creation.finish()
            try:
                socket.send_fds(to_setup, [b"j"], [userns_fd])
            finally:
                os.close(userns_fd)
            with os.fdopen(report_r, "r", closefd=True) as report:
                messages = _read_until(report, "pid")
                if "pid" not in messages:
                    if setup_pid:
                        os.waitpid(setup_pid, 0)  # its error is all it wrote
                        setup_pid = 0
                    raise EngineError(messages.get("error", "setup of the guest failed without a message"))
                launched = Launched(init_pid=int(messages["pid"]), loop_device=messages.get("loop", ""),
                                    buffered_reason=messages.get("buffered", ""))
                try:
                    netns_fd, route = _receive_netns(to_setup)
                    try:
                        wire_network(launched.init_pid, netns_fd, route)
                    finally:
                        route.close()
                        os.close(netns_fd)
                    record(launched)
                    guarded = _read_until(report, "guarded")
                    if "guarded" not in guarded:
                        raise EngineError(guarded.get("error", "the setup of the guest ended before its network guard"))
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
                # EOF when init has exec'd (the pipe is close-on-exec) and the setup child, which
                # exits once it has put the guard in place, is gone.
                rest = report.read()
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
        # Reaped last: their exits (a copy of this process's memory each to tear down) need
        # not hold back the guest's start.
        if setup_pid:
            os.waitpid(setup_pid, 0)
        if creation is not None:
            creation.reap()


def _parse(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, value)
    return found


def _receive_netns(to_setup: socket.socket) -> tuple[int, socket.socket]:
    """The fd of the guest's network namespace and the NETLINK_ROUTE socket in it, which the
    setup child sent before it reported init's pid."""
    _message, fds, _flags, _address = socket.recv_fds(to_setup, 1, 2, socket.MSG_DONTWAIT)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise EngineError("the setup of the guest sent no handle on its network namespace")
    return fds[0], socket.socket(fileno=fds[1])


def _read_until(report, wanted: str) -> dict[str, str]:
    """The report's messages by key, read up to the WANTED one or an error (or its end)."""
    messages: dict[str, str] = {}
    for line in report:
        key, _, value = line.rstrip("\n").partition(" ")
        messages.setdefault(key, value)
        if key in (wanted, "error"):
            break
    return messages


def _child_main(report_w: int, body: Callable[[], None]) -> None:
    """Run BODY in a forked child; report any exception on the pipe; never return."""
    code = 0
    try:
        body()
    except BaseException as exc:  # noqa: BLE001 - everything must reach the engine
        code = 1
        if isinstance(exc, OSError | EngineError):
            text = f"{exc}"
        else:
            import traceback  # in the child, on failure only: a start need not import it (~1 ms)

            text = traceback.format_exc(limit=3)
        try:
            os.write(report_w, f"error {' '.join(text.split())}\n".encode())
        except OSError:
            pass
    os._exit(code)


def _setup_main(report_w: int, go_r: int, engine_fd: int, plan: LaunchPlan) -> None:
    """The setup child, forked with only these fds open; never returns."""
    engine = socket.socket(fileno=engine_fd)
    _child_main(report_w, lambda: _setup_child(plan, report_w, go_r, engine))


def _setup_child(plan: LaunchPlan, report_w: int, go_r: int, engine: socket.socket) -> None:
    # First of all: everything from here on, init included, is the VPS's (and its cgroup
    # namespace will be rooted here).
    plan.join_cgroups()
    syscalls.unshare(CLONE_NEWNS)
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    if plan.upper_work is None:
        loop_device, buffered_reason = _mount_disk(plan)
        os.write(report_w, f"loop {loop_device}\n".encode())
        if buffered_reason:
            os.write(report_w, f"buffered {' '.join(buffered_reason.split())}\n".encode())
        upper, work = plan.disk_dir / "upper", plan.disk_dir / "work"
    else:  # the btrfs backend (qgroups.py): directories of the server's subvolume, no disk to mount
        upper, work = plan.upper_work
    message, fds, _flags, _address = socket.recv_fds(engine, 1, 1)
    if message != b"j" or len(fds) != 1:
        raise EngineError("start aborted by the engine")
    userns_fd = fds[0]
    syscalls.idmapped_clone(plan.template_rootfs, plan.lower_dir, userns_fd)
    syscalls.mount(
        "overlay",
        plan.rootfs_dir,
        "overlay",
        0,
        f"lowerdir={plan.lower_dir},upperdir={upper},workdir={work}",
    )
    if plan.rescue is not None:
        plan.rescue.mount(plan.uid_base, userns_fd)
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
    # Handles on the new network namespace for the engine, which wires it (launch): opened
    # here, they spare it entering the namespace in a thread of its own. /proc/sys/net shows
    # the opener's namespace: the guest's.
    netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    write_sysctls(plan.netns_sysctls)
    init_pid = os.fork()
    if init_pid == 0:
        _child_main(report_w, lambda: _init_child(plan, go_r, report_w))
    socket.send_fds(engine, [b"n"], [netns, route.fileno()])
    os.write(report_w, f"pid {init_pid}\n".encode())
    # The guest's first network rules, while the engine wires eth0 and init mounts /proc and
    # the rest: the engine lets init go once it has read "guarded".
    firewall.guard_here()
    os.write(report_w, b"guarded\n")


def _mount_disk(plan: LaunchPlan) -> tuple[str, str]:
    """Loop-mount the disk; returns its device and why it is buffered against the plan, if so."""
    attached = loopdev.attach_image(plan.image, direct_io=plan.direct_io)
    device = attached.device
    try:
        syscalls.mount(device, plan.disk_dir, "ext4", MS_NODEV)
    finally:
        os.close(attached.fd)  # from here the mount alone keeps the device; autoclear frees it
    for sub in ("upper", "work"):
        path = plan.disk_dir / sub
        if not path.is_dir():
            path.mkdir(mode=0o755)
            os.chown(path, plan.uid_base, plan.uid_base)
    return device, attached.buffered_reason


def _init_child(plan: LaunchPlan, go_r: int, report_w: int) -> None:
    """PID 1 of the new namespace, still running our code until it execs the guest's init."""
    syscalls.prctl(PR_SET_DUMPABLE, 0)
    root = plan.root_dir
    # Mounts made by host root arrive locked in the guest's mount namespace, and pivot_root
    # refuses a locked new root; a bind of the overlay onto itself made here is not locked.
    syscalls.mount(str(root), root, None, MS_BIND)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if plan.rescue is not None:
            # The server's own overlay, read-write at /mnt of the rescue system. A bind made
            # here, not by host root: the rescue root's self-bind above would not carry a
            # locked mount below it along.
            mnt = _open_in_guest(root_fd, "mnt", os.O_DIRECTORY)
            try:
                _bind_host(str(plan.rootfs_dir), mnt, "/mnt")
            finally:
                os.close(mnt)
        mount_guest_filesystems(root_fd)
        os.fchdir(root_fd)
    finally:
        os.close(root_fd)
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


# Every path below the guest's root is the guest's to shape (its upper layer is written by its
# root, and survives a stop), but these mounts are made before the pivot, while "/" is still
# the host's. So no path of the guest is ever given to mount(2): each target is opened with
# openat2 inside the guest's root, following no symlink at all (RESOLVE_NO_SYMLINKS also
# refuses /proc/self/... magic links), and the new mount is attached to that fd with
# move_mount. Nothing in the guest's tree can send a mount, a device node or a link to the host.
_IN_GUEST_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS
# Where the engine mounts the guest's kernel filesystems. Whatever the guest left there is
# hidden under those mounts while it runs, so an entry that is not a directory (a link, a file)
# is replaced by an empty directory inside the guest's root: a customer who broke /dev gets a
# server that boots, and the engine never touches what the link pointed to.
GUEST_MOUNT_POINTS = ("proc", "sys", "dev", "run")
_NOSUID_NODEV_NOEXEC = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC


def _open_in_guest(root_fd: int, path: str, flags: int = 0) -> int:
    """An O_PATH fd of PATH (relative, below the guest's root) found without following any link."""
    try:
        return syscalls.openat2(root_fd, path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | flags, _IN_GUEST_ROOT)
    except OSError as exc:
        raise EngineError(f"cannot open /{path} in the guest: {exc.strerror}") from exc


def _guest_mount_point(root_fd: int, name: str) -> int:
    """An O_PATH fd of the directory /NAME of the guest, made one if it is anything else."""
    try:
        fd = syscalls.openat2(root_fd, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, _IN_GUEST_ROOT)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EngineError(f"cannot open /{name} in the guest: {exc.strerror}") from exc
    else:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        try:
            os.unlink(name, dir_fd=root_fd)  # unlinkat: the link or file itself, never its target
        except OSError as exc:
            raise EngineError(f"cannot replace /{name} of the guest (not a directory): {exc.strerror}") from exc
    try:
        os.mkdir(name, 0o755, dir_fd=root_fd)
    except OSError as exc:
        raise EngineError(f"cannot make /{name} in the guest: {exc.strerror}") from exc
    return _open_in_guest(root_fd, name, os.O_DIRECTORY)


def _attach(mount_fd: int, target_fd: int, what: str) -> None:
    try:
        syscalls.move_mount_fd(mount_fd, target_fd, what)
    finally:
        os.close(mount_fd)


def _bind_host(source: str, target_fd: int, what: str) -> None:
    """Bind the host's SOURCE (an absolute path of the host, looked up before the pivot) on
    TARGET_FD."""
    _attach(syscalls.open_tree(source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), target_fd, what)


def mount_guest_filesystems(root_fd: int) -> None:
    """The guest's own /proc, read-only /sys, minimal /dev with its own devpts, /dev/shm,
    POSIX message queues and /run, on the guest's root ROOT_FD (an O_PATH fd); run as the
    guest's root inside its namespaces, before the pivot."""
    points = {name: _guest_mount_point(root_fd, name) for name in GUEST_MOUNT_POINTS}
    try:
        _attach(syscalls.new_mount("proc", {}, _NOSUID_NODEV_NOEXEC), points["proc"], "/proc")
        sysfs = syscalls.new_mount("sysfs", {"ro": None}, _NOSUID_NODEV_NOEXEC | MOUNT_ATTR_RDONLY)
        _attach(sysfs, points["sys"], "/sys")
        _mask_host_state(root_fd)
        # nodev: the device nodes below are mounts of their own; nothing else here may be one.
        dev = syscalls.new_mount("tmpfs", {"mode": "755", "size": "1024k"}, _NOSUID_NODEV_NOEXEC)
        try:
            syscalls.move_mount_fd(dev, points["dev"], "/dev")
            _populate_dev(dev)  # the fd is now the root of the attached, still empty tmpfs
        finally:
            os.close(dev)
        _attach(syscalls.new_mount("tmpfs", {"mode": "755"}, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV), points["run"],
                "/run")
    finally:
        for fd in points.values():
            os.close(fd)


def _populate_dev(dev: int) -> None:
    """Fill the guest's fresh /dev tmpfs (DEV: an fd of its root; nothing of the guest is in it)."""
    for node in (*DEVICE_NODES, "console"):
        target = os.open(node, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=dev)
        try:
            # mknod is refused in a user namespace, so the host's nodes are bind-mounted.
            _bind_host("/dev/null" if node == "console" else f"/dev/{node}", target, f"/dev/{node}")
        finally:
            os.close(target)
    for name, mode, fstype, options, attrs in (
        ("pts", 0o755, "devpts", ptys.devpts_options(), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC),
        ("shm", 0o1777, "tmpfs", {"mode": "1777"}, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV),
        ("mqueue", 0o755, "mqueue", {}, _NOSUID_NODEV_NOEXEC),
    ):
        os.mkdir(name, mode, dir_fd=dev)
        target = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dev)
        try:
            _attach(syscalls.new_mount(fstype, options, attrs), target, f"/dev/{name}")
        finally:
            os.close(target)
    os.symlink("pts/ptmx", "ptmx", dir_fd=dev)
    os.symlink("/proc/self/fd", "fd", dir_fd=dev)
    for number, stream in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{number}", stream, dir_fd=dev)


def _mask_host_state(root_fd: int) -> None:
    """Mask and make read-only the host's entries of the guest's fresh /proc and /sys."""
    empty = -1  # one empty read-only tmpfs, cloned onto each masked directory
    try:
        for relative, is_dir in _masked_present():
            target = _open_in_guest(root_fd, relative)
            try:
                if not is_dir:
                    _bind_host("/dev/null", target, f"/{relative}")
                    continue
                if empty < 0:
                    empty = syscalls.new_mount("tmpfs", {"mode": "555", "size": "4k", "nr_inodes": "1", "ro": None},
                                               _NOSUID_NODEV_NOEXEC | MOUNT_ATTR_RDONLY)
                clone = syscalls.open_tree("", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH, empty)
                _attach(clone, target, f"/{relative}")
            finally:
                os.close(target)
    finally:
        if empty >= 0:
            os.close(empty)
    for relative in _read_only_present():
        _bind_read_only(root_fd, relative)
    _bind_read_only(root_fd, "proc/sys/net", read_only=False)  # stays writable: the VPS's own netns
    _bind_read_only(root_fd, "proc/sys", recursive=True)  # carries the writable net/ along


def _bind_read_only(root_fd: int, relative: str, recursive: bool = False, read_only: bool = True) -> None:
    """Bind RELATIVE (below the guest's root) onto itself, read-only unless told otherwise; with
    RECURSIVE the mounts below come along, keeping their own flags."""
    target = _open_in_guest(root_fd, relative)
    try:
        flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
        clone = syscalls.open_tree("", flags, target)
        try:
            if read_only:  # without AT_RECURSIVE: the top mount of the clone only
                syscalls.mount_setattr(clone, MOUNT_ATTR_RDONLY | _NOSUID_NODEV_NOEXEC)
        except BaseException:
            os.close(clone)
            raise
        _attach(clone, target, f"/{relative}")
    finally:
        os.close(target)


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait_exit(pid, timeout):
        raise EngineError(f"process {pid} did not die after SIGKILL")
