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

The guest's root can see that child and stop it (SIGSTOP) before it execs, or make the
program run or write without end: every wait on it has a deadline, after which the helper
kills the program and both are reaped (see Helper), and run() keeps at most OUTPUT_LIMIT
bytes of output.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import capabilities, procfs, seccomp, syscalls, userns
from .errors import EngineError
from .spec import GUEST_PATH  # not from launch: exec and enter need none of the start's machinery
from .syscalls import CLONE_NEWUSER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG

# The user namespace first: the others are owned by it, and entering it gives us the
# capabilities there that joining them requires.
NAMESPACES = ("user", "mnt", "uts", "ipc", "net", "cgroup", "pid")


@dataclass(frozen=True)
class Identity:
    """Whom a program runs as in the guest: ids as the guest's own files give them (its user
    namespace maps them), and the directory it starts in ("/" if it cannot enter it)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True)
class Completed:
    """A program run inside a server, finished: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str


# How long spawn() waits by default for the program to exec, and how long a helper told to
# give up may take to kill its program and exit before it is killed itself.
START_TIMEOUT = 30.0
HELPER_GRACE = 5.0
# The most bytes of an error message the helper or its child may send back.
_ERROR_LIMIT = 65536


class Helper:
    """The host-side helper of a program started by spawn(). The helper holds the read end of
    a pipe whose write end only the engine holds (CANCEL_FD): when that end closes (cancel(),
    or the engine dies), the helper SIGKILLs the program, reaps it and exits. The helper does
    the killing, not the engine: only the helper may reap the program (its parent), so only
    it can kill it without the pid having been reused, and a program killed that way is never
    left as an orphan for the engine's subreaper or the host's init to reap (until reaped, it
    would keep the guest's PID namespace, and so its init, from ending)."""

    def __init__(self, pid: int, cancel_fd: int, what: str) -> None:
        self.pid = pid
        self.what = what
        self._cancel_fd = cancel_fd
        self.returncode: int | None = None

    def cancel(self) -> None:
        """Have the helper kill the program (SIGKILL: stopped ones die too) and exit."""
        if self._cancel_fd >= 0:
            os.close(self._cancel_fd)
            self._cancel_fd = -1

    def wait(self, timeout: float | None = None) -> int:
        """The program's exit status (128+N after signal N), once the helper has exited and
        been reaped. With TIMEOUT, EngineError once it has passed: the program was killed."""
        if self.returncode is not None:
            return self.returncode
        if timeout is not None and not _exited(self.pid, timeout):
            self.kill()
            raise EngineError(f"{self.what} did not finish within {timeout:g} s; it was killed")
        return self._reap()

    def kill(self) -> None:
        """Cancel and reap, killing the helper too if it does not exit within HELPER_GRACE
        (it then dies with its program: the program has PR_SET_PDEATHSIG=SIGKILL)."""
        self.cancel()
        if self.returncode is None:
            if not _exited(self.pid, HELPER_GRACE):
                os.kill(self.pid, 9)
            self._reap()

    def _reap(self) -> int:
        self.cancel()
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.returncode = 128 - code if code < 0 else code
        return self.returncode


def _exited(pid: int, timeout: float) -> bool:
    """Whether process PID (our child) has exited within TIMEOUT seconds; it is not reaped."""
    pidfd = os.pidfd_open(pid)
    try:
        return bool(_readable([pidfd], timeout))
    finally:
        os.close(pidfd)


def _readable(fds: Sequence[int], timeout: float | None) -> list[int]:
    """Which of FDS are readable (or at their end) within TIMEOUT seconds (None: no limit).
    poll, not select: a worker may hold fds beyond select's FD_SETSIZE."""
    import select

    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    wait_ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
    return [fd for fd, _ in poller.poll(wait_ms)]


def spawn(
    init_pid: int,
    argv: Sequence[str],
    cgroup_procs: Sequence[Path],
    stdin: int,
    stdout: int,
    stderr: int,
    env: dict[str, str] | None = None,
    pty_socket: int | None = None,
    deadline: float | None = None,
    login_session: bool = False,
    identity: Identity | None = None,
) -> Helper:
    """Start ARGV inside the VPS whose init is INIT_PID; returns its host-side Helper, whose
    wait() gives the program's exit status.

    With PTY_SOCKET (a unix socket), the program gets a terminal of the guest's own devpts
    instead of STDIN/STDOUT/STDERR, and the terminal's master end is sent back on the socket.

    Returns once the program has exec'd. Between fork and exec the program is visible in the
    guest, whose root may SIGSTOP it there; if it has not exec'd by DEADLINE (a
    time.monotonic() value; default START_TIMEOUT from now), it and the helper are killed
    and reaped, and EngineError says so.

    With LOGIN_SESSION (a console's shell, with PTY_SOCKET), the program leads a session of
    its own, and its end is a terminal's hangup, as for a login over ssh: when it exits, when
    the engine cancels, or when the engine dies (even of SIGKILL: the helper sees the cancel
    pipe end), every process still in that session gets SIGHUP and SIGCONT; the shell itself,
    if it does not exit within SESSION_GRACE, is killed. What the user detached on purpose
    (`nohup`, `setsid`, a daemon that a service script starts) keeps running, as it would
    after ssh: it is the guest's program now, under its limits, not the console's.
    With IDENTITY, the program runs as that account of the guest instead of its root.
    """
    import time

    if not argv:
        raise EngineError("no command given")
    if deadline is None:
        deadline = time.monotonic() + START_TIMEOUT
    # The program gets what the init got, no more: its capabilities and its rlimits (not the
    # worker's, which may allow more: RLIMIT_NOFILE, RLIMIT_MSGQUEUE, RLIMIT_SIGPENDING).
    bounding = capabilities.bounding_set(init_pid)
    rlimits = procfs.read_limits(init_pid)
    ns_fds = [os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in NAMESPACES]
    environment = {"PATH": GUEST_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "xterm"),
                   "LANG": "C.UTF-8", "container": "vserver"}
    environment.update(env or {})
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    cancel_r, cancel_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 127
        helper_pid, child = os.getpid(), 0
        try:
            os.close(error_r)
            os.close(cancel_w)
            procs_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroup_procs]
            # The host's /proc, opened before we enter the guest's mounts (where /proc is the
            # guest's to mount over): the session's processes are found here at its end.
            host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if login_session else -1
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            keep = [error_w, cancel_r, go_r, go_w, *ns_fds, *procs_fds, *([host_proc] if login_session else [])]
            keep += [pty_socket] if pty_socket is not None else []
            _keep_only_fds(stdin, stdout, stderr, keep=keep)
            stdin, stdout, stderr = 0, 1, 2
            syscalls.prctl(PR_SET_DUMPABLE, 0)
            userns.copy_rlimits(rlimits)  # still host root: may raise a limit the worker lowered
            for ns, fd in zip(NAMESPACES, ns_fds, strict=True):
                syscalls.setns(fd, CLONE_NEWUSER if ns == "user" else 0)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            child = os.fork()
            if child == 0:
                # Dies with the helper, whatever the guest does to it (a stopped process
                # dies of SIGKILL too). Kept across exec: the helper outlives the program
                # unless it is killed. A helper that died before this line closed go_w.
                syscalls.prctl(PR_SET_PDEATHSIG, 9)
                # Visible in the guest from here on: hold no handle of the host's (namespace
                # and cgroup files) even for the moment until exec. The cancel pipe is only a
                # pipe: a session's parent in the guest keeps it to learn of the engine's end.
                for fd in (go_w, cancel_r, *ns_fds, *procs_fds, *([host_proc] if login_session else [])):
                    os.close(fd)
                if os.read(go_r, 1) != b"g":  # wait until we are in the server's cgroups
                    os._exit(127)  # the helper is gone
                os.close(go_r)
                _exec_child(argv, environment, error_w, pty_socket, bounding, identity=identity)
            os.close(go_r)
            program = os.pidfd_open(child)  # our own unreaped child: it cannot be another's pid
            for fd in procs_fds:
                os.write(fd, str(child).encode())  # opened as host root: the writer's open-time creds count
                os.close(fd)
            os.write(go_w, b"g")
            os.close(go_w)
            # The program holds its own copy until exec; ours must go, or the engine would
            # wait on this pipe while we wait on the program.
            os.close(error_w)
            error_w = -1
            # The program's end, or the engine giving up (its end of the cancel pipe closed).
            ready = _readable([program, cancel_r], None)
            if login_session and program not in ready:
                _hang_up(host_proc, child)  # the shell first: it may save its history
                ready = _readable([program], SESSION_GRACE)
            if program not in ready:
                os.kill(child, 9)
                _readable([program], None)
            if login_session:
                # The shell is a zombie now, not yet reaped: its pid, the session's id, cannot
                # have been given to another process.
                _hang_up(host_proc, child)
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        except BaseException as exc:  # noqa: BLE001 - report and leave
            if error_w >= 0:
                try:
                    os.write(error_w, f"{exc}".encode())
                except OSError:
                    pass
            if os.getpid() != helper_pid:
                os._exit(127)
            if child > 0:  # never leave the program to a subreaper
                try:
                    os.kill(child, 9)
                    os.waitpid(child, 0)
                except OSError:
                    pass
        os._exit(code)
    for fd in ns_fds:
        os.close(fd)
    os.close(error_w)
    os.close(cancel_r)
    what = f"{argv[0]!r} in the server"
    helper = Helper(pid, cancel_w, what)
    allowed = deadline - time.monotonic()
    try:
        message, started = _read_until_eof(error_r, deadline)
    except BaseException:
        helper.kill()
        raise
    finally:
        os.close(error_r)
    if not started:
        helper.kill()
        raise EngineError(f"{what} did not start within {max(0.0, allowed):.0f} s (something in the server held it "
                          "before it could run, such as a process that stops new processes); it was killed")
    if message:
        helper.kill()
        raise EngineError(f"could not run {argv[0]!r} in the server: {message}")
    return helper


def _read_until_eof(fd: int, deadline: float) -> tuple[str, bool]:
    """What arrives on the pipe FD until its writers have closed it (at most _ERROR_LIMIT
    bytes kept), and whether that happened before DEADLINE."""
    import time

    chunks: list[bytes] = []
    size = 0
    while True:
        if not _readable([fd], deadline - time.monotonic()):
            return "", False
        block = os.read(fd, 65536)
        if not block:
            return b"".join(chunks).decode(errors="replace"), True
        if size < _ERROR_LIMIT:
            chunks.append(block[: _ERROR_LIMIT - size])
            size += len(chunks[-1])


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


def _exec_child(argv, environment, error_w: int, pty_socket: int | None, bounding: int,
                identity: Identity | None = None) -> None:
    """In the guest (its namespaces, root and cgroups): set up stdio and exec."""
    try:
        if pty_socket is not None:
            _take_guest_terminal(pty_socket, None if identity is None else identity.uid)
        os.closerange(3, error_w)
        os.closerange(error_w + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        # The same confinement as the guest's init (see launch.py), last before exec. The
        # filter goes on while we are still root: without no_new_privs (see seccomp.py)
        # installing it needs CAP_SYS_ADMIN, which an account's uid does not have.
        capabilities.drop(bounding)
        seccomp.install()
        if identity is not None:
            os.setgroups(list(identity.groups))
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)  # clears every capability
            try:
                os.chdir(identity.home)  # as the account: a home it may not enter leaves it at /
            except OSError:
                pass
        os.execvpe(argv[0], list(argv), environment)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(error_w, f"{exc}".encode())
        except OSError:
            pass
        os._exit(127)


# How long a console's shell may take to exit after its hangup before it is killed.
SESSION_GRACE = 1.0


def _hang_up(host_proc: int, session: int) -> None:
    """What a terminal's hangup does to a login session: SIGHUP, then SIGCONT (a stopped job
    must see it), to every process of SESSION, found in the host's /proc (HOST_PROC, a
    directory fd: pids as the host numbers them). A few passes, for children forked meanwhile;
    a process the guest's root moved out of the session meanwhile is the guest's business."""
    import signal

    signalled: set[int] = set()
    for _ in range(3):
        found = set()
        for name in os.listdir(host_proc):
            if not name.isdigit() or int(name) in signalled:
                continue
            try:
                fd = os.open(f"{name}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=host_proc)
            except OSError:
                continue  # gone
            try:
                stat = procfs.parse_stat(os.read(fd, 4096))
            except (OSError, ValueError, IndexError):
                continue
            finally:
                os.close(fd)
            if stat.session == session and stat.alive:
                found.add(stat.pid)
        if not found:
            return
        for pid in found:
            for sig in (signal.SIGHUP, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        signalled |= found


TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431


def _take_guest_terminal(pty_socket: int, owner: int | None = None) -> None:
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
    if owner is not None:  # the account's terminal, as login gives it (mesg, write, su)
        os.fchown(slave, owner, -1)
    os.setsid()
    for target in (0, 1, 2):
        os.dup2(slave, target, inheritable=True)
    os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# How long an account or service operation's program may take (`sv -w 10` waits up to 10 s).
OPERATION_TIMEOUT = 30.0
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
    """Run ARGV in the VPS and collect its output (for account and service operations).

    Bounded in size and time, as anything the host reads from a guest must be: EngineError
    if the program writes more than OUTPUT_LIMIT bytes to either output, or has not finished
    within TIMEOUT seconds (counted from the call: starting it is part of it). The program is
    then killed, SIGSTOP'd or not, and nothing of it is left."""
    import time

    deadline = time.monotonic() + timeout
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        helper = spawn(init_pid, argv, cgroup_procs, stdin_r, out_w, err_w, deadline=deadline)
    except BaseException:
        for fd in (stdin_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
    data = input.encode() if isinstance(input, str) else (input or b"")
    try:
        stdout, stderr = _communicate(stdin_w, out_r, err_r, data, deadline, timeout, helper)
    finally:
        helper.kill()  # a no-op once it has exited; otherwise no helper or program left behind
    return Completed(helper.wait(), stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def _communicate(stdin_w: int, out_r: int, err_r: int, data: bytes, deadline: float, timeout: float,
                 helper: Helper) -> tuple[bytes, bytes]:
    """Feed stdin and drain both outputs without deadlock, as subprocess.communicate does,
    until both outputs are closed and the helper has exited."""
    import selectors
    import time

    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sizes = {out_r: 0, err_r: 0}
    # poll, not select: a worker may hold more than FD_SETSIZE fds.
    sel = selectors.PollSelector()
    sel.register(out_r, selectors.EVENT_READ)
    sel.register(err_r, selectors.EVENT_READ)
    if data:
        sel.register(stdin_w, selectors.EVENT_WRITE)
    else:
        os.close(stdin_w)
    view = memoryview(data)
    flooded = False
    try:
        while sel.get_map() and not flooded:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
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
        finished = not sel.get_map()
    finally:
        for key in list(sel.get_map().values()):  # still open after a timeout or a flood
            os.close(key.fd)
        sel.close()
    if flooded:
        helper.kill()
        raise EngineError(f"{helper.what} wrote more than {OUTPUT_LIMIT} bytes (the most the engine reads "
                          "from a guest); it was killed")
    if not finished:
        helper.kill()
        raise EngineError(f"{helper.what} did not finish within {timeout:g} s; it was killed")
    # Both outputs closed: the program has normally exited, but something it left running
    # may hold them open no longer, and the program itself may still be stopped.
    try:
        helper.wait(max(0.0, deadline - time.monotonic()))
    except EngineError:
        raise EngineError(f"{helper.what} did not finish within {timeout:g} s; it was killed") from None
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
        import logging  # only here: ~5 ms of every exec's start-up otherwise

        logging.getLogger(__name__).debug(
            "reading the list of %s from its files failed (%s); asking the guest", lister.name, exc)
        return lister.list()
