"""`vserver serve`: the resident server that runs the `vserver` commands of its state root
without a fresh start.

A `vserver start X` as a fresh process spent 16 ms in the interpreter and 54 ms importing the
engine (argparse, pyroute2, ctypes structures, the launch path) before it did 64 ms of work;
`lxc-start` is a C program that does only the work (bench/cli.py, 2026-12-07). `vserver serve`
pays the imports once: it stays, with the engine loaded, and forks a child for each command,
as gunicorn's --preload or the worker's fork server (forker.py) do. The user's side, and when a
command is handed here or run in its own process, are in command.py.

The socket is the root's `cli.sock`, mode 0600, and the server serves only a peer of its own
uid (SO_PEERCRED): root, the only user that may run the engine.
"""

from __future__ import annotations

import _signal
import marshal
import os
import sys

from .command import PROTOCOL, SERVED, SERVED_WITHOUT_TERMINAL, package_dir, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

LOCK_NAME = "cli.lock"
MAX_REQUEST = 1 << 18  # arguments and environment; a few KB in practice


# The command as `make install` writes it over pip's console script (write_launcher). pip's
# imports re for a Windows suffix (~3 ms), and its interpreter runs site (~8 ms: the venv's
# paths, the .pth files, sitecustomize) before the first line; a command the resident server
# runs needs neither, nor do most that run in their own process. `python -S` skips site,
# network.py loads it before it imports pyroute2 (the engine's one package from outside the
# standard library), and the checkout goes on the path the way the editable install's .pth
# puts it there. 2026-12-07, medians of 40: the venv's `python -c pass` 20-22 ms, with -S 12-14.
LAUNCHER = """#!{python} -S
# `vserver`, written by `make install` (vservers/engine/resident.py, write_launcher).
import sys
sys.path.insert(1, {checkout!r})
from vservers.engine.command import run
run()
"""


def write_launcher(path: str, python: str, checkout: str) -> None:
    """Write LAUNCHER for PYTHON and the CHECKOUT that holds vservers/ to PATH, atomically."""
    if not os.path.isfile(os.path.join(checkout, "vservers", "engine", "resident.py")):
        raise SystemExit(f"{checkout} holds no vservers/engine")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(LAUNCHER.format(python=python, checkout=checkout))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


# -- the server ---------------------------------------------------------------------------


def fingerprint(directory: str) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of DIRECTORY's Python files, recursively: what a stale server misses."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                found.append((path, st.st_size, st.st_mtime_ns))
    return tuple(found)


# What the served verbs import (cli.py imports each verb's modules when it runs): loaded once in
# the server, so that no child imports them.
PRELOAD = ("vservers.engine.cli", "vservers.engine.lifecycle", "vservers.engine.listing",
           "vservers.engine.network", "vservers.engine.launch", "vservers.engine.validate",
           "vservers.engine.config", "vservers.engine.firewall", "vservers.engine.cgroups",
           "vservers.engine.console", "json")


def serve(root: str, ready: Callable[[], None] | None = None) -> int:
    """Serve the `vserver` commands of state ROOT until SIGTERM or SIGINT, or until the engine's
    files change (then return 75, EX_TEMPFAIL, for a supervisor to start it again). READY, if
    given, is called once the socket accepts. One server per root (a lock file in it).

    The server itself only forks: one spare child at a time waits in accept() on the socket,
    and when it takes a command it tells the server, which forks the next spare while the
    command runs. A command so starts without waiting for a fork of the server (5 ms)."""
    import contextlib
    import fcntl
    import gc
    import importlib
    import signal
    import socket
    import time

    from .errors import Conflict, InvalidInput

    for fd in (0, 1, 2):  # open, so that the streams a request carries arrive as 3 and up
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    path = socket_path(root)
    if len(path.encode()) >= 108:  # sun_path
        raise InvalidInput(f"the socket path {path!r} is too long for a Unix socket; use a shorter VSERVER_ROOT")
    os.makedirs(root, mode=0o700, exist_ok=True)
    lock = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another `vserver serve` serves {root}") from None
        for module in PRELOAD:
            importlib.import_module(module)
        _warm_parsers()
        here = package_dir()
        files = fingerprint(here)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            if os.path.lexists(path):  # a dead server's: the lock says none other runs
                os.unlink(path)
            old_umask = os.umask(0o177)
            try:
                listener.bind(path)
            finally:
                os.umask(old_umask)
            listener.listen(64)
            bound = os.stat(path).st_ino

            def stop_serving(signum: int, frame: object) -> None:
                raise _Stop

            signal.signal(signal.SIGTERM, stop_serving)
            signal.signal(signal.SIGINT, stop_serving)
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
            gc.collect()
            gc.freeze()  # the loaded engine stays out of every child's collections (no copy-on-write)
            code = 0
            spare = 0
            try:
                if ready is not None:
                    ready()  # connections wait in the backlog until the first spare accepts
                while True:
                    spare, note = _fork_spare(listener, lock, here, files)
                    try:
                        said = os.read(note, 16)  # a command taken, the files changed, or its end
                    finally:
                        os.close(note)
                    if said == b"stale":
                        print(f"vserver serve: the engine's files in {here} changed; ending, to be started again",
                              file=sys.stderr, flush=True)
                        code = 75
                        break
                    if said != b"took":  # it died waiting (killed?): not at full speed in a loop
                        time.sleep(0.5)
            except _Stop:
                pass
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                if spare:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(spare, SPARE_END)  # a spare that took a command ignores it
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == bound:
                        os.unlink(path)
            return code
    finally:
        os.close(lock)


# Arguments each served verb's parser is tried with in the server (_warm_parsers).
_SAMPLES = {"create": ["x", "--template", "busybox", "--ip", "198.18.0.2/15"], "list": [], "update": ["x"],
            "exec": ["x", "true"]}


def _warm_parsers() -> None:
    """Build and try each served verb's parser once in the server, and format the help: argparse
    compiles its regular expressions as it goes (re's cache keeps them), which each command then
    did in its child: five compiles, 1-2 ms of a `vserver stop --kill`'s 21 ms under cProfile."""
    from . import cli

    cli.build_parser(None).format_help()
    for verb in sorted(SERVED | SERVED_WITHOUT_TERMINAL):
        cli.build_parser(verb).parse_args([verb, *_SAMPLES.get(verb, ["x"])])


class _Stop(Exception):
    """SIGTERM or SIGINT: the server stops taking commands (those running carry on)."""


# Ends a spare that waits (its default action); a spare ignores it once it took a command, so
# that a command runs to its end when the server stops or dies (the spare's parent-death signal).
SPARE_END = _signal.SIGUSR1


def _fork_spare(listener, lock: int, here: str, files: tuple) -> tuple[int, int]:
    """Fork the next spare: its pid, and the pipe on which it says what became of it."""
    note_r, note_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(note_r)
            os.close(lock)
            _spare(listener, note_w, here, files)  # returns only if it is to end
            code = 0
        finally:
            os._exit(code)
    os.close(note_w)
    return pid, note_r


def _spare(listener, note: int, here: str, files: tuple) -> None:
    """In a spare: take the next command that checks out, tell the server, and run it."""
    import signal

    from .syscalls import PR_SET_PDEATHSIG, prctl

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(SPARE_END, signal.SIG_DFL)
    # Not in the server's session: a terminal the server runs in is not the user's, and its ^C
    # is the server's alone.
    os.setsid()
    prctl(PR_SET_PDEATHSIG, SPARE_END)
    if os.getppid() == 1:  # the server died before that
        return
    _own_pages()
    while True:
        conn, _ = listener.accept()
        with conn:
            taken = _take(conn, here, files)
            if taken == "stale":
                os.write(note, b"stale")
                return
            if taken is None:
                continue
            signal.signal(SPARE_END, signal.SIG_IGN)
            prctl(PR_SET_PDEATHSIG, 0)
            os.write(note, b"took")
            os.close(note)
            listener.close()
            _child(conn, *taken)  # never returns


def _own_pages() -> int:
    """Copy the pages this spare shares with the server copy-on-write, while it waits: else its
    command copies them one fault at a time as it first writes to each (every Python object
    it touches, by its reference count). Only pages in memory, of private writable mappings
    (the heap, the interpreter's arenas, libraries' data): about 10 MB, which a stop --kill
    through the server ran 6 ms faster with, a start 2 ms (scratch measurements, 2026-12-07).
    Returns the bytes copied; 0 on a kernel before 5.14 (no MADV_POPULATE_WRITE)."""
    from .syscalls import populate_write, resident_runs

    copied = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("rw") or fields[1][3] != "p" or fields[-1] in ("[stack]", "[vvar]"):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                for start, length in resident_runs(low, high - low):
                    populate_write(start, length)
                    copied += length
            except OSError:
                return copied
    return copied


def _take(conn, here: str, files: tuple):
    """One connection: check its peer and request. The request's streams, arguments, environment
    and directory if it is to run; None if not (refused, or another checkout's: answered), or
    "stale" (answered)."""
    import contextlib
    import socket
    import struct

    conn.settimeout(2.0)  # a peer that connects and sends nothing must not hold the spare
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        return None
    try:
        data, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    except OSError:  # TimeoutError among them
        return None
    request = _request(data, flags, fds)
    answer = None
    if request is not None and request[0] != here:
        answer = "other"
    elif request is not None and fingerprint(here) != files:
        answer = "stale"
    if request is None or answer is not None:
        for fd in fds:
            os.close(fd)
        if answer is not None:
            with contextlib.suppress(OSError):
                conn.send(marshal.dumps((answer, 0)))
        return answer if answer == "stale" else None
    conn.settimeout(None)
    return (fds, *request[1:])


def _request(data: bytes, flags: int, fds: list[int]) -> tuple[str, list[str], dict[bytes, bytes], str, int] | None:
    import socket

    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3:
        return None
    try:
        protocol, package, argv, env, cwd, umask = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if (protocol != PROTOCOL or not isinstance(package, str) or not isinstance(cwd, str)
            or not isinstance(umask, int) or not 0 <= umask <= 0o777
            or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)
            or not isinstance(env, dict)
            or not all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in env.items())):
        return None
    return package, argv, env, cwd, umask


def _child(conn, fds: list[int], argv: list[str], env: dict[bytes, bytes], cwd: str, umask: int) -> NoReturn:
    """In the spare that took a command: become the user's command (its streams, environment,
    directory, umask) and run it."""
    import signal

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # its own children are waited for
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)  # the server's own 0-2 are taken, so these are >= 3
        os.environ.clear()
        os.environb.update(env)  # the user's, as its process had it (command.py sends posix.environ)
        os.chdir(cwd)
        os.umask(umask)
        _own_streams()
        sys.argv = ["vserver", *argv]
        conn.send(marshal.dumps(("pid", os.getpid())))
        from .cli import outcome

        code = outcome(argv)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:  # as cli.run: the reader went away
            code = code or 1
    except KeyboardInterrupt:  # the user's ^C before main() took it: as main() answers it
        code = 130
    except BaseException:  # noqa: BLE001 - whatever it is, the user hears of it and gets a status
        import traceback

        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        # The user's streams closed before the status goes out: whoever reads the user's output
        # sees its end no later than the user's process exits.
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        try:
            conn.send(marshal.dumps(("exit", code)))
        finally:
            os._exit(code)


def _own_streams() -> None:
    """sys.stdin/stdout/stderr anew on descriptors 0-2, which are now the user's: the server's
    were made for its own (a log file is block-buffered, a terminal line-buffered)."""
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False,  # noqa: SIM115
                      buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115


if __name__ == "__main__":  # python -m vservers.engine.resident write-launcher PATH (Makefile)
    if sys.argv[1:2] != ["write-launcher"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m vservers.engine.resident write-launcher PATH")
    write_launcher(sys.argv[2], sys.executable, os.path.dirname(os.path.dirname(package_dir())))
