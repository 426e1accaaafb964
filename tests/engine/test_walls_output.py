"""What a guest writes, and how it runs what the host starts in it, cannot hurt the host side
(issue 10, findings 2, 7, 10 and 11): attacks from inside a real busybox VPS, each beside a
positive control that shows the attack is real.

- Output without end (/etc/passwd a link to /dev/zero) costs the reading host process a
  bounded amount of memory and ends in a one-line error.
- A loop that SIGSTOPs every new process before it can exec cannot hang the engine: the
  helper and its program are killed at the deadline, and nothing of ours is left.
- Control sequences written by the guest do not reach the operator's terminal through
  `vserver exec` (shown as text) or `vserver enter` (only the harmless ones pass).
- `vserver exec` relays stdin of every kind byte for byte: regular files, /dev/null, pipes
  and terminals.
"""

from __future__ import annotations

import hashlib
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.leaks import TEST_ENV

REPO = Path(__file__).resolve().parents[2]

# Stops every process it has not seen before, as soon as it shows up in /proc: before a
# program the host starts in the guest can exec. Builtins only (kill, case, globs): the loop
# itself starts no process.
STOP_LOOP = r"""
seen=" $$ "
for d in /proc/[0-9]*; do seen="$seen${d#/proc/} "; done
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$seen" in *" $p "*) ;; *) kill -STOP "$p" 2>/dev/null; seen="$seen$p ";; esac
  done
done
"""

# What a hostile guest writes to the operator's terminal: answers requested (cursor position,
# device attributes, the window title report, DECRQSS), the clipboard, the title, a DCS and
# an APC string, and the same as 8-bit C1 controls; around them text and colours.
HOSTILE_PRINTF = (r"plain-\033[31mRED\033[0m-text \033[6n\033[c\033[>c\033[21t\033[14t"
                  r"\033]52;c;cm0gLXJmIH4K\007\033]0;owned\007\033]2;owned\033\\"
                  r"\033P$qm\033\\\033_apc\033\\\033[5i\033Z\233""6n\302\233""6n end-%s\n")
DANGEROUS = [b"\x1b[6n", b"\x1b[c", b"\x1b[>c", b"\x1b[21t", b"\x1b[14t", b"\x1b]", b"\x1bP", b"\x1b_",
             b"\x1b[5i", b"\x1bZ", b"\x9b", b"\xc2\x9b", b"owned", b"cm0gLXJmIH4K"]


def _cli(*args: str, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, input=None):
    return subprocess.run([sys.executable, "-m", "vservers.engine.cli", *args], stdin=None if input else stdin,
                          input=input, stdout=stdout, stderr=stderr, env={**os.environ, **TEST_ENV}, cwd=REPO)


def _cli_peak_rss(*args: str) -> tuple[int, int, str]:
    """Run the CLI; its exit status, its peak resident set (bytes, from the kernel's
    accounting: wait4's ru_maxrss, the CLI's own and its reaped helpers') and its stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env={**os.environ, **TEST_ENV}, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        return proc.returncode, usage.ru_maxrss * 1024, err.read().decode(errors="replace")


def _ours(engine, name: str) -> dict[int, str]:
    """The processes the engine started for server NAME that are still there (helpers and the
    programs they run, zombies included), with their states: those of the server's uids
    outside its init's tree, started since its init. (The guest's root in the helper maps to the
    server's uid base; a zombie left by an earlier server that had the same uid range is older.)"""
    base = engine.spec(name).uid_base
    init = engine.init_pid(name)
    started = psutil.Process(init).create_time()
    found = {}
    for process in psutil.process_iter():
        try:
            if not base <= process.uids().real < base + 65536 or process.pid == init:
                continue
            if process.create_time() < started:
                continue
            if init not in {parent.pid for parent in process.parents()}:
                found[process.pid] = process.status()
        except psutil.NoSuchProcess:
            pass
    return found


def _host_pid(init_pid: int, guest_pid: int) -> int:
    """The host pid of the process GUEST_PID in the PID namespace of INIT_PID."""
    ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.stat(proc / "ns" / "pid").st_ino != ns:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(guest_pid):
                    return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process {guest_pid} in the guest")


def _stopped_in(init_pid: int) -> list[int]:
    ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    stopped = []
    for proc in psutil.process_iter():
        try:
            if os.stat(f"/proc/{proc.pid}/ns/pid").st_ino == ns and proc.status() == psutil.STATUS_STOPPED:
                stopped.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return stopped


# -- finding 2: output without end ------------------------------------------------------------


def test_output_without_end_costs_the_host_a_bounded_amount_of_memory(engine, make_server):
    from vservers.engine import EngineError, guest

    name = make_server("wo-flood", "198.19.31.10/18")
    code, baseline, err = _cli_peak_rss("account", "list", name)
    assert code == 0, err

    assert engine.run(name, ["ln", "-sf", "/dev/zero", "/etc/passwd"]).returncode == 0
    # Positive control: the guest's `cat /etc/passwd` (what the engine falls back to when the
    # host-side reader refuses the link) really writes without end: read three times the cap.
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        helper = guest.spawn(engine.init_pid(name), ["cat", "/etc/passwd"], engine.cgroup_procs(name),
                             null, out_w, null)
    finally:
        os.close(out_w)
        os.close(null)
    read = 0
    try:
        while read <= 3 * guest.OUTPUT_LIMIT:
            block = os.read(out_r, 2**20)
            assert block
            read += len(block)
    finally:
        os.close(out_r)
        helper.kill()
    with pytest.raises((OSError, EngineError)):  # the host-side reader refuses the link
        engine.accounts(name).list_from_files()

    code, peak, err = _cli_peak_rss("account", "list", name)
    assert code == 1
    assert f"'cat' in the server wrote more than {guest.OUTPUT_LIMIT} bytes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # The cap plus its copies (the chunks and their join): far below what the guest offered.
    assert peak - baseline < 8 * guest.OUTPUT_LIMIT, (peak, baseline)

    # Every account operation looks its user up, and each stops at the cap.
    for operation in (lambda a: a.get("root"), lambda a: a.add("eve"), lambda a: a.delete("eve")):
        with pytest.raises(EngineError, match=f"more than {guest.OUTPUT_LIMIT} bytes"):
            operation(engine.accounts(name))
    assert _ours(engine, name) == {}


def test_a_guest_file_past_the_read_cap_is_refused_not_read_whole(engine, make_server):
    """A regular file (no link to refuse) of 1 GiB: the host-side reader stops at
    guest.READ_LIMIT with a one-sentence error, and the fallback inside stops at OUTPUT_LIMIT."""
    from vservers.engine import EngineError, guest

    name = make_server("wo-bigfile", "198.19.31.16/18")
    code, baseline, err = _cli_peak_rss("account", "list", name)
    assert code == 0, err
    size = 2**30  # sparse: the guest's 32 MiB disk need not hold it
    made = engine.run(name, ["dd", "if=/dev/zero", "of=/etc/passwd", "bs=1", "count=0", f"seek={size}"])
    assert made.returncode == 0, made.stderr
    root = guest.open_root(engine, name)
    try:
        # Positive control: it is a regular file the host may open, and it offers far more than the cap.
        fd = guest.open_in_root(root, "/etc/passwd", stat.S_IFREG)
        try:
            read = 0
            while read <= 3 * guest.READ_LIMIT:
                block = os.read(fd, 2**20)
                assert block
                read += len(block)
        finally:
            os.close(fd)
        with pytest.raises(EngineError, match=f"^/etc/passwd in the guest is larger than {guest.READ_LIMIT} bytes$"):
            guest.read_file(root, "/etc/passwd")
    finally:
        os.close(root)
    with pytest.raises(EngineError, match="larger than"):
        engine.accounts(name).list_from_files()

    code, peak, err = _cli_peak_rss("account", "list", name)
    assert code == 1
    assert f"'cat' in the server wrote more than {guest.OUTPUT_LIMIT} bytes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # The file cap and then the output cap, each with its copies: far below the 1 GiB offered.
    assert peak - baseline < 8 * (guest.READ_LIMIT + guest.OUTPUT_LIMIT), (peak, baseline)
    print(f"\nCLI account list, /etc/passwd a sparse file of {size} bytes: peak RSS {peak / 1e6:.1f} MB "
          f"(sane guest {baseline / 1e6:.1f} MB)")
    assert _ours(engine, name) == {}


# -- finding 7: a guest that stops what the host starts ---------------------------------------


def test_a_guest_stopping_new_processes_cannot_hang_the_engine(engine, make_server, monkeypatch):
    from vservers.engine import EngineError, guest

    name = make_server("wo-stop", "198.19.31.11/18")
    # Control: the command works while nothing stops it.
    assert engine.run(name, ["echo", "ok"], timeout=3).stdout == "ok\n"
    started = engine.run(name, ["sh", "-c", 'sh -c "$0" </dev/null >/dev/null 2>&1 & echo $!', STOP_LOOP])
    loop = _host_pid(engine.init_pid(name), int(started.stdout))
    try:
        outcome: dict[str, object] = {}
        seen_stopped: list[int] = []

        def attempt() -> None:
            try:
                outcome["result"] = engine.run(name, ["echo", "ok"], timeout=3)
            except EngineError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=attempt)
        thread.start()
        while thread.is_alive():  # the attack bites: our program is held stopped before it execs
            seen_stopped += [pid for pid, status in _ours(engine, name).items() if status == psutil.STATUS_STOPPED]
            time.sleep(0.05)
        thread.join(120)
        assert not thread.is_alive(), "engine.run(timeout=3) did not return"
        assert seen_stopped, "the guest's loop never stopped the program: the attack did not happen"
        assert "did not start within 3 s" in str(outcome.get("error")), outcome
        assert _ours(engine, name) == {}
        assert _stopped_in(engine.init_pid(name)) == [], "a stopped program was left in the guest"

        # The panel worker's path: account and service operations carry a deadline too.
        monkeypatch.setattr(guest, "OPERATION_TIMEOUT", 2.0)
        with pytest.raises(EngineError, match="did not start within 2 s"):
            engine.accounts(name).add("eve")
        with pytest.raises(EngineError, match="did not start within 2 s"):
            engine.services(name).list()
        assert _ours(engine, name) == {}
    finally:
        os.kill(loop, signal.SIGKILL)
    # The server is usable again once the loop is gone.
    assert engine.run(name, ["echo", "ok"], timeout=10).stdout == "ok\n"


def test_a_program_that_runs_past_its_time_or_writes_without_end_is_killed(engine, make_server):
    from vservers.engine import EngineError, guest

    name = make_server("wo-slow", "198.19.31.12/18")
    with pytest.raises(EngineError, match="did not finish within 1 s"):
        engine.run(name, ["sh", "-c", "trap '' PIPE TERM; sleep 1000"], timeout=1)
    with pytest.raises(EngineError, match=f"wrote more than {guest.OUTPUT_LIMIT} bytes"):
        engine.run(name, ["sh", "-c", "trap '' PIPE; cat /dev/zero"], timeout=30)
    # Stopped by the guest after it exec'd: killed at the deadline all the same.
    with pytest.raises(EngineError, match="did not finish within 1 s"):
        engine.run(name, ["sh", "-c", "kill -STOP $$"], timeout=1)
    assert _ours(engine, name) == {}
    assert _stopped_in(engine.init_pid(name)) == []


# -- finding 10: control sequences on the operator's terminal ---------------------------------


def _read_all(fd: int, until: bytes | None = None, limit: float = 30.0) -> bytes:
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (until is None or until not in out):
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            block = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not block:
            break
        out += block
    return out


def test_exec_shows_control_sequences_as_text_on_a_terminal(engine, make_server):
    name = make_server("wo-term", "198.19.31.13/18")
    # Positive control: to a pipe the guest's bytes pass as they are, every sequence included.
    raw = _cli("exec", name, "--", "printf", HOSTILE_PRINTF, "42")
    assert raw.returncode == 0, raw.stderr
    for sequence in (b"\x1b[6n", b"\x1b]52;c;", b"\x1b[21t", b"\x9b6n", b"\xc2\x9b6n"):
        assert sequence in raw.stdout

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", "exec", name, "--", "sh", "-c",
                                 'printf "$0" 42; printf "$0" 43 >&2', HOSTILE_PRINTF],
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**os.environ, **TEST_ENV},
                                cwd=REPO)
        os.close(slave)
        shown = _read_all(master, until=b"end-43")
        assert proc.wait(30) == 0
    finally:
        os.close(master)
    assert b"plain-" in shown and b"RED" in shown and b"-text" in shown and b"end-42" in shown and b"end-43" in shown
    assert b"\x1b" not in shown and b"\x9b" not in shown and b"\x07" not in shown
    assert b"^[]52;c;cm0gLXJmIH4K^G" in shown and b"^[[6n" in shown and b"M-^[6n" in shown


def test_enter_passes_colours_and_drops_what_makes_the_terminal_answer(engine, make_server):
    name = make_server("wo-enter", "198.19.31.14/18")
    # Positive control: the guest writes every one of the sequences (seen through a pipe).
    written = engine.run(name, ["printf", HOSTILE_PRINTF, "42"]).stdout.encode(errors="surrogateescape")
    assert all(sequence.decode(errors="surrogateescape").encode(errors="surrogateescape") in written
               for sequence in (b"\x1b[6n", b"\x1b]52;", b"\x1b]0;owned", b"\x1bP$qm", b"\x1b[21t"))

    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "vservers.engine.cli", "enter", name],
                  {**os.environ, **TEST_ENV})
    try:
        _read_all(fd, until=b"# ")
        os.write(fd, f"printf '{HOSTILE_PRINTF}' $((6*7)); exit\n".encode())
        shown = _read_all(fd)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    screen = shown.split(b"exit", 1)[1]  # what the guest wrote after the command line's echo
    assert b"plain-\x1b[31mRED\x1b[0m-text" in screen and b"end-42" in screen
    for sequence in DANGEROUS:
        assert sequence not in screen, sequence


# -- finding 11: stdin of every kind --------------------------------------------------------------


def test_exec_relays_stdin_of_every_kind(engine, make_server, tmp_path):
    import select as select_module

    name = make_server("wo-stdin", "198.19.31.15/18")
    payload = os.urandom(3 * 2**20 + 12345) + b"\x1b]52;c;x\x07\x00\xff"
    source = tmp_path / "payload"
    source.write_bytes(payload)
    (tmp_path / "empty").write_bytes(b"")
    # The cause of finding 11, shown where it lives: epoll refuses a regular file.
    with open(source, "rb") as fh, pytest.raises(PermissionError):
        select_module.epoll().register(fh.fileno(), select_module.EPOLLIN)

    store = ["sh", "-c", "cat > /tmp/in; wc -c < /tmp/in; md5sum < /tmp/in"]

    def expect(data: bytes) -> bytes:
        return f"{len(data)}\n{hashlib.md5(data).hexdigest()}  -\n".encode()  # noqa: S324 - busybox's md5sum

    with open(source, "rb") as fh:
        assert _cli("exec", name, "--", *store, stdin=fh).stdout == expect(payload)
    with open(tmp_path / "empty", "rb") as fh:
        assert _cli("exec", name, "--", *store, stdin=fh).stdout == expect(b"")
    with open(os.devnull, "rb") as fh:
        assert _cli("exec", name, "--", *store, stdin=fh).stdout == expect(b"")
    assert _cli("exec", name, "--", *store, input=payload).stdout == expect(payload)  # a pipe
    # And back out through a pipe, byte for byte.
    back = _cli("exec", name, "--", "cat", "/tmp/in")
    assert back.returncode == 0 and back.stdout == payload

    # A terminal: a line and then end of input (^D), as typed.
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", "exec", name, "--", *store],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **TEST_ENV}, cwd=REPO)
        os.close(slave)
        os.write(master, b"typed on a terminal\n\x04")  # a line, then the end-of-file key
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert out == expect(b"typed on a terminal\n"), err


# -- the filters, on crafted streams ----------------------------------------------------------

STREAM = (b"ok \xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80 \xff\xfe "  # UTF-8 of 2, 3 and 4 bytes; bytes that are not UTF-8
          b"\x1b[1;38;5;208mcolour\x1b[0m \x1b[12;40H\x1b[2J\x1b[K\x1b[?25l\x1b[?1049h\x1b[?2004h\x1b(0q\x1b(B"
          b"\x1b7\x1b8\x1b[3 q\r\n\t\b\x07"
          b"\x1b[6n\x1b[?6n\x1b[c\x1b[>0c\x1b[=c\x1b[21t\x1b[8;100;100t\x1b[5i\x1b[2h\x1b[?1;2$p\x1b[1$p"
          b"\x1b[?1000;3h\x1bZ\x05\x1b]52;c;aGk=\x07\x1b]0;t\x1b\\\x1b]8;;http://x/\x1b\\link\x1b]8;;\x1b\\"
          b"\x1bP$qm\x1b\\\x1bP+q544e\x1b\\\x1b_Ga=T;AAAA\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\"
          b"\x9b6n\xc2\x9b6n\x9d52;c;x\x9c\xc2\x9d0;t\xc2\x9c\x90$qm\x9c"
          b"\x1b[1;2;3;4;5;6;7;8;9;10;11;12;13;14;15;16;17;18;19;20;21;22;23;24;25;26;27;28;29;30m"
          b"\x1b[12\x18x\x1b]0;never ended \x1a after-sub end\n")
KEPT = [b"ok \xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80 \xff\xfe ", b"\x1b[1;38;5;208mcolour\x1b[0m ",
        b"\x1b[12;40H\x1b[2J\x1b[K\x1b[?25l\x1b[?1049h\x1b[?2004h\x1b(0q\x1b(B\x1b7\x1b8\x1b[3 q\r\n\t\b\x07",
        b"link", b"x", b" after-sub end\n"]
DROPPED = [b"\x1b[6n", b"\x1b[?6n", b"\x1b[c", b"\x1b[>0c", b"\x1b[=c", b"t\x1b", b"\x1b[5i", b"\x1b[2h", b"$p",
           b"\x1b[?1000;3h", b"\x1bZ", b"\x05", b"\x1b]", b"\x1bP", b"\x1b_", b"\x1b^", b"\x1bX", b"aGk=", b"http",
           b"\x9b", b"\x9d", b"\x9c", b"\x90", b"qm", b"AAAA", b"pm", b"sos", b"never ended", b"30m"]


def _split_feeds(make, data: bytes) -> None:
    whole = make().feed(data, final=True)
    for i in range(len(data) + 1):
        f = make()
        assert f.feed(data[:i]) + f.feed(data[i:], final=True) == whole, i
    f = make()
    assert b"".join(f.feed(data[i:i + 1]) for i in range(len(data))) + f.feed(b"", final=True) == whole
    for i in range(0, len(data) + 1, 7):
        for j in range(i, len(data) + 1, 5):
            f = make()
            assert f.feed(data[:i]) + f.feed(data[i:j]) + f.feed(data[j:], final=True) == whole, (i, j)


def test_the_terminal_filter_keeps_the_screen_and_drops_the_rest_at_any_split():
    from vservers.engine.termfilter import TerminalFilter

    shown = TerminalFilter().feed(STREAM, final=True)
    assert shown == b"".join(KEPT), shown
    for sequence in DROPPED:
        assert sequence not in shown, sequence
    _split_feeds(TerminalFilter, STREAM)
    text = "".join(chr(c) for c in range(0x20, 0x3000) if not 0x7F <= c <= 0x9F).encode()
    assert TerminalFilter().feed(text, final=True) == text


def test_the_plain_filter_shows_every_control_as_text_at_any_split():
    from vservers.engine.termfilter import PlainFilter

    shown = PlainFilter().feed(STREAM, final=True)
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\x05" not in shown
    assert b"ok \xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80 \xff\xfe " in shown
    assert b"^[[6n" in shown and b"^[]52;c;aGk=^G" in shown and b"M-^[6n" in shown and b"\r\n\t\b" in shown
    # Nothing but the controls changed: taking the rendering back out gives the stream.
    _split_feeds(PlainFilter, STREAM)
    text = "".join(chr(c) for c in range(0x20, 0x3000) if not 0x7F <= c <= 0x9F).encode()
    assert PlainFilter().feed(text, final=True) == text
