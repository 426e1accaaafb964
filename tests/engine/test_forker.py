"""The fork server (vservers/engine/forker.py): a big process's starts fork their helpers from
a small process, and nothing of the engine's reaches the guest that way either."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.engine.helpers import is_fork_server, report_self, wait_for_http
from vservers.engine import procfs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def forker(monkeypatch):
    from vservers.engine.forker import ForkServer

    monkeypatch.chdir(REPO)  # the server imports tests.engine.helpers from here, as pytest does
    server = ForkServer()
    yield server
    server.close()


def _child_report(forker, tag: str, extra_fds: list[int]) -> dict:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = forker.fork(report_self, [out_w, *extra_fds], tag)
    finally:
        os.close(out_w)
    with os.fdopen(out_r, "rb") as out:
        report = json.loads(out.read())  # EOF: the child has exited
    report["pid"] = pid
    return report


def test_a_child_gets_only_the_fds_it_was_given_close_on_exec_and_is_reaped(forker):
    held_r, held_w = os.pipe2(os.O_CLOEXEC)  # open in this process, not handed over
    given_r, given_w = os.pipe2(os.O_CLOEXEC)
    try:
        report = _child_report(forker, "first", [given_r])
    finally:
        for fd in (held_r, held_w, given_r, given_w):
            os.close(fd)
    assert report["tag"] == "first"
    assert report["ppid"] == forker.pid != os.getpid()
    extra = {int(fd): cloexec for fd, cloexec in report["fds"].items() if int(fd) > 2}
    # The pipe's end and nothing else of ours (nor the server's socket), close-on-exec as made.
    assert list(extra.values()) == [True] and len(extra) == 1, report["fds"]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{report['pid']}").exists():  # the kernel reaps it: no zombie stays
        assert time.monotonic() < deadline, f"child {report['pid']} not reaped"
        time.sleep(0.01)


def test_a_killed_server_is_replaced_and_a_closed_one_ends(forker):
    first = _child_report(forker, "a", [])
    old = forker.pid
    os.kill(old, signal.SIGKILL)
    # Dead between two requests (one that dies during a request fails that request instead).
    assert procfs.wait_exit(old, 10)
    second = _child_report(forker, "b", [])
    assert second["tag"] == "b" and forker.pid not in (None, old)
    assert second["ppid"] == forker.pid and first["ppid"] == old
    proc = forker._proc
    forker.close()
    assert proc.poll() is not None and forker.pid is None


@pytest.mark.parametrize("fork_server", [False, True], ids=["direct", "fork-server"])
def test_a_start_gives_the_guest_nothing_of_the_engine(engine, config, fork_server, monkeypatch):
    from vservers.engine import Engine

    monkeypatch.chdir(REPO)
    eng = Engine(config, fork_server=fork_server)
    name, ip = f"fork{int(fork_server)}", f"198.19.5.{70 + int(fork_server)}"
    eng.create(name, "busybox", [f"{ip}/18"])
    try:
        status = eng.start(name)
        wait_for_http(ip)
        init = status.init_pid
        # The guest's init has only its null stdio: no pipe, socket or lock of the engine's, of
        # the fork server's or of the setup child's.
        assert sorted(os.listdir(f"/proc/{init}/fd")) == ["0", "1", "2"]
        assert all(os.readlink(f"/proc/{init}/fd/{fd}") == "/dev/null" for fd in "012")
        if fork_server:
            assert eng._forker.pid is not None  # the start went through it
            assert _ppid(init) != eng._forker.pid  # orphaned like any daemon, not kept by it
        eng.stop(name, timeout=0)
        assert eng.status(name).state == "stopped"
        eng.start(name)  # once more through the same server
        wait_for_http(ip)
    finally:
        eng.delete(name)
        eng.close()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_batch_start_forks_through_a_server_of_its_own_that_ends_with_it(engine, config, make_server, monkeypatch):
    from vservers.engine import forker, lifecycle

    monkeypatch.chdir(REPO)
    forked = []  # what went through a fork server (the real one: this only counts)
    real_fork = forker.ForkServer.fork

    def counted(self, function, *rest):
        forked.append(function.__name__)
        return real_fork(self, function, *rest)

    monkeypatch.setattr(forker.ForkServer, "fork", counted)
    count = lifecycle.BATCH_FORK_SERVER
    servers = {make_server(f"batch{i}", f"198.19.5.{80 + i}/18", start=False): f"198.19.5.{80 + i}"
               for i in range(count)}
    assert engine._forker is None  # the tests' engine has no fork server of its own
    before = set(_fork_servers_of(os.getpid()))  # a panel test's jobs.get_engine() may have one
    assert engine.start_many(list(servers)) == dict.fromkeys(sorted(servers))
    for name, ip in servers.items():
        wait_for_http(ip)
        assert sorted(os.listdir(f"/proc/{engine.status(name).init_pid}/fd")) == ["0", "1", "2"]
    assert forked.count("_setup_main") == forked.count("_helper_main") == count
    assert set(_fork_servers_of(os.getpid())) <= before  # the batch's server ended with the call


def _fork_servers_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _ppid(int(entry.name)) == pid and is_fork_server(int(entry.name)):
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found
