"""`vserver exec` and `vserver enter`: the operator's terminal talks to the guest through
pipes or a pseudo-terminal that we forward, so no host file descriptor (such as the
operator's own tty, open to TIOCSTI) is ever handed to a process in the guest.

What the guest writes reaches a terminal of ours only through a filter (termfilter.py): exec
shows every control sequence as text, enter passes only those that cannot make the terminal
answer, or change anything but the screen. Written to a pipe or a file it is passed on byte
for byte. Our stdin reaches the guest whatever it is: a terminal, a pipe, a socket, or a
regular file or /dev/null, which epoll refuses; it is copied by a thread of its own, so a
program that does not read its input while it writes its output never deadlocks us.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from . import guest, termfilter
from .accounts import Account


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _feed_stdin(target: int) -> threading.Thread:
    """Copy our stdin to TARGET until its end (or until nothing reads TARGET any more), then
    close TARGET; in a daemon thread: one blocked on a terminal when the program has exited
    must not keep us."""

    def copy() -> None:
        try:
            while True:
                try:
                    data = os.read(0, 65536)
                except BlockingIOError:  # a stdin left non-blocking by whoever shares it
                    select.select([0], [], [])
                    continue
                except OSError:  # no stdin (fd 0 closed), or it failed: the guest sees its end
                    break
                if not data:
                    break
                try:
                    _write_all(target, data)
                except OSError:  # EPIPE: nothing in the guest reads it any more
                    break
        finally:
            os.close(target)

    thread = threading.Thread(target=copy, name="stdin", daemon=True)
    thread.start()
    return thread


def _plain_filter(fd: int) -> termfilter.PlainFilter | None:
    """A filter for what goes to FD if FD is a terminal; None (bytes as they are) if not."""
    return termfilter.PlainFilter() if os.isatty(fd) else None


def exec_forwarding(init_pid: int, argv: Sequence[str], cgroup_procs: Sequence[Path],
                    start_timeout: float = guest.START_TIMEOUT) -> int:
    """Run ARGV in the guest with our stdin/stdout/stderr forwarded; return its exit status.
    The program may run as long as it likes, but must start within START_TIMEOUT seconds."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        helper = guest.spawn(init_pid, argv, cgroup_procs, in_r, out_w, err_w,
                             deadline=time.monotonic() + start_timeout)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    try:
        _feed_stdin(in_w)
        sys.stdout.flush()
        sys.stderr.flush()
        targets = {out_r: (1, _plain_filter(1)), err_r: (2, _plain_filter(2))}
        sel = selectors.DefaultSelector()
        for fd in targets:
            sel.register(fd, selectors.EVENT_READ)
        with sel:
            while sel.get_map():
                for key, _ in sel.select():
                    data = os.read(key.fd, 65536)
                    target, filtered = targets[key.fd]
                    shown = data if filtered is None else filtered.feed(data, final=not data)
                    if shown:
                        _write_all(target, shown)
                    if not data:
                        sel.unregister(key.fd)
                        os.close(key.fd)
        return helper.wait()
    finally:
        helper.kill()  # a no-op once the program has exited; after an error, kill it


# The largest terminal a session may ask for (xterm's own limit is 1,000 columns and rows).
MAX_TERMINAL_SIZE = 1000
# The most supplementary groups an account may have (the kernel's NGROUPS_MAX).
MAX_GROUPS = 65536


class Terminal:
    """A login shell in a server on a terminal of the guest's own devpts (open_terminal).

    MASTER is the terminal's master end: what the shell shows is read from it, keystrokes are
    written to it. close() hangs the session up (guest.spawn's login_session) and returns once
    the shell is gone and its session was sent SIGHUP."""

    def __init__(self, master: int, helper: guest.Helper, account: str) -> None:
        self.master = master
        self.helper = helper
        self.account = account

    def resize(self, cols: int, rows: int) -> None:
        import fcntl
        import struct
        import termios

        _check_size(cols, rows)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float | None = None) -> int:
        """The shell's exit status (128+N after signal N) once the session is over."""
        return self.helper.wait(timeout)

    def close(self) -> None:
        """End the session: everything started in it is killed and reaped (idempotent)."""
        try:
            self.helper.kill()
        finally:
            if self.master >= 0:
                os.close(self.master)
                self.master = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_size(cols: int, rows: int) -> None:
    for what, value in (("columns", cols), ("rows", rows)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TERMINAL_SIZE:
            raise guest.EngineError(f"a terminal has 1 to {MAX_TERMINAL_SIZE} {what}, not {value!r}")


def _account_name(name: str) -> str:
    # Looked up verbatim in the guest's passwd: only what a passwd line can hold as a name.
    if (not isinstance(name, str) or not 1 <= len(name) <= 32 or not name.isprintable() or ":" in name
            or name != name.strip()):
        raise guest.EngineError(f"{name!r} is not an account name")
    return name


def parse_groups(text: str, name: str, gid: int) -> tuple[int, ...]:
    """The groups of account NAME with primary group GID, from a group file (the guest's, so
    untrusted: odd lines are skipped, ids parsed as accounts.parse_passwd does)."""
    from .accounts import _is_id

    groups = [gid]
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 4 or not _is_id(fields[2]):
            continue
        if name in fields[3].split(",") and int(fields[2]) not in groups:
            groups.append(int(fields[2]))
            if len(groups) > MAX_GROUPS:
                raise guest.EngineError(f"account {name!r} is in more than {MAX_GROUPS} groups")
    return tuple(groups)


def guest_identity(init_pid: int, account: str) -> tuple[guest.Identity, str]:
    """Who ACCOUNT is in the guest whose init is INIT_PID, and its shell, as the guest's
    /etc/passwd and /etc/group say (read by the host, as accounts.Accounts.list_from_files
    does: only regular files of the guest's root filesystem, bounded in size). EngineError
    for an account the guest does not have, or one whose entry is not usable."""
    from .accounts import parse_passwd

    name = _account_name(account)
    root = guest.root_fd(init_pid)
    try:
        try:
            passwd = guest.read_file(root, "/etc/passwd").decode(errors="replace")
        except OSError as exc:
            raise guest.EngineError(f"could not read the server's /etc/passwd ({exc.strerror or exc})") from None
        try:
            group = guest.read_file(root, "/etc/group").decode(errors="replace")
        except OSError:
            group = ""  # no group file: the primary group only
    finally:
        os.close(root)
    found = next((a for a in parse_passwd(passwd) if a.name == name), None)
    if found is None:
        if name != "root":
            raise guest.EngineError(f"the server has no account {name!r}")
        found = Account("root", 0, 0, "/root", "/bin/sh")  # a guest without root's line still has root
    if found.uid > 65535 or found.gid > 65535:  # the guest's user namespace maps 0-65535 only
        raise guest.EngineError(f"account {name!r} has an id outside the server's range (uid {found.uid}, "
                                f"gid {found.gid})")
    shell = found.shell or "/bin/sh"
    if not shell.startswith("/") or not shell.isprintable():
        raise guest.EngineError(f"account {name!r} has no usable shell ({shell!r})")
    home = found.home if found.home.startswith("/") and found.home.isprintable() else "/"
    return guest.Identity(found.uid, found.gid, parse_groups(group, name, found.gid), home), shell


def open_terminal(init_pid: int, cgroup_procs: Sequence[Path], *, account: str = "root", cols: int = 80,
                  rows: int = 24, term: str = "xterm-256color",
                  start_timeout: float = guest.START_TIMEOUT) -> Terminal:
    """Start ACCOUNT's login shell in the server whose init is INIT_PID, on a terminal of the
    guest's own devpts of COLS x ROWS, as a login session (guest.spawn): when the shell ends,
    when close() is called, or when this process dies (even of SIGKILL: the helper sees its
    cancel pipe end), the session is hung up as ssh's would be: its processes get SIGHUP,
    the shell is killed if it lingers, and what the user detached (nohup, setsid, daemons)
    keeps running as the guest's own.

    The shell runs with the account's uid, gid and groups, HOME and shell from the guest's
    files, and the confinement of the guest's init (bounding set, seccomp filter)."""
    import socket

    _check_size(cols, rows)
    identity, shell = guest_identity(init_pid, account)
    env = {"HOME": identity.home, "USER": account, "LOGNAME": account, "SHELL": shell, "TERM": term}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        helper = guest.spawn(init_pid, [shell, "-l"], cgroup_procs, null, null, null, env=env,
                             pty_socket=theirs.fileno(), deadline=time.monotonic() + start_timeout,
                             login_session=True, identity=identity)
    finally:
        theirs.close()
        os.close(null)
    try:
        with ours:
            ours.settimeout(0)  # sent before the program exec'd, which spawn waited for
            try:
                _, fds, _, _ = socket.recv_fds(ours, 16, 1)
            except BlockingIOError:
                fds = []
        if not fds:
            raise guest.EngineError("the guest did not open a terminal")
        master = fds[0]
        os.set_inheritable(master, False)
        terminal = Terminal(master, helper, account)
    except BaseException:
        helper.kill()
        raise
    try:
        terminal.resize(cols, rows)
    except BaseException:
        terminal.close()
        raise
    return terminal


def interactive(init_pid: int, cgroup_procs: Sequence[Path], account: str = "root",
                start_timeout: float = guest.START_TIMEOUT) -> int:
    """An interactive login shell in the guest (open_terminal), on our terminal."""
    import fcntl
    import struct
    import termios
    import tty

    cols, rows = 80, 24
    if os.isatty(0):
        with contextlib.suppress(OSError):
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
    if not (1 <= cols <= MAX_TERMINAL_SIZE and 1 <= rows <= MAX_TERMINAL_SIZE):
        cols, rows = 80, 24  # a terminal that reports 0x0 (a serial line)
    terminal = open_terminal(init_pid, cgroup_procs, account=account, cols=cols, rows=rows,
                             term=os.environ.get("TERM", "xterm"), start_timeout=start_timeout)
    try:
        saved = termios.tcgetattr(0) if os.isatty(0) else None
        screen = termfilter.TerminalFilter() if os.isatty(1) else None
        try:
            if saved is not None:
                tty.setraw(0, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
            # A copy of its own: the thread may outlive this function, blocked on our
            # terminal, and must never write to a number since reused for another file.
            _feed_stdin(os.dup(terminal.master))
            _pump_pty(terminal.master, screen)
        finally:
            if screen is not None:
                _write_all(1, termfilter.INPUT_MODES_OFF)
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
        return terminal.wait()
    finally:
        terminal.close()


def _pump_pty(master: int, screen: termfilter.TerminalFilter | None) -> None:
    """Copy what the guest's terminal shows to our stdout (through SCREEN, if there is one)
    until everything on that terminal has exited."""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the shell and everything on its terminal has exited
            return
        if not data:
            return
        if screen is not None:
            data = screen.feed(data)
        if data:
            _write_all(1, data)
