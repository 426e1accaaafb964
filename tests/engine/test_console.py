"""The engine's terminal sessions (vservers.engine.console.open_terminal), the way the console
broker uses them: a login shell on the guest's own devpts, as root or as a guest account, in
the server's own process view, hung up like an ssh session once it ends, even when the
process that opened it is killed: the shell and its jobs go, what the user detached stays."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from vservers.engine import console
from vservers.engine.errors import EngineError

IP = "198.19.5.31/18"


def session_processes(engine, name: str) -> dict[int, str]:
    """The processes in the server's cgroup (pid -> command line), but its init's and the
    services the template starts (busybox init, syslogd, httpd...): what a session leaves."""
    procs = engine.cgroup_procs(name)
    pids = {int(line) for line in Path(procs[0]).read_text().split()}
    found = {}
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        found[pid] = cmdline
    return found


def sleepers(engine, name: str) -> dict[str, list[int]]:
    """The test's sleeps in the server by what they were started with: "sleep 1001" a plain
    background job, "sleep 1002" nohup'd, "sleep 1003" setsid'd."""
    found: dict[str, list[int]] = {}
    for pid, cmd in session_processes(engine, name).items():
        if cmd.startswith("sleep 100"):
            found.setdefault(cmd, []).append(pid)
    return found


# A plain background job (hung up with the session), and two the user detached on purpose.
JOBS = (b"sleep 1001 </dev/null >/dev/null 2>&1 &\n"
        b"nohup sleep 1002 </dev/null >/dev/null 2>&1 &\n"
        b"setsid sleep 1003 </dev/null >/dev/null 2>&1 &\n")
DETACHED = ["sleep 1002", "sleep 1003"]


def end_detached(engine, name: str) -> None:
    for pids in sleepers(engine, name).values():
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not sleepers(engine, name), "the detached sleeps to go")


def read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    """What the terminal shows until MARKER (fails after TIMEOUT: only a hang runs into it)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} on the terminal; it showed {data[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the session is over
                break
            if not chunk:
                break
            data += chunk
    return data


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_a_session_is_a_login_shell_on_the_guests_terminal_and_hangs_up_like_ssh(engine, make_server):
    name = make_server("con1", IP)
    before = session_processes(engine, name)
    terminal = console.open_terminal(engine.init_pid(name), engine.cgroup_procs(name), cols=120, rows=40)
    try:
        os.write(terminal.master, b"hostname; tty; stty size; echo $HOME:$USER; id -u\n")
        shown = read_until(terminal.master, b"\n0\r\n")
        assert b"/dev/pts/" in shown
        assert b"40 120" in shown
        assert b"/root:root\r\n" in shown
        assert engine.spec(name).hostname.encode() in shown
        terminal.resize(100, 30)
        os.write(terminal.master, b"stty size\n")
        assert b"30 100" in read_until(terminal.master, b"30 100")
        # The console sees and reaches the server's own processes: a tenant repairs with kill.
        os.write(terminal.master, b"kill -0 1 && pidof httpd && echo reach''ed\n")
        assert b"reached" in read_until(terminal.master, b"reached")
        os.write(terminal.master, JOBS)
        wait_until(lambda: len(sleepers(engine, name)) == 3, "the three sleeps to run in the server")
        # The server's service, up for a while now (a fresh server's httpd may have been
        # restarted by runit while its address came up): the hangup must not touch it.
        httpd = [pid for pid, cmd in session_processes(engine, name).items() if cmd.startswith("httpd")]
        assert httpd
    finally:
        terminal.close()
    try:
        # close() returns once the shell has gone and its session was hung up: the plain job
        # with it, what the user detached (nohup, setsid) still running, as after ssh.
        wait_until(lambda: sorted(sleepers(engine, name)) == DETACHED, lambda: f"only the detached sleeps "
                   f"to stay: {sleepers(engine, name)}", timeout=10)
        left = set(session_processes(engine, name)) - set(before)
        assert left == {pid for pids in sleepers(engine, name).values() for pid in pids}
        assert all(pid in session_processes(engine, name) for pid in httpd)
    finally:
        end_detached(engine, name)
    terminal.close()  # idempotent


def test_a_killed_owner_hangs_its_session_up(engine, make_server):
    """The process that opened the session is killed with SIGKILL (as the broker may be): the
    helper sees its cancel pipe end and hangs the session up all the same."""
    name = make_server("con2", IP)
    before = session_processes(engine, name)
    init_pid, procs = engine.init_pid(name), engine.cgroup_procs(name)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the owner: opens the session, starts the sleeps, says so and waits
        try:
            os.close(ready_r)
            terminal = console.open_terminal(init_pid, procs)
            os.write(terminal.master, JOBS + b"echo start''ed\n")
            read_until(terminal.master, b"started")
            os.write(ready_w, b"1")
            time.sleep(1000)
        finally:
            os._exit(1)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        wait_until(lambda: len(sleepers(engine, name)) == 3, "the three sleeps to run in the server")
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        wait_until(lambda: sorted(sleepers(engine, name)) == DETACHED, lambda: f"only the detached sleeps "
                   f"to stay: {sleepers(engine, name)}")
        # Neither the shell nor the session's parent is left.
        wait_until(lambda: set(session_processes(engine, name)) - set(before) == {
            pid for pids in sleepers(engine, name).values() for pid in pids}, "nothing else to stay")
    finally:
        end_detached(engine, name)


def test_without_the_hangup_a_background_job_outlives_its_shell(engine, make_server):
    """The positive control of the two tests above: a shell on a terminal without the login
    session's hangup (guest.spawn without login_session), killed, leaves its plain
    background job running: the hangup is what ends it."""
    import socket

    from vservers.engine import guest

    name = make_server("con3", IP)
    ours, theirs = socket.socketpair()
    null = os.open("/dev/null", os.O_RDWR)
    helper = guest.spawn(engine.init_pid(name), ["/bin/sh", "-l"], engine.cgroup_procs(name), null, null, null,
                         pty_socket=theirs.fileno())
    theirs.close()
    os.close(null)
    _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    ours.close()
    master = fds[0]
    try:
        os.write(master, b"sleep 1001 </dev/null >/dev/null 2>&1 &\n")
        wait_until(lambda: sleepers(engine, name).get("sleep 1001"), "the sleep to run in the server")
    finally:
        helper.kill()
        os.close(master)
    try:
        time.sleep(0.5)
        assert sleepers(engine, name).get("sleep 1001"), "the control: a background job outlives a plain session"
    finally:
        end_detached(engine, name)


def test_a_guest_account_gets_its_ids_home_and_shell(engine, make_server):
    name = make_server("con4", IP)
    account = engine.accounts(name).add("carol")
    engine.run(name, ["addgroup", "staff2"], timeout=30)
    engine.run(name, ["addgroup", "carol", "staff2"], timeout=30)
    group = next(line for line in engine.run(name, ["cat", "/etc/group"]).stdout.splitlines()
                 if line.startswith("staff2:"))
    staff_gid = int(group.split(":")[2])
    with console.open_terminal(engine.init_pid(name), engine.cgroup_procs(name), account="carol") as terminal:
        os.write(terminal.master, b"echo ids-$(id -u)-$(id -g)-$(id -G | tr ' ' ,)-$HOME-$(pwd)-end; "
                                  b"echo owner-$(stat -c %u $(tty))-end\n")
        expected = f"ids-{account.uid}-{account.gid}-{account.gid},{staff_gid}-{account.home}-{account.home}-end"
        shown = read_until(terminal.master, f"owner-{account.uid}-end\r\n".encode())
        assert expected.encode() in shown
        # Not root: the capabilities went with the uid.
        os.write(terminal.master, b"grep CapEff /proc/self/status\n")
        assert b"0000000000000000" in read_until(terminal.master, b"0000000000000000")


@pytest.mark.parametrize("account", ["nosuch", "bad:name", "", " root", "x" * 40])
def test_an_unknown_or_odd_account_is_a_clear_error(engine, make_server, account):
    name = make_server("con5", IP)
    with pytest.raises(EngineError, match="account"):
        console.open_terminal(engine.init_pid(name), engine.cgroup_procs(name), account=account)
    assert not sleepers(engine, name)


def test_odd_sizes_are_refused(engine, make_server):
    name = make_server("con6", IP)
    for cols, rows in ((0, 24), (80, 0), (5000, 24), (80, -1)):
        with pytest.raises(EngineError, match="terminal"):
            console.open_terminal(engine.init_pid(name), engine.cgroup_procs(name), cols=cols, rows=rows)


def test_parse_groups_skips_odd_lines():
    text = "root:x:0:\nstaff:x:50:carol,dave\nodd:x:²:carol\nshort:x:7\nwheel:x:10:dave,carol\n"
    assert console.parse_groups(text, "carol", 1000) == (1000, 50, 10)
    assert console.parse_groups("", "carol", 1000) == (1000,)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
