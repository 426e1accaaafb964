"""The `vserver` command: hands a command to the resident server of its state root
(`vserver serve`, resident.py) if one runs, else runs it in this process (cli.py).

This side connects to the server's socket in the state root and hands it the command: its
arguments, environment, working directory and umask in one message, and its standard input, output and
error alongside (SCM_RIGHTS). The server's child takes those as its own, runs the command as
cli.py would here, and answers with its exit status. Output goes from the child straight to the
user's terminal or pipe; SIGINT, SIGTERM and SIGHUP this process gets are passed on to the child.

It imports nothing but the interpreter's built-in modules (posix, not os: os and its
collections.abc cost a served command ~2 ms of its ~18; `python -S -c 'import os'` against
`python -S -c pass`, paired medians of 40, 2026-12-07).

The command runs in this process, as before, when
- no server runs for the state root (no socket, or a dead server's),
- VSERVER_RESIDENT=0 says so,
- the verb wants the user's terminal as its controlling terminal or reads a password (enter,
  account, console, ...): only the verbs in SERVED go to the server, and those of
  SERVED_WITHOUT_TERMINAL (exec) when none of the user's standard streams is a terminal,
- the server answers that it is stale (the engine's files changed since it started; it then
  ends, for its supervisor to start it again) or runs another checkout's engine.
"""

from __future__ import annotations

import _signal
import _socket
import marshal
import posix
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

# state.DEFAULT_ROOT: importing state.py costs this side json (and with it re); a test holds
# the two equal.
DEFAULT_ROOT = "/var/lib/vservers"
SOCKET_NAME = "cli.sock"
OPT_OUT = "VSERVER_RESIDENT"
# The verbs that need nothing of the user's process but its standard streams.
SERVED = frozenset({"create", "start", "stop", "restart", "delete", "update", "status", "list"})
# Served when no standard stream is a terminal (a script's, a pipe's): `exec` forwards its streams
# through pipes either way, but typed at a terminal it keeps its own process, in the terminal's
# session, so that ^Z stops what the user started (the server's child has a session of its own).
SERVED_WITHOUT_TERMINAL = frozenset({"exec"})
PROTOCOL = 2  # 2: the umask too
FIRST_ANSWER = 10.0  # seconds: the server forks at once, unless it is stopped or hung
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)


def _decode(raw: bytes) -> str:
    """What os.fsdecode does."""
    return raw.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def package_dir() -> str:
    """This engine's directory: a server runs only a client of the same checkout's commands."""
    here = __file__ if __file__.startswith("/") else f"{posix.getcwd()}/{__file__}"
    return here.rpartition("/")[0]


def socket_path(root: str) -> str:
    """The server's socket in state ROOT (an absolute path)."""
    return f"{root.rstrip('/')}/{SOCKET_NAME}"


def served(argv: Sequence[str], on_terminal: bool | None = None) -> bool:
    """Whether the server may run `vserver ARGV`: a verb of SERVED, or no verb (usage, --help),
    or one of SERVED_WITHOUT_TERMINAL unless ON_TERMINAL (default: whether one of this process's
    standard streams is a terminal)."""
    if not argv or argv[0] in SERVED or argv[0] in ("-h", "--help"):
        return True
    if argv[0] not in SERVED_WITHOUT_TERMINAL:
        return False
    if on_terminal is None:
        on_terminal = any(posix.isatty(fd) for fd in (0, 1, 2))
    return not on_terminal


def call(argv: Sequence[str]) -> int | None:
    """Run `vserver ARGV` in the resident server of this state root and return its exit status;
    None if it was not run there (see the module's doc), so the caller runs it itself."""
    environ = posix.environ
    root = _decode(environ.get(b"VSERVER_ROOT", DEFAULT_ROOT.encode()))
    if environ.get(OPT_OUT.encode()) == b"0" or not served(argv) or not root.startswith("/"):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    relay = _Relay()
    try:
        try:
            sock.connect(socket_path(root))
            umask = posix.umask(0o077)  # read by setting it; this process creates no file meanwhile
            posix.umask(umask)
            request = marshal.dumps((PROTOCOL, package_dir(), list(argv), dict(environ), posix.getcwd(), umask))
            streams = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
            sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, streams)])
        except OSError:  # none listening, a stream closed (EBADF), the working directory gone
            return relay.not_run()
        sock.settimeout(FIRST_ANSWER)
        try:
            reply = sock.recv(256)
        except OSError:  # it may yet fork the command: running it here as well could run it twice
            sys.stderr.write(f"vserver: error: the resident server (vserver serve) at {socket_path(root)} does not "
                             f"answer; stop it, or run the command with {OPT_OUT}=0\n")
            return 1
        sock.settimeout(None)
        answer = _answer(reply)
        if answer is None or answer[0] != "pid":
            return relay.not_run()  # "stale" or "other": nothing ran
        relay.to(answer[1])
        try:
            answer = _answer(sock.recv(256))
        except OSError:
            answer = None
        if answer is not None and answer[0] == "exit":
            return answer[1]
        if relay.caught:  # it died of what was passed on, as this process would have
            return 128 + relay.caught[-1]
        sys.stderr.write("vserver: error: the command ended without an exit status in the resident server "
                         "(vserver serve); see its log\n")
        return 1
    finally:
        sock.close()


class _Relay:
    """The user's SIGINT, SIGTERM and SIGHUP from before the request goes out: held until the
    command's process is known, then passed on to it, like every one after."""

    def __init__(self) -> None:
        self.child = 0
        self.caught: list[int] = []
        self.previous = {signum: _signal.signal(signum, self._caught) for signum in FORWARDED}

    def _caught(self, signum: int, frame: object) -> None:
        self.caught.append(signum)
        if self.child:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            posix.kill(self.child, signum)
        except ProcessLookupError:
            pass

    def to(self, child: int) -> None:
        self.child = child
        for signum in self.caught:
            self._send(signum)

    def not_run(self) -> int | None:
        """Nothing ran in the server: the handlers as they were, and the status of a signal
        caught meanwhile (the user's ^C), else None (to run it here)."""
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        return 128 + self.caught[-1] if self.caught else None


def _answer(reply: bytes) -> tuple[str, int] | None:
    try:
        kind, value = marshal.loads(reply)
    except (ValueError, EOFError, TypeError):
        return None
    return (kind, value) if isinstance(kind, str) and isinstance(value, int) else None


def run() -> NoReturn:
    """The `vserver` command (pyproject.toml, and LAUNCHER): in the resident server if one
    runs, else here."""
    code = call(sys.argv[1:])
    if code is None:
        # Here too without site (LAUNCHER's -S, ~5 ms): the engine is the standard library's
        # and its own, but for pyroute2, and network.py loads site before it can import it.
        from .cli import run as run_here

        run_here()
    try:
        sys.stdout.flush()
    finally:
        posix._exit(code)


