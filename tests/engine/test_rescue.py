"""Rescue mode: a server whose init is broken starts from the rescue system with its own files
at /mnt, inside the same walls as a normal start; the tenant repairs it there and leaves.
Root's password can be reset in either mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.engine.helpers import vserver_cli, wait_for_http
from tests.engine.test_reinstall import kill_cli_at
from vservers import passwords


def _run(engine, name: str, script: str):
    return engine.run(name, ["/bin/sh", "-c", script])


def test_a_broken_init_is_repaired_from_rescue(engine, make_server):
    from vservers.engine import EngineError

    name = make_server("rescued", "198.19.58.10/18")
    link = _run(engine, name, "readlink /sbin/init").stdout.strip()
    assert link, "the busybox template's /sbin/init is a link to busybox"
    assert _run(engine, name, "echo mine > /root/mine && rm /sbin/init").returncode == 0
    engine.stop(name)
    with pytest.raises(EngineError):  # its own system no longer starts
        engine.start(name)
    assert engine.status(name).state == "stopped"

    status = engine.rescue_start(name)
    assert status.state == "running" and status.rescue
    assert "rescue system" in vserver_cli("status", name, check=True).stdout
    wait_for_http("198.19.58.10")  # its own address, served by the rescue system
    # Its own files, read-write at /mnt; the rescue system's root is not them.
    assert _run(engine, name, "cat /mnt/root/mine").stdout == "mine\n"
    assert _run(engine, name, "test -e /root/mine").returncode != 0
    assert _run(engine, name, "test -e /mnt/sbin/init").returncode != 0
    # The same walls as a normal start: its uid range, its cgroups.
    init = status.init_pid
    assert Path(f"/proc/{init}/uid_map").read_text().split() == ["0", str(status.uid_base), "65536"]
    assert any(str(init) in f.read_text().split() for f in engine.cgroup_procs(name))
    assert engine.rescue_start(name).init_pid == init  # asked again: nothing to do

    fixed = _run(engine, name, f"ln -s {link} /mnt/sbin/init && echo scratch > /root/scratch")
    assert fixed.returncode == 0, fixed.stderr
    status = engine.rescue_leave(name)
    assert status.state == "running" and not status.rescue
    wait_for_http("198.19.58.10")
    assert _run(engine, name, "cat /root/mine").stdout == "mine\n"
    assert _run(engine, name, "test -e /root/scratch").returncode != 0  # rescue's own layer is gone
    assert engine.rescue_leave(name).init_pid == status.init_pid  # asked again: nothing to do
    # Rescue again: its throwaway layer starts empty.
    engine.rescue_start(name)
    assert _run(engine, name, "test -e /root/scratch").returncode != 0
    assert engine.stop(name).state == "stopped"
    assert engine.start(name).rescue is False  # a plain start is a normal one


def test_root_password_is_set_in_normal_and_in_rescue_mode(engine, make_server):
    from vservers.engine import Conflict, InvalidInput

    name = make_server("rootpw", "198.19.58.11/18")

    def root_hash(path: str) -> str:
        lines = _run(engine, name, f"cat {path}").stdout.splitlines()
        return next(line.split(":")[1] for line in lines if line.startswith("root:"))

    engine.set_root_password(name, "first-Secret-1")
    assert passwords.matches("first-Secret-1", root_hash("/etc/shadow"))
    with pytest.raises(InvalidInput):
        engine.set_root_password(name, "short")

    engine.rescue_start(name)
    rescue_own = root_hash("/etc/shadow")
    engine.set_root_password(name, "second-Secret-2")
    assert passwords.matches("second-Secret-2", root_hash("/mnt/etc/shadow"))
    assert root_hash("/etc/shadow") == rescue_own  # the rescue system's own is not the one lost
    mode = _run(engine, name, "stat -c %a /mnt/etc/shadow").stdout.strip()
    assert mode == "600"

    engine.rescue_leave(name)
    assert passwords.matches("second-Secret-2", root_hash("/etc/shadow"))
    engine.stop(name)
    with pytest.raises(Conflict):
        engine.set_root_password(name, "third-Secret-3")


def test_killed_while_entering_rescue_the_server_starts_with_its_files(engine, make_server):
    name = make_server("rescuek", "198.19.58.12/18")
    assert _run(engine, name, "echo mine > /root/mine").returncode == 0

    kill_cli_at("rescue:stopped", "rescue", name)

    assert engine.status(name).state == "stopped"
    assert engine.start(name).rescue is False
    wait_for_http("198.19.58.12")
    assert _run(engine, name, "cat /root/mine").stdout == "mine\n"
    # And rescue works after it.
    assert engine.rescue_start(name).rescue
    wait_for_http("198.19.58.12")
    assert not os.path.ismount(engine._dir(name) / "rescue" / "root")  # its mounts are the server's own
