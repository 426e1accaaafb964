"""Services inside a busybox VPS through its runit: what `sv status` says and what the host
reads from runsv's files agree, including a service runsv is about to (re)start, and a list
taken right after a start waits until the supervisor has caught up."""

from __future__ import annotations

import time

import pytest

from vservers.engine.services import parse_status

IP = "198.19.10.10"


def test_sv_status_lines_become_services():
    text = (
        "run: /etc/service/httpd: (pid 12) 34s\n"
        "down: /etc/service/cron: 5s, normally up, want up\n"
        "down: /etc/service/backup: 7s\n"
        "finish: /etc/service/queue: (pid 40) 1s\n"
        "fail: /etc/service/broken: runsv not running\n"
        "warning: /etc/service/odd: unable to open supervise/ok: file does not exist\n"
        "not a status line\n"
    )
    found = {s.name: (s.state, s.pid, s.seconds) for s in parse_status(text)}
    assert found == {
        "httpd": ("running", 12, 34),
        "cron": ("starting", None, 5),
        "backup": ("stopped", None, 7),
        "queue": ("stopping", 40, 1),
        "broken": ("failed", None, None),
        "odd": ("failed", None, None),
    }


@pytest.fixture
def server(make_server):
    return make_server("svc", f"{IP}/18", start=False)


def test_a_list_taken_right_after_start_shows_the_services_running(engine, server):
    engine.start(server)
    services = {s.name: s for s in engine.services(server).settled()}
    assert services["httpd"].state == "running" and services["httpd"].pid


def test_a_service_that_keeps_failing_reads_as_starting_from_both_readers(engine, server):
    engine.start(server)
    script = ("mkdir -p /etc/sv/flaky && printf '#!/bin/sh\\nexit 1\\n' > /etc/sv/flaky/run && "
              "chmod +x /etc/sv/flaky/run && ln -s /etc/sv/flaky /etc/service/flaky && "
              "sv -w 10 down /etc/service/httpd")
    result = engine.run(server, ["/bin/sh", "-c", script])
    assert result.returncode == 0, result.stderr
    services = engine.services(server)
    # runsvdir picks the new directory up at its next rescan; until then nothing supervises it.
    deadline = time.monotonic() + 15
    while (found := {s.name: s.state for s in services.list_from_files()})["flaky"] == "failed":
        assert time.monotonic() < deadline, "runsvdir never started a runsv for the new service"
        time.sleep(0.05)
    assert found["flaky"] == "starting", found  # runsv restarts it once a second, forever
    assert found["httpd"] == "stopped"  # told to stay down
    # The wait after a start gives up on a service that never settles and says what it saw.
    assert {s.name: s.state for s in services.settled(timeout=0.2)}["flaky"] == "starting"
    from_sv = {s.name: s.state for s in services.list()}
    assert from_sv["flaky"] == "starting" and from_sv["httpd"] == "stopped"
