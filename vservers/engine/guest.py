"""Running programs inside a VPS: in all its namespaces, its cgroups and its root.

nsenter alone would leave the process in the host's v1 cgroups, so the limits would not
hold for it. A host-side helper opens the server's cgroup.procs files, enters the
namespaces and forks the program (a PID namespace applies to children only); it moves the
program into the cgroups before letting it exec, and stays outside them itself, so it never
counts against the server's limits nor becomes the memory cgroup's OOM victim. The helper
is made non-dumpable before it enters, so the guest's root cannot open its /proc/PID/exe,
fds or cwd (the CVE-2019-5736 class); the helper itself stays in the host's PID namespace, and
its child, visible in the guest until it execs, keeps only fds 0-2 and pipes of its own, with
its cwd and root the guest's (the CVE-2024-21626 class). The program runs with the guest's init's
bounding set (read from the host's /proc before entering) and seccomp filter.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import capabilities, seccomp, syscalls
from .errors import EngineError
from .launch import GUEST_PATH
from .syscalls import CLONE_NEWUSER, PR_SET_DUMPABLE

# The user namespace first: the others are owned by it, and entering it gives us the
# capabilities there that joining them requires.
NAMESPACES = ("user", "mnt", "uts", "ipc", "net", "cgroup", "pid")


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def spawn(
    init_pid: int,
    argv: Sequence[str],
    cgroup_procs: Sequence[Path],
    stdin: int,
    stdout: int,
    stderr: int,
    env: dict[str, str] | None = None,
    pty_socket: int | None = None,
) -> int:
    """Start ARGV inside the VPS whose init is INIT_PID; returns the pid of a host-side
    helper whose exit status is the program's (decode with os.waitstatus_to_exitcode).

    With PTY_SOCKET (a unix socket), the program gets a terminal of the guest's own devpts
    instead of STDIN/STDOUT/STDERR, and the terminal's master end is sent back on the socket.
    """
    if not argv:
        raise EngineError("no command given")
    bounding = capabilities.bounding_set(init_pid)  # the program gets what the init got, no more
    ns_fds = [os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in NAMESPACES]
    environment = {"PATH": GUEST_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "xterm"),
                   "LANG": "C.UTF-8", "container": "vserver"}
    environment.update(env or {})
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.close(error_r)
            procs_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroup_procs]
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            keep = [error_w, go_r, go_w, *ns_fds, *procs_fds] + ([pty_socket] if pty_socket is not None else [])
            _keep_only_fds(stdin, stdout, stderr, keep=keep)
            stdin, stdout, stderr = 0, 1, 2
            syscalls.prctl(PR_SET_DUMPABLE, 0)
            for ns, fd in zip(NAMESPACES, ns_fds, strict=True):
                syscalls.setns(fd, CLONE_NEWUSER if ns == "user" else 0)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            child = os.fork()
            if child == 0:
                # Visible in the guest from here on: hold no handle of the host's (namespace
                # and cgroup files) even for the moment until exec.
                for fd in (go_w, *ns_fds, *procs_fds):
                    os.close(fd)
                os.read(go_r, 1)  # wait until we are in the server's cgroups
                _exec_child(argv, environment, error_w, pty_socket, bounding)
            os.close(go_r)
            for fd in procs_fds:
                os.write(fd, str(child).encode())  # opened as host root: the writer's open-time creds count
                os.close(fd)
            os.write(go_w, b"g")
            os.close(go_w)
            # The program holds its own copy until exec; ours must go, or the engine would
            # wait on this pipe while we wait on the program.
            os.close(error_w)
            error_w = -1
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        except BaseException as exc:  # noqa: BLE001 - report and leave
            if error_w >= 0:
                try:
                    os.write(error_w, f"{exc}".encode())
                except OSError:
                    pass
        os._exit(code)
    for fd in ns_fds:
        os.close(fd)
    os.close(error_w)
    with os.fdopen(error_r, "rb") as errors:
        message = errors.read().decode(errors="replace")
    if message:
        os.waitpid(pid, 0)
        raise EngineError(f"could not run {argv[0]!r} in the server: {message}")
    return pid


def _keep_only_fds(stdin: int, stdout: int, stderr: int, keep: list[int]) -> None:
    """Make STDIN/STDOUT/STDERR this process's 0-2 and close every other fd not in KEEP.

    The helper never execs, so close-on-exec does not help: a pipe end it kept open by
    accident (say the write end of the program's stdin) would make the program wait forever.
    """
    high = [os.dup(fd) for fd in (stdin, stdout, stderr)]  # dup first: the fds may overlap 0-2
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    keep_set = {0, 1, 2, *keep}
    for fd in _open_fds():
        if fd not in keep_set:
            try:
                os.close(fd)
            except OSError:
                pass


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]


def _exec_child(argv, environment, error_w: int, pty_socket: int | None, bounding: int) -> None:
    """In the guest (its namespaces, root and cgroups): set up stdio and exec."""
    try:
        if pty_socket is not None:
            _take_guest_terminal(pty_socket)
        os.closerange(3, error_w)
        os.closerange(error_w + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        # The same confinement as the guest's init (see launch.py), last before exec.
        capabilities.drop(bounding)
        seccomp.install()
        os.execvpe(argv[0], list(argv), environment)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(error_w, f"{exc}".encode())
        except OSError:
            pass
        os._exit(127)


TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431


def _take_guest_terminal(pty_socket: int) -> None:
    """Open a pseudo-terminal on the guest's own devpts (already our /dev: we are inside its
    mount namespace, so no path can lead to a host file), make it our controlling terminal
    and stdio, and hand the master end to the engine."""
    import fcntl
    import socket
    import struct
    import termios

    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    with socket.socket(fileno=os.dup(pty_socket)) as sock:
        socket.send_fds(sock, [b"pty"], [master])
    os.close(master)
    os.close(pty_socket)
    os.setsid()
    for target in (0, 1, 2):
        os.dup2(slave, target, inheritable=True)
    os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# The most output run() collects from each of a program's stdout and stderr. The program is
# the guest's (its root may have replaced `cat` or made /etc/passwd a link to /dev/zero), and
# account and service listings are far smaller.
OUTPUT_LIMIT = 4 * 2**20


def run(
    init_pid: int,
    argv: Sequence[str],
    cgroup_procs: Sequence[Path],
    input: str | bytes | None = None,
    timeout: float = 60.0,
) -> Completed:
    """Run ARGV in the VPS and collect its output (for account and service operations);
    EngineError if it writes more than OUTPUT_LIMIT bytes to either."""
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = spawn(init_pid, argv, cgroup_procs, stdin_r, out_w, err_w)
    finally:
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
    data = input.encode() if isinstance(input, str) else (input or b"")
    try:
        stdout, stderr = _communicate(stdin_w, out_r, err_r, data, timeout, pid)
    finally:
        _, status = os.waitpid(pid, 0)  # also after a kill: no zombie left behind
    return Completed(os.waitstatus_to_exitcode(status), stdout.decode(errors="replace"),
                     stderr.decode(errors="replace"))


def _communicate(stdin_w: int, out_r: int, err_r: int, data: bytes, timeout: float, pid: int):
    """Feed stdin and drain both outputs without deadlock, as subprocess.communicate does."""
    import select
    import selectors
    import time

    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sizes = {out_r: 0, err_r: 0}
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ)
    sel.register(err_r, selectors.EVENT_READ)
    if data:
        sel.register(stdin_w, selectors.EVENT_WRITE)
    else:
        os.close(stdin_w)
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    flooded = False
    try:
        while sel.get_map() and not flooded:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, 9)
                raise subprocess.TimeoutExpired("guest command", timeout)
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd == stdin_w:
                    try:
                        written = os.write(fd, view[:65536])
                    except BrokenPipeError:
                        written = len(view)
                    view = view[written:]
                    if not view:
                        sel.unregister(fd)
                        os.close(fd)
                    continue
                block = os.read(fd, 65536)
                if block:
                    chunks[fd].append(block)
                    sizes[fd] += len(block)
                    flooded = flooded or sizes[fd] > OUTPUT_LIMIT
                else:
                    sel.unregister(fd)
                    os.close(fd)
    finally:
        for key in list(sel.get_map().values()):  # still open after a timeout or a flood
            os.close(key.fd)
        sel.close()
    if flooded:
        # With our ends closed the program dies of SIGPIPE at its next write and the helper
        # reaps it. Killing the helper instead would hand the program to the worker (its
        # subreaper) to reap, and until then the guest's init could not exit (a PID namespace
        # ends only when all its processes are reaped). One that ignores SIGPIPE is killed
        # with the helper when the time is up.
        pidfd = os.pidfd_open(pid)  # readable once the helper has exited; run() reaps it
        try:
            if not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, 9)
        finally:
            os.close(pidfd)
        raise EngineError(f"the program wrote more than {OUTPUT_LIMIT} bytes")
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])


# -- the guest's files, read from the host --------------------------------------------------

# How the guest's files are looked up: from the guest's own root, symlinks (absolute ones
# too) and ".." kept inside it, no /proc magic links, and no mount point crossed, so the file
# is one of the guest's root filesystem (not a proc, sysfs or device file it bound there).
_IN_GUEST = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS | syscalls.RESOLVE_NO_XDEV
# The most read_file reads (a longer file is refused).
READ_LIMIT = 4 * 2**20


def root_fd(init_pid: int) -> int:
    """An O_PATH fd of the root directory of the guest whose init is INIT_PID, as that init
    sees it. The caller closes it."""
    return os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_in_root(root: int, path: str, kind: int, flags: int = os.O_RDONLY) -> int:
    """Open PATH inside a guest's root (ROOT: from root_fd) as the guest would find it, but
    only on the guest's root filesystem (see _IN_GUEST), and only if it is of KIND
    (stat.S_IFREG, S_IFDIR or S_IFIFO): it is found with O_PATH, which opens nothing (no
    device's or FIFO's open runs), checked with fstat, and only then opened with FLAGS (plus
    O_NONBLOCK, O_NOCTTY and O_CLOEXEC) through /proc/self/fd. The caller closes the fd.

    OSError when it is not there or the walk is refused (EXDEV, ELOOP, ENOSYS before Linux
    5.6), EngineError when it is of another kind."""
    for _attempt in range(3):
        try:
            found = syscalls.openat2(root, path, os.O_PATH | os.O_CLOEXEC, _IN_GUEST)
            break
        except BlockingIOError:  # EAGAIN: a rename or mount raced with "..": try again
            continue
    else:
        raise EngineError(f"could not look up {path} in the guest (it kept changing)")
    try:
        if stat.S_IFMT(os.fstat(found).st_mode) != kind:
            raise EngineError(f"{path} in the guest is not what it should be (a symlink, device or other kind)")
        return os.open(f"/proc/self/fd/{found}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(found)


def read_file(root: int, path: str, limit: int = READ_LIMIT) -> bytes:
    """The contents of the regular file PATH inside a guest's root (see open_in_root)."""
    fd = open_in_root(root, path, stat.S_IFREG)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise EngineError(f"{path} in the guest is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_root(engine, name: str) -> int:
    """root_fd() of the running server NAME (Conflict if it is not running). Checked once the
    fd is open that its init still is the server's (not a later process that took its pid),
    so the fd is the guest's root and never the host's."""
    pid = engine.init_pid(name)
    fd = root_fd(pid)
    try:
        if engine.init_pid(name) != pid:
            raise EngineError(f"server {name!r} restarted while its files were being read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def listing(lister):
    """LISTER's list (a guest's accounts or services) read from the guest's files by the host
    (a fraction of a millisecond), or, when they cannot be read that way, from a program run
    inside the guest (an exec)."""
    try:
        return lister.list_from_files()
    except (OSError, EngineError) as exc:
        logging.getLogger(__name__).debug(
            "reading the list of %s from its files failed (%s); asking the guest", lister.name, exc)
        return lister.list()
