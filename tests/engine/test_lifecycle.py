"""Lifecycle operations are idempotent and converge, also from half-done states."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.engine.helpers import wait_for_http


def test_start_twice_and_stop_twice_converge(engine, make_server):
    name = make_server("twice", "198.19.3.10/18", start=False)
    assert engine.status(name).state == "stopped"
    first = engine.start(name)
    second = engine.start(name)
    assert first.state == second.state == "running"
    assert first.init_pid == second.init_pid
    wait_for_http("198.19.3.10")  # start returns once init runs; its web server comes a moment later
    assert engine.stop(name).state == "stopped"
    assert engine.stop(name).state == "stopped"
    assert not engine.cgroups.exists(name)
    # The host veth goes with the guest's network namespace, which the kernel tears down a
    # moment after the stop (the stop does not wait for it): it must go, and by itself.
    deadline = time.monotonic() + 5
    while engine.host_veth(name) in os.listdir("/sys/class/net") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.host_veth(name) not in os.listdir("/sys/class/net")


def test_restart_gives_a_new_init_and_keeps_the_files(engine, make_server):
    name = make_server("again", "198.19.3.11/18")
    engine.run(name, ["/bin/sh", "-c", "echo kept > /root/note"])
    old_pid = engine.status(name).init_pid
    status = engine.restart(name)
    assert status.state == "running" and status.init_pid != old_pid
    assert engine.run(name, ["cat", "/root/note"]).stdout == "kept\n"
    wait_for_http("198.19.3.11")


def test_a_killed_init_shows_stopped_and_starts_again(engine, make_server):
    name = make_server("crashy", "198.19.3.12/18")
    pid = engine.status(name).init_pid
    os.kill(pid, 9)
    from vservers.engine.launch import wait_exit

    assert wait_exit(pid, 10)
    assert engine.status(name).state == "stopped"
    assert engine.start(name).state == "running"


def test_deleting_a_half_created_server_succeeds(engine, config):
    half = config.server_dir("half")
    (half / "disk").mkdir(parents=True)
    (half / "disk.img").write_bytes(b"")
    assert "half" not in engine.names()
    engine.delete("half")
    assert not half.exists()
    engine.delete("half")  # and again: nothing left to do


def test_a_crash_between_create_steps_is_finished_by_the_next_create(engine, config):
    half = config.server_dir("resumed")
    half.mkdir(parents=True)
    (half / "disk.img").write_bytes(b"garbage")
    try:
        spec = engine.create("resumed", "busybox", ["198.19.3.13/18"])
        assert spec.name == "resumed" and "resumed" in engine.names()
        assert engine.create("resumed", "busybox", ["198.19.3.13/18"]) == spec  # same request: no-op
    finally:
        engine.delete("resumed")


def test_a_failed_start_leaves_nothing_behind(engine, config, make_server):
    name = make_server("broken", "198.19.3.14/18", start=False)
    spec_path = config.server_dir(name) / "config.json"
    data = json.loads(spec_path.read_text())
    data["template_version"] = "does-not-exist"
    spec_path.write_text(json.dumps(data))
    from vservers.engine import EngineError

    with pytest.raises(EngineError):
        engine.start(name)
    assert engine.status(name).state == "stopped"
    assert not engine.cgroups.exists(name)
    assert engine.host_veth(name) not in os.listdir("/sys/class/net")


def test_an_init_that_cannot_exec_fails_the_start_cleanly(engine, config, make_server):
    from vservers.engine import EngineError, templates

    name = make_server("noinit", "198.19.3.15/18", start=False)
    spec = engine.spec(name)
    info_path = templates.template_dir(config, spec.template) / spec.template_version / "template.json"
    original = info_path.read_text()
    info_path.write_text(original.replace('"/sbin/init"', '"/sbin/no-such-init"'))
    try:
        with pytest.raises(EngineError, match="no-such-init|No such file"):
            engine.start(name)
    finally:
        info_path.write_text(original)
    assert engine.status(name).state == "stopped"
    assert not engine.cgroups.exists(name)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(config.server_dir(name)) not in loops


def test_addresses_are_not_given_twice(engine, make_server):
    from vservers.engine import Conflict

    make_server("first", "198.19.3.16/18", start=False)
    with pytest.raises(Conflict, match="already used"):
        engine.create("second", "busybox", ["198.19.3.16/18"])
    assert "second" not in engine.names()


def test_an_init_recorded_in_another_boot_is_not_taken_for_the_running_one(engine, make_server):
    name = make_server("reboot", "198.19.3.19/18", start=True)
    runtime_file = engine.config.server_dir(name) / "runtime.json"
    recorded = json.loads(runtime_file.read_text())
    assert recorded["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    # Same pid and start time, but written in another boot: after a reboot that is a stranger.
    runtime_file.write_text(json.dumps({**recorded, "boot_id": "00000000-0000-0000-0000-000000000000"}))
    try:
        assert engine.status(name).state == "stopped"
    finally:
        runtime_file.write_text(json.dumps(recorded))
    assert engine.status(name).state == "running"


def test_start_many_starts_each_server_and_reports_the_one_that_fails(engine, config, make_server):
    good = [make_server(name, ip, start=False)
            for name, ip in (("many1", "198.19.3.17/18"), ("many2", "198.19.3.18/18"))]
    broken = make_server("many3", "198.19.3.20/18", start=False)
    spec_path = config.server_dir(broken) / "config.json"
    data = json.loads(spec_path.read_text())
    data["template_version"] = "does-not-exist"
    spec_path.write_text(json.dumps(data))
    from vservers.engine import EngineError

    results = engine.start_many([*good, broken, good[0]])  # one start per server, however often named
    assert sorted(results) == [*good, broken]
    assert results[good[0]] is None and results[good[1]] is None
    assert isinstance(results[broken], EngineError)
    for ip in ("198.19.3.17", "198.19.3.18"):
        wait_for_http(ip)
    assert engine.status(broken).state == "stopped" and not engine.cgroups.exists(broken)
    assert engine.host_veth(broken) not in os.listdir("/sys/class/net")
    pids = [engine.status(n).init_pid for n in good]
    assert engine.start_many(good) == {good[0]: None, good[1]: None}  # running already: nothing to do
    assert [engine.status(n).init_pid for n in good] == pids


def test_a_halt_signal_lost_before_init_could_catch_it_is_sent_again(engine, monkeypatch):
    """The init of a PID namespace loses a halt signal that comes before it has set up its
    handling (a stop right after a start). Here a stand-in ignores the first one, then sets
    its handler up; with a stop timeout shorter than the last resend's wait, only the early
    resends (HALT_RESENDS) let it shut down by itself instead of being killed."""
    import signal
    import sys

    from vservers.engine import lifecycle

    stand_in = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys\n"
         "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
         "print('ignoring', flush=True)\n"
         "sys.stdin.readline()\n"
         "signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0))\n"
         "print('ready', flush=True)\n"
         "signal.pause()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout.readline() == "ignoring\n"
        os.kill(stand_in.pid, signal.SIGUSR2)  # the first halt signal: lost
        stand_in.stdin.write("\n")
        stand_in.stdin.flush()
        assert stand_in.stdout.readline() == "ready\n"
        monkeypatch.setattr(engine, "_halt_signal", lambda name: signal.SIGUSR2)
        monkeypatch.setattr(engine.cgroups, "kill", lambda name: None)  # no server of that name
        assert lifecycle.HALT_RESENDS[0] < 0.2 < lifecycle.HALT_RESENDS[-1]
        engine._await_halt("stand-in", stand_in.pid, timeout=0.2)
        assert stand_in.wait(timeout=10) == 0  # its own handler ended it, not SIGKILL
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()
