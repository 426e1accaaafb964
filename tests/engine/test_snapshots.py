"""Snapshots against real busybox servers: take one of a running server (frozen, copied,
thawed), put it back byte for byte, delete it, and survive a kill -9 at the frozen point
and in the middle of a restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.engine.helpers import http_get, kill_9, start_cli, vserver_cli, wait_for_http, wait_stopped
from tests.leaks import TEST_ENV, frozen_cgroups
from vservers.engine import Conflict, EngineError, InvalidInput, NotFound, snapshots


def guest_file(engine, name: str, path: str) -> Path:
    """A file of the running server seen from the host, through its init's root."""
    return Path(f"/proc/{engine.init_pid(name)}/root") / path.lstrip("/")


def write_in_guest(engine, name: str, path: str, data: bytes) -> None:
    # Written by a process inside (as the guest's root), so the bytes go through its overlay.
    result = engine.run(name, ["sh", "-c", f"base64 -d > {path}"], input=_b64(data))
    assert result.returncode == 0, result


def _b64(data: bytes) -> str:
    import base64

    return base64.encodebytes(data).decode()


def test_a_changed_file_comes_back_byte_for_byte_and_an_added_one_goes(engine, make_server) -> None:
    name = make_server("snap-web", "198.19.40.10/18")
    original = os.urandom(200_000) + bytes(100_000)  # data and a run of zeros (a hole, maybe)
    write_in_guest(engine, name, "/root/data.bin", original)
    assert http_get("198.19.40.10")[0] == 200

    info = engine.snapshot_create(name, "before")
    assert info.name == "before" and info.template == "busybox"
    assert info.freeze_seconds is not None and info.freeze_seconds >= info.copy_seconds > 0
    # Sparse: a 256 MiB disk with a few hundred KiB written takes a few MiB at most.
    assert info.apparent_bytes == 256 * 2**20
    assert 0 < info.size_bytes < 16 * 2**20
    # It kept serving: thawed, not stopped.
    assert engine.status(name).state == "running"
    assert http_get("198.19.40.10")[0] == 200
    assert frozen_cgroups(TEST_ENV) == []

    write_in_guest(engine, name, "/root/data.bin", os.urandom(300_000))
    write_in_guest(engine, name, "/root/added", b"made after the snapshot\n")
    assert guest_file(engine, name, "/root/data.bin").read_bytes() != original

    status = engine.snapshot_restore(name, "before")
    assert status.state == "running"
    wait_for_http("198.19.40.10")
    assert guest_file(engine, name, "/root/data.bin").read_bytes() == original
    assert not guest_file(engine, name, "/root/added").exists()

    # The snapshot stays after a restore; a second one is listed after it; delete is idempotent.
    engine.snapshot_create(name, "second")
    assert [s.name for s in engine.snapshot_list(name)] == ["before", "second"]
    assert engine.snapshot_image(name, "before").is_file()
    engine.snapshot_delete(name, "before")
    engine.snapshot_delete(name, "before")
    assert [s.name for s in engine.snapshot_list(name)] == ["second"]
    with pytest.raises(NotFound):
        engine.snapshot_image(name, "before")
    with pytest.raises(NotFound):
        engine.snapshot_restore(name, "before")
    with pytest.raises(Conflict, match="already has a snapshot"):
        engine.snapshot_create(name, "second")


def test_a_stopped_server_is_copied_without_a_freeze_and_restore_starts_it(engine, make_server) -> None:
    name = make_server("snap-cold", "198.19.40.11/18")
    write_in_guest(engine, name, "/root/mark", b"one\n")
    engine.stop(name)
    auto = engine.snapshot_create(name)
    assert auto.freeze_seconds is None
    assert auto.name.startswith("s") and len(auto.name) == len("s20261206-153012")
    assert engine.snapshot_create(name).name != auto.name  # "-2" within the same second

    engine.start(name)
    write_in_guest(engine, name, "/root/mark", b"two\n")
    engine.stop(name)
    assert engine.snapshot_restore(name, auto.name).state == "running"
    assert guest_file(engine, name, "/root/mark").read_bytes() == b"one\n"


def test_a_disk_grown_after_the_snapshot_keeps_its_size_on_restore(engine, make_server) -> None:
    from vservers.engine import Limits

    name = make_server("snap-grow", "198.19.40.12/18")
    engine.snapshot_create(name, "small")
    engine.update(name, Limits(disk_bytes=384 * 2**20))
    engine.snapshot_restore(name, "small")
    st = os.statvfs(guest_file(engine, name, "/"))
    assert st.f_blocks * st.f_frsize > 300 * 2**20  # the filesystem, not only the file, grew again


def test_bad_snapshot_names_are_refused_by_engine_and_cli(engine, make_server) -> None:
    name = make_server("snap-names", "198.19.40.13/18", start=False)
    for bad in ("", "Upper", "-x", "a/b", "../x", ".tmp-x", "x" * 33, "a b"):
        with pytest.raises(InvalidInput, match="invalid snapshot name"):
            engine.snapshot_create(name, bad)
        with pytest.raises(InvalidInput):
            engine.snapshot_delete(name, bad)
    result = vserver_cli("snapshot", "create", name, "../evil")
    assert result.returncode == 2 and "invalid snapshot name" in result.stderr
    result = vserver_cli("snapshot", "restore", name)
    assert result.returncode == 2 and "needs a SNAP" in result.stderr
    assert not (engine.config.server_dir(name) / "snapshots" / "evil").exists()
    result = vserver_cli("snapshot", "list", "no-such-server")
    assert result.returncode == 3


def test_the_cli_takes_lists_restores_and_deletes(engine, make_server) -> None:
    import json

    name = make_server("snap-cli", "198.19.40.14/18")
    out = vserver_cli("snapshot", "create", name, "one", check=True).stdout
    assert "snapshot one taken" in out and "frozen" in out
    listed = json.loads(vserver_cli("snapshot", "list", name, "--json", check=True).stdout)
    assert [s["name"] for s in listed] == ["one"]
    assert set(listed[0]) == {"name", "created", "size_bytes", "apparent_bytes", "template",
                              "template_version", "freeze_seconds", "copy_seconds"}
    assert "restored, running" in vserver_cli("snapshot", "restore", name, "one", check=True).stdout
    assert "deleted" in vserver_cli("snapshot", "delete", name, "one", check=True).stdout
    assert json.loads(vserver_cli("snapshot", "list", name, "--json", check=True).stdout) == []


def test_a_copy_past_its_limit_thaws_the_server_and_leaves_nothing(engine, make_server, monkeypatch) -> None:
    name = make_server("snap-slow", "198.19.40.15/18")
    monkeypatch.setattr(snapshots, "COPY_LIMIT", 0.0)  # no copy is that fast
    with pytest.raises(EngineError, match="took longer than 0 s"):
        engine.snapshot_create(name, "never")
    assert frozen_cgroups(TEST_ENV) == []
    assert http_get("198.19.40.15")[0] == 200
    assert engine.snapshot_list(name) == []
    assert list((engine.config.server_dir(name) / "snapshots").iterdir()) == []
    assert not (engine.config.server_dir(name) / snapshots.BUSY).exists()


def test_kill_9_while_frozen_leaves_it_startable_thawed_and_clean(engine, make_server) -> None:
    name = make_server("snap-kill", "198.19.40.16/18")
    write_in_guest(engine, name, "/root/keep", b"kept\n")
    proc = start_cli("snapshot", "create", name, "cut", fault="snapshot:frozen")
    wait_stopped(proc)
    # Positive control: at this point the server really is frozen.
    assert [group.name for group in frozen_cgroups(TEST_ENV)] == [name]
    kill_9(proc)

    # The next operation (a start of the running server) thaws it, and its disk is writable
    # again (the freeze helper thawed the filesystem when the engine's pipe closed).
    assert engine.start(name).state == "running"
    assert frozen_cgroups(TEST_ENV) == []
    wait_for_http("198.19.40.16")
    write_in_guest(engine, name, "/root/after", b"written after\n")
    assert engine.run(name, ["sync"], timeout=30).returncode == 0
    assert guest_file(engine, name, "/root/keep").read_bytes() == b"kept\n"
    assert engine.snapshot_list(name) == []
    # The half-written copy is removed by the next snapshot operation, which then succeeds.
    assert engine.snapshot_create(name, "cut").name == "cut"
    assert [p.name for p in (engine.config.server_dir(name) / "snapshots").iterdir()] == ["cut"]


def test_a_stop_of_a_server_a_killed_snapshot_left_frozen_thaws_and_stops_it(engine, make_server) -> None:
    """`vserver stop` goes through stop_many, which must recover as a single stop does: a frozen
    init ignores even SIGKILL on cgroup v1."""
    name = make_server("snap-stop", "198.19.40.19/18")
    proc = start_cli("snapshot", "create", name, "cut", fault="snapshot:frozen")
    wait_stopped(proc)
    assert [group.name for group in frozen_cgroups(TEST_ENV)] == [name]  # the control: frozen
    kill_9(proc)

    result = vserver_cli("stop", "--timeout", "5", name)
    assert result.returncode == 0, result.stderr
    assert engine.status(name).state == "stopped"
    assert frozen_cgroups(TEST_ENV) == []


def test_recover_leaves_a_snapshot_in_progress_and_thaws_what_a_killed_one_left(engine, make_server) -> None:
    """Engine.recover, which the node's reconcile calls for every idle server: a frozen server
    runs nothing until some operation comes, so it must not wait for one."""
    name = make_server("snap-recover", "198.19.40.20/18")
    proc = start_cli("snapshot", "create", name, "cut", fault="snapshot:frozen")
    wait_stopped(proc)
    assert engine.recover(name) is False  # still its snapshot's: the lock is held
    assert [group.name for group in frozen_cgroups(TEST_ENV)] == [name]
    kill_9(proc)

    assert engine.recover(name) is True
    assert frozen_cgroups(TEST_ENV) == []
    assert not (engine.config.server_dir(name) / snapshots.BUSY).exists()
    assert engine.status(name).state == "running"
    assert http_get("198.19.40.20")[0] == 200  # thawed all the way: its httpd answers
    assert engine.recover(name) is False  # nothing left to do


def test_kill_9_after_the_swap_is_finished_by_the_next_start(engine, make_server) -> None:
    name = make_server("snap-swap", "198.19.40.17/18")
    write_in_guest(engine, name, "/root/state", b"at snapshot\n")
    engine.snapshot_create(name, "base")
    write_in_guest(engine, name, "/root/state", b"later\n")

    proc = start_cli("snapshot", "restore", name, "base", fault="snapshot-restore:swapped")
    wait_stopped(proc)
    kill_9(proc)
    assert engine.status(name).state == "stopped"
    assert (engine.config.server_dir(name) / snapshots.BUSY).exists()

    engine.start(name)
    wait_for_http("198.19.40.17")
    assert guest_file(engine, name, "/root/state").read_bytes() == b"at snapshot\n"
    assert not (engine.config.server_dir(name) / snapshots.BUSY).exists()
    assert not (engine.config.server_dir(name) / snapshots.RESTORE_TMP).exists()


def test_deleting_the_server_deletes_its_snapshots(engine, make_server) -> None:
    name = make_server("snap-gone", "198.19.40.18/18", start=False)
    engine.snapshot_create(name, "one")
    engine.delete(name)
    assert not engine.config.server_dir(name).exists()
