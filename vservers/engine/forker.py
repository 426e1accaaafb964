"""Forking a start's helpers from a small process instead of the engine's own.

A start forks four times: the user namespace's two helpers, the setup child and the guest's
init (launch.py, userns.py). A fork copies the page tables of the process that forks, and the
child then copies every page it writes to, which in Python is every page whose objects it
touches. In a panel worker, with Django, RQ and the panel loaded (80 MB resident), one fork
and its child took 10.4 ms and 6 ms of the child's CPU against 2.4 ms and 1.9 ms in a process
of the engine alone (2026-12-07, this VM); the panel's starts took 69 ms against the engine's
own 39 ms.

So a big process hands its forks to a fork server: a fresh interpreter that imports the
engine's start path and nothing else, started on first use and ended by the end of its
socket (its engine process exited or dropped it). For each request it forks a child that
runs a function of the engine with the file descriptors the request carries, and answers
with the child's pid. The children are its own, and the kernel reaps them (SIGCHLD ignored):
a caller sees a child end by the end of its pipes, never by waitpid. What the children fork
themselves (the guest helper, init) is forked from the child, a copy of this small process.
A guest's init is orphaned when its setup child exits, as before, and goes to the nearest
subreaper: the worker, whose child the fork server is.

multiprocessing's forkserver does the same for its own Process objects, but hands a child
file descriptors only through its private reduction API, and reaps and reports its children
its own way; this is the part of it the engine needs, on a public API (socket.send_fds).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from .errors import EngineError

# A request: the pickled (function, arguments) in one datagram of a SOCK_SEQPACKET pair, and the
# child's file descriptors alongside (SCM_RIGHTS). Plans are a few KB.
MAX_REQUEST = 1 << 20
MAX_FDS = 8


class ForkServer:
    """The client: fork(FUNCTION, FDS, *ARGS) runs FUNCTION(*child's copies of FDS, *ARGS) in a
    child of the server and returns its pid. FUNCTION and ARGS must pickle (functions by their
    module and name). Thread-safe; a process forked from the owner starts its own server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None

    def fork(self, function: Callable[..., None], fds: list[int], *args: object) -> int:
        request = pickle.dumps((function, args))
        with self._lock:
            # A server that died since the last request (killed, out of memory) is replaced; one
            # that dies during a request may have forked already, so that start fails instead.
            for attempt in (1, 2):
                sock = self._connected()
                try:
                    socket.send_fds(sock, [request], fds)
                except OSError as exc:
                    self._drop()
                    if attempt == 2:
                        raise EngineError(f"could not reach the engine's fork server: {exc}") from exc
                    continue
                try:
                    answer = sock.recv(256)
                except OSError:
                    answer = b""
                if answer.startswith(b"p"):
                    return int(answer[1:])
                if answer.startswith(b"e"):
                    raise EngineError(f"could not fork a helper: {answer[1:].decode(errors='replace')}")
                self._drop()
                raise EngineError("the engine's fork server ended during a request")
            raise AssertionError("unreachable")

    def start(self) -> None:
        """Start the server now, if not yet: it imports the start path while the caller goes
        on, and the first fork waits for it only if it is not ready by then."""
        with self._lock:
            self._connected()

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._owner == os.getpid():
            if self._proc is not None and self._proc.poll() is None:
                return self._sock
            self._drop()  # it exited since the last request
        if self._owner != os.getpid():
            # Forked from the owner: the socket is shared with it, and the server is not ours.
            self._sock = self._proc = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            ours.close()
            raise EngineError(f"could not start the engine's fork server: {exc}") from exc
        finally:
            theirs.close()
        self._sock, self._owner = ours, os.getpid()
        return ours

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._sock = self._proc = None

    @property
    def pid(self) -> int | None:
        """The server's pid, once started by this process."""
        return self._proc.pid if self._proc is not None and self._owner == os.getpid() else None

    def close(self) -> None:
        """End the server (it exits at the end of its socket) and wait for it."""
        with self._lock:
            if self._owner == os.getpid():
                self._drop()


def _child(function: Callable[..., None], fds: list[int], args: tuple) -> None:
    """In the forked child: default signals, only FDS open, then FUNCTION; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # its own children are waited for
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from .syscalls import close_fds_except

        close_fds_except(*fds)  # the server's socket among the rest
        function(*fds, *args)
        code = 0
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> None:
    """Answer fork requests until the engine's end of SOCK is closed."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the engine, which ends us
    while True:
        try:
            request, fds, _flags, _address = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
        except ConnectionResetError:
            return
        if not request:
            return
        # Close-on-exec, as the engine made them: the guest's init must not take one along
        # (recv_fds drops its flags argument on Python 3.11, so no MSG_CMSG_CLOEXEC).
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
            function, args = pickle.loads(request)
            pid = os.fork()
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the engine
            answer = f"e{exc}".encode()
        else:
            if pid == 0:
                _child(function, fds, args)
            answer = f"p{pid}".encode()
        for fd in fds:
            os.close(fd)
        sock.send(answer)


def main() -> None:
    # What every start runs, imported before the first fork, so no child imports it anew.
    from . import launch, userns  # noqa: F401

    serve(socket.socket(fileno=int(sys.argv[1])))
    gc.freeze()  # the exit skips the finalization's collection of the loaded engine (manage.py)


if __name__ == "__main__":
    main()
