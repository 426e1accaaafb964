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


def interactive(init_pid: int, argv: Sequence[str], cgroup_procs: Sequence[Path],
                start_timeout: float = guest.START_TIMEOUT) -> int:
    """An interactive shell in the guest on a terminal of the guest's own devpts."""
    import fcntl
    import socket
    import termios
    import tty

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        helper = guest.spawn(init_pid, argv, cgroup_procs, null, null, null, pty_socket=theirs.fileno(),
                             deadline=time.monotonic() + start_timeout)
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
        if os.isatty(0):
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        saved = termios.tcgetattr(0) if os.isatty(0) else None
        screen = termfilter.TerminalFilter() if os.isatty(1) else None
        try:
            if saved is not None:
                tty.setraw(0, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
            # A copy of its own: the thread may outlive this function, blocked on our
            # terminal, and must never write to a number since reused for another file.
            _feed_stdin(os.dup(master))
            _pump_pty(master, screen)
        finally:
            if screen is not None:
                _write_all(1, termfilter.INPUT_MODES_OFF)
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            os.close(master)
        return helper.wait()
    finally:
        helper.kill()


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
