"""`vserver exec` and `vserver enter`: the operator's terminal talks to the guest through
pipes or a pseudo-terminal that we forward, so no host file descriptor (such as the
operator's own tty, open to TIOCSTI) is ever handed to a process in the guest."""

from __future__ import annotations

import contextlib
import os
import selectors
import sys
from collections.abc import Sequence
from pathlib import Path

from . import guest


def _wait_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def exec_forwarding(init_pid: int, argv: Sequence[str], cgroup_procs: Sequence[Path]) -> int:
    """Run ARGV in the guest with our stdin/stdout/stderr forwarded; return its exit status."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = guest.spawn(init_pid, argv, cgroup_procs, in_r, out_w, err_w)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    sys.stdout.flush()
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, 1)
    sel.register(err_r, selectors.EVENT_READ, 2)
    try:
        sel.register(0, selectors.EVENT_READ, in_w)
    except (ValueError, PermissionError, OSError):  # no usable stdin (e.g. /dev/null as a file)
        os.close(in_w)
        in_w = -1
    open_outputs = 2
    while open_outputs:
        for key, _ in sel.select():
            if key.fd == 0:
                data = os.read(0, 65536)
                if data:
                    with contextlib.suppress(BrokenPipeError):
                        _write_all(in_w, data)
                else:
                    sel.unregister(0)
                    os.close(in_w)
                    in_w = -1
                continue
            data = os.read(key.fd, 65536)
            if data:
                _write_all(key.data, data)
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_outputs -= 1
    if in_w >= 0:
        os.close(in_w)
    sel.close()
    return _wait_code(pid)


def interactive(init_pid: int, argv: Sequence[str], cgroup_procs: Sequence[Path]) -> int:
    """An interactive shell in the guest on a terminal of the guest's own devpts."""
    import fcntl
    import socket
    import termios
    import tty

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = guest.spawn(init_pid, argv, cgroup_procs, null, null, null, pty_socket=theirs.fileno())
    finally:
        theirs.close()
        os.close(null)
    with ours:
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    if not fds:
        _wait_code(pid)
        raise guest.EngineError("the guest did not open a terminal")
    master = fds[0]
    os.set_inheritable(master, False)
    if os.isatty(0):
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
    saved = termios.tcgetattr(0) if os.isatty(0) else None
    try:
        if saved is not None:
            tty.setraw(0, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
        _pump_pty(master)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    return _wait_code(pid)


def _pump_pty(master: int) -> None:
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ)
    stdin_open = True
    sel.register(0, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fd == 0:
                data = os.read(0, 4096)
                if data:
                    _write_all(master, data)
                elif stdin_open:
                    sel.unregister(0)
                    stdin_open = False
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the shell and everything on its terminal has exited
                data = b""
            if not data:
                sel.close()
                return
            _write_all(1, data)
