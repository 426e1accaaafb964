"""Reinstall: a fresh disk from the template, everything else of the server kept; a crash at
any point leaves a server that starts, with its old files or none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine.helpers import http_get, vserver_cli, wait_for_http
from tests.leaks import TEST_ENV


def _write_mine(engine, name: str) -> None:
    result = engine.run(name, ["/bin/sh", "-c", "echo mine > /root/mine && echo custom > /var/www/index.html"])
    assert result.returncode == 0, result.stderr


def _has_mine(engine, name: str) -> bool:
    return engine.run(name, ["cat", "/root/mine"]).returncode == 0


def test_reinstall_wipes_the_files_and_keeps_address_name_and_limits(engine, make_server):
    name = make_server("reinst", "198.19.57.10/18", memory_bytes=64 * 2**20, pids=64)
    _write_mine(engine, name)
    assert http_get("198.19.57.10") == (200, "custom\n")
    before = engine.status(name)

    after = engine.reinstall(name)

    assert after.state == "running" and after.init_pid != before.init_pid
    assert not _has_mine(engine, name)
    assert (after.name, after.hostname, after.ips, after.uid_base, after.autostart) == (
        before.name, before.hostname, before.ips, before.uid_base, before.autostart)
    assert engine.spec(name).limits == before.limits
    wait_for_http("198.19.57.10")  # the same address answers, from the template's page
    status, body = http_get("198.19.57.10")
    assert status == 200 and body != "custom\n"
    assert not (engine._dir(name) / "disk.img.reinstall").exists()


def test_reinstall_from_a_stopped_server_starts_it_and_a_missing_template_changes_nothing(engine, make_server):
    from vservers.engine import NotFound

    name = make_server("reinst2", "198.19.57.11/18")
    _write_mine(engine, name)
    engine.stop(name)
    with pytest.raises(NotFound):
        engine.reinstall(name, "no-such-template")
    engine.start(name)
    assert _has_mine(engine, name)  # the refused reinstall touched nothing
    engine.stop(name)
    assert engine.reinstall(name).state == "running"
    assert not _has_mine(engine, name)


def test_the_cli_wants_yes(engine, make_server):
    name = make_server("reinst3", "198.19.57.12/18")
    _write_mine(engine, name)
    refused = vserver_cli("reinstall", name)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert _has_mine(engine, name)
    done = vserver_cli("reinstall", name, "--yes", check=True)
    assert f"reinstalled {name} from busybox:" in done.stdout
    assert not _has_mine(engine, name)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


def kill_cli_at(fault: str, *args: str) -> None:
    """Run `vserver ARGS` with the engine's fault point FAULT, wait until it stopped itself
    there, and kill it with SIGKILL."""
    env = {**os.environ, **TEST_ENV, "VSERVER_TEST_FAULT": fault}
    proc = subprocess.Popen([sys.executable, "-m", "vservers.engine.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not _stopped(proc.pid):
            assert proc.poll() is None, f"vserver {' '.join(args)} ended before {fault}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"vserver {' '.join(args)} never reached {fault}"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("phase, files_kept", [("made", True), ("swapped", False)])
def test_killed_during_reinstall_the_server_starts_with_its_files_or_reinstalled(
        engine, make_server, phase, files_kept):
    ip = "198.19.57.13" if files_kept else "198.19.57.14"
    name = make_server(f"reinstk-{phase}", f"{ip}/18")
    _write_mine(engine, name)

    kill_cli_at(f"reinstall:{phase}", "reinstall", name, "--yes")

    assert engine.status(name).state == "stopped"
    assert engine.start(name).state == "running"
    assert _has_mine(engine, name) is files_kept
    wait_for_http(ip)
    # Asked again, the reinstall finishes the work (and drops a half-made image).
    engine.reinstall(name)
    assert not _has_mine(engine, name)
    assert not (engine._dir(name) / "disk.img.reinstall").exists()
    # tests/leaks.py checks after the test that no mount, loop device or cgroup is left
