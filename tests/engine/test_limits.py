"""Resource limits hold for every process of a server, and a server that hits one suffers
alone: its neighbour keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine.helpers import http_get, wait_for_http

HOG_IP, NEIGHBOUR_IP = "198.19.2.10", "198.19.2.11"


@pytest.fixture(scope="module")
def hog_and_neighbour(engine):
    from vservers.engine import Limits

    engine.create("hog", "busybox", [f"{HOG_IP}/18"],
                  Limits(memory_bytes=48 * 2**20, pids=40, cpus=0.3, disk_bytes=32 * 2**20))
    engine.create("neighbour", "busybox", [f"{NEIGHBOUR_IP}/18"], Limits(memory_bytes=48 * 2**20, pids=64))
    engine.start("hog")
    engine.start("neighbour")
    wait_for_http(HOG_IP)
    wait_for_http(NEIGHBOUR_IP)
    yield engine
    engine.delete("hog")
    engine.delete("neighbour")


def _cgroup_file(engine, name: str, filename: str) -> str:
    for path in engine.cgroups.paths(name):
        candidate = Path(path) / filename
        if candidate.exists():
            return candidate.read_text()
    raise AssertionError(f"{filename} not found for {name}")


def test_a_memory_hog_is_oom_killed_inside_its_server(hog_and_neighbour):
    engine = hog_and_neighbour
    # dd touches its whole 128 MiB buffer: far over the 48 MiB limit.
    result = engine.run("hog", ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"])
    assert result.returncode == 137, (result.returncode, result.stderr)
    if engine.cgroups.version == 1:
        oom = dict(line.split() for line in _cgroup_file(engine, "hog", "memory.oom_control").splitlines())
        assert int(oom["oom_kill"]) >= 1
    assert engine.status("hog").state == "running"
    assert http_get(NEIGHBOUR_IP)[0] == 200
    assert http_get(HOG_IP)[0] == 200


def test_a_fork_bomb_stops_at_the_process_limit(hog_and_neighbour):
    engine = hog_and_neighbour
    script = "i=0; while [ $i -lt 200 ]; do sleep 5 >/dev/null 2>&1 & i=$((i+1)); done 2>/dev/null; echo done"
    engine.run("hog", ["/bin/sh", "-c", script])  # the shell itself dies when fork fails
    usage = engine.status("hog").usage
    assert usage.pids <= 40
    assert int(_cgroup_file(engine, "hog", "pids.max")) == 40
    refused_forks = int(_cgroup_file(engine, "hog", "pids.events").split()[1])
    assert refused_forks > 0, "the bomb never reached the limit"
    assert http_get(NEIGHBOUR_IP)[0] == 200
    # Once the sleepers end, the server is usable again by itself.
    deadline = time.monotonic() + 30
    while engine.status("hog").usage.pids > 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.run("hog", ["true"]).returncode == 0


def test_filling_the_disk_gives_enospc_inside_only(hog_and_neighbour):
    engine = hog_and_neighbour
    result = engine.run("hog", ["dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=100"])
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    used = engine.status("hog").usage.disk_used_bytes
    assert 24 * 2**20 < used <= 32 * 2**20
    # The neighbour can still write, and the host filesystem never saw those bytes.
    assert engine.run("neighbour", ["/bin/sh", "-c", "echo ok > /root/ok && cat /root/ok"]).stdout == "ok\n"
    engine.run("hog", ["rm", "/fill"])
    assert engine.run("hog", ["/bin/sh", "-c", "echo fine > /root/after"]).returncode == 0


def test_a_cpu_hog_gets_no_more_than_its_share(hog_and_neighbour):
    engine = hog_and_neighbour
    before = engine.status("hog").usage.cpu_seconds
    started = time.monotonic()
    engine.run("hog", ["timeout", "3", "/bin/sh", "-c", "while :; do :; done"])
    elapsed = time.monotonic() - started
    used = engine.status("hog").usage.cpu_seconds - before
    assert used > 0.1, "the hog did not run"
    assert used / elapsed <= 0.3 * 1.25 + 0.05, f"{used:.2f}s of CPU in {elapsed:.2f}s with a 0.3 share"
    assert http_get(NEIGHBOUR_IP)[0] == 200
