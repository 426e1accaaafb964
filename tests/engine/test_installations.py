"""Two installations (different roots, bridges, address ranges and uid ranges) on one host
never disturb each other, even with servers of the same name. The second keeps its servers
on a ramfs, which refuses O_DIRECT: its disks are attached buffered, and the start says why,
while the first's are attached with direct I/O (loopdev.py)."""

from __future__ import annotations

import logging
import shutil

import pytest

from tests.engine.helpers import http_get, wait_for_http
from tests.leaks import SECOND_ENV


@pytest.fixture
def second(engine):
    from vservers.engine import Engine, EngineConfig, network, syscalls, templates

    config = EngineConfig.from_env(SECOND_ENV)
    other = Engine(config)
    templates.build(config, "busybox")  # compiled busybox comes from the shared cache
    config.servers_dir.mkdir(parents=True, exist_ok=True)
    syscalls.mount("ramfs", config.servers_dir, "ramfs", syscalls.MS_NODEV | syscalls.MS_NOSUID, "mode=700")
    try:
        yield other
        for name in other.names():
            other.delete(name)
    finally:
        syscalls.umount(str(config.servers_dir), 0)
    network.remove_bridge(config.bridge)
    shutil.rmtree(config.root, ignore_errors=True)


def test_same_name_in_two_installations(engine, second, make_server, caplog):
    from vservers.engine.loopdev import direct_io_on

    assert engine.config.loop_direct_io and second.config.loop_direct_io  # the default
    make_server("twin", "198.19.6.10/18")
    assert direct_io_on(engine._runtime("twin").loop_device)
    assert not caplog.records
    second.create("twin", "busybox", ["198.19.70.10/18"])
    with caplog.at_level(logging.WARNING, logger="vservers.engine.lifecycle"):
        second.start("twin")
    assert not direct_io_on(second._runtime("twin").loop_device)
    image = second.config.server_dir("twin") / "disk.img"
    assert [r.getMessage() for r in caplog.records] == [
        f"twin: disk attached buffered, not with direct I/O: the filesystem holding {image} refuses O_DIRECT"]
    wait_for_http("198.19.70.10", bridge=second.config.bridge)
    assert engine.host_veth("twin") != second.host_veth("twin")
    assert engine.cgroups.paths("twin") != second.cgroups.paths("twin")
    assert engine.spec("twin").uid_base != second.spec("twin").uid_base
    assert http_get("198.19.6.10")[0] == 200

    second.delete("twin")
    assert engine.status("twin").state == "running"
    assert http_get("198.19.6.10")[0] == 200
    assert engine.cgroups.exists("twin")
