"""Fixtures for engine tests: the tests' own installation (root, bridge, address range and
uid ranges apart from a real one), a busybox template built once per session, and helpers
that talk to servers only after checking the kernel routes their address to our bridge."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests import coldpath, prebuild, template_cache
from tests.leaks import TEST_ENV, TEST_ROOT


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="engine tests need root")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def config():
    from vservers.engine.config import EngineConfig

    return EngineConfig.from_env(TEST_ENV)


@pytest.fixture(scope="session")
def engine(config):
    from vservers.engine import Engine, network, templates

    eng = Engine(config)
    _remove_all(eng)
    shutil.rmtree(config.templates_dir, ignore_errors=True)
    templates.build(config, "busybox")
    yield eng
    _remove_all(eng)
    network.remove_bridge(config.bridge)
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


def _remove_all(eng) -> None:
    if eng.config.servers_dir.is_dir():
        for path in eng.config.servers_dir.iterdir():
            eng.delete(path.name)


@pytest.fixture
def make_server(engine):
    """Create (and by default start) servers; every one is deleted after the test."""
    made = []

    def make(name, ip, start=True, template="busybox", **limits):
        from vservers.engine import Limits

        made.append(name)
        engine.create(name, template, [ip] if isinstance(ip, str) else list(ip), Limits(**limits))
        if start:
            engine.start(name)
            if template == "busybox":
                from tests.engine.helpers import wait_for_http

                wait_for_http((ip if isinstance(ip, str) else ip[0]).split("/")[0])
        return name

    yield make
    for name in made:
        engine.delete(name)


@pytest.fixture(scope="session")
def debian_template(engine, config, request):
    """Debian bookworm with Apache, built once per session with debootstrap (about a minute):
    in the background from the session's start (tests/prebuild.py), then lent to the tests'
    installation (tests/template_cache.py); here, if that build did not happen or failed."""
    import shutil as _shutil

    from vservers.engine import templates

    # Not a skip: `make test` installs debootstrap, and this build is the cold path of the
    # Debian template that every run must take (the tests' root starts without templates).
    assert _shutil.which("debootstrap", path="/usr/sbin:/usr/bin"), "debootstrap is not installed (make install)"
    built = prebuild.result(request.config, "debian")
    info = template_cache.lend(config) if built is not None else None
    if info is not None and info.built_at >= coldpath.SESSION_START:
        coldpath.note("debian template", f"built by debootstrap into an empty root in {built['seconds']:.0f} s, "
                                         "in the background while the database tests ran")
        return info
    started = time.monotonic()
    info = templates.build(config, "debian")
    coldpath.note("debian template", f"built by debootstrap into an empty root in {time.monotonic() - started:.0f} s")
    template_cache.keep(config, info)  # for the cluster tests of the PostgreSQL pass
    return info
