"""Two installations (different roots, bridges, address ranges and uid ranges) on one host
never disturb each other, even with servers of the same name."""

from __future__ import annotations

import shutil

import pytest

from tests.engine.helpers import http_get, wait_for_http
from tests.leaks import SECOND_ENV


@pytest.fixture
def second(engine):
    from vservers.engine import Engine, EngineConfig, network, templates

    config = EngineConfig.from_env(SECOND_ENV)
    other = Engine(config)
    templates.build(config, "busybox")  # compiled busybox comes from the shared cache
    yield other
    for name in other.names():
        other.delete(name)
    network.remove_bridge(config.bridge)
    shutil.rmtree(config.root, ignore_errors=True)


def test_same_name_in_two_installations(engine, second, make_server):
    make_server("twin", "198.19.6.10/18")
    second.create("twin", "busybox", ["198.19.70.10/18"])
    second.start("twin")
    wait_for_http("198.19.70.10", bridge=second.config.bridge)
    assert engine.host_veth("twin") != second.host_veth("twin")
    assert engine.cgroups.paths("twin") != second.cgroups.paths("twin")
    assert engine.spec("twin").uid_base != second.spec("twin").uid_base
    assert http_get("198.19.6.10")[0] == 200

    second.delete("twin")
    assert engine.status("twin").state == "running"
    assert http_get("198.19.6.10")[0] == 200
    assert engine.cgroups.exists("twin")
