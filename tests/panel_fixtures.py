"""The session-wide parts of the panel's fixtures (tests/panel/conftest.py), shared by the test
directories that run the panel with a real Redis and the engine (tests/panel, tests/api): a
private redis-server, and the worker's engine on the tests' own installation. Registered once,
in tests/conftest.py, so a session makes each of them once (panel_engine holds a lock for the
whole session: a second instance would wait for the first forever)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.leaks import PANEL_ENV

# Two test sessions must not share the installation: the second waits for the first.
LOCK_FILE = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "vservers-paneltest.lock"


@pytest.fixture(scope="session")
def panel_redis(tmp_path_factory):
    """A private redis-server on a Unix socket, for the whole session; its URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make install)")
    import redis

    directory = tmp_path_factory.mktemp("redis")
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"unix://{sock}?db=0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not come up") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def panel_engine():
    """The worker's engine on the tests' own installation, with the busybox template built
    once (the compiled busybox comes from the shared VSERVER_CACHE_DIR). Afterwards every
    server, the bridge and the root are removed."""
    if os.geteuid() != 0:
        pytest.skip("the worker's engine needs root")
    from vservers import jobs
    from vservers.engine import network, templates

    lock = open(LOCK_FILE, "w")  # held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    saved = {key: os.environ.get(key) for key in PANEL_ENV}
    os.environ.update(PANEL_ENV)
    jobs.reset_engine()
    engine = jobs.get_engine()
    assert str(engine.config.root) == PANEL_ENV["VSERVER_ROOT"]
    try:
        remove_all(engine)
        shutil.rmtree(engine.config.templates_dir, ignore_errors=True)
        templates.build(engine.config, "busybox")
        # An installation with servers has this; the reconciler checks it is there.
        engine.config.servers_dir.mkdir(exist_ok=True)
        yield engine
    finally:
        try:
            remove_all(engine)
            network.remove_bridge(engine.config.bridge)
            shutil.rmtree(engine.config.root, ignore_errors=True)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            jobs.reset_engine()
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def remove_all(engine) -> None:
    for name in engine.names():
        engine.delete(name)
    if engine.config.servers_dir.is_dir():  # half-created ones have no config.json
        for path in engine.config.servers_dir.iterdir():
            engine.delete(path.name)
