"""The slides' example server: Debian with Apache, on the shared template, run by the engine."""

from __future__ import annotations

import pytest

from tests.engine.helpers import http_get, wait_for_http

IP = "198.19.4.10"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def apache_server(engine, debian_template):
    from vservers.engine import Limits

    engine.create("apache", "debian", [f"{IP}/18"], Limits(memory_bytes=256 * 2**20, pids=256, disk_bytes=512 * 2**20))
    engine.start("apache")
    wait_for_http(IP, timeout=60)
    yield engine, "apache"
    engine.delete("apache")


def test_an_apache_server_answers_http_on_its_own_address(apache_server):
    engine, name = apache_server
    status, body = http_get(IP)
    assert status == 200
    assert "It works: Debian VPS" in body
    services = {s.name: s for s in engine.services(name).list()}
    assert services["apache2"].state == "running"
    ps = engine.run(name, ["ps", "-eo", "pid,comm"]).stdout
    assert ps.split("\n")[1].split() == ["1", "init"]
    assert "apache2" in ps


def test_accounts_use_the_guests_own_shadow_tools(apache_server):
    engine, name = apache_server
    account = engine.accounts(name).add("carol", password="a long passphrase")
    try:
        assert account.home == "/home/carol"
        assert engine.run(name, ["id", "-u", "carol"]).stdout.strip() == str(account.uid)
    finally:
        engine.accounts(name).delete("carol")
    assert engine.accounts(name).get("carol") is None


def test_apache_stops_and_starts_through_runit(apache_server):
    engine, name = apache_server
    assert engine.services(name).control("apache2", "stop").state == "stopped"
    with pytest.raises(ConnectionRefusedError):
        http_get(IP)
    assert engine.services(name).control("apache2", "start").state == "running"
    wait_for_http(IP, timeout=30)


def test_the_server_stops_cleanly_and_comes_back(apache_server):
    engine, name = apache_server
    assert engine.stop(name).state == "stopped"
    assert engine.start(name).state == "running"
    wait_for_http(IP, timeout=60)


def test_the_stop_asks_sysvinit_once(apache_server, monkeypatch):
    """sysvinit catches SIGINT, so the stop's one signal surely arrives and is not repeated:
    a second one in runlevel 0 would run the halt script again and cut the services' orderly
    stop short (lifecycle.HALT_RESENDS)."""
    import os
    import signal

    from vservers.engine import procfs

    engine, name = apache_server
    init_pid = engine.status(name).init_pid
    assert procfs.catches(init_pid, signal.SIGINT)
    sent = []
    kill = os.kill

    def counting(pid, signum):
        if pid == init_pid:
            sent.append(signum)
        return kill(pid, signum)

    monkeypatch.setattr(os, "kill", counting)
    assert engine.stop(name).state == "stopped"
    monkeypatch.undo()
    assert sent == [signal.SIGINT]
    assert engine.start(name).state == "running"
    wait_for_http(IP, timeout=60)
