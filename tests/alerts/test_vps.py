"""Alerts on real busybox servers: the disk filled from inside the guest, its init killed, and
its tenant's stop, each followed by a real pass over the node; mail is counted in the outbox."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import AlertEpisode, Kind, save_rules
from notifications.models import Event, OutboxMail
from vservers.actions import request_operation
from vservers.models import OperationKind, State
from vservers.reconcile import reconcile_node
from vservers.usage.sampler import sample

pytestmark = pytest.mark.django_db(transaction=True)
MIB = 1024 * 1024


def sampler_pass(node, now=None) -> None:
    """A pass over the node: the reconcile (the servers' states), then the sampler's: the
    latest sample in each server's fields, then its signal, which the alerts' receiver
    answers. The sampler only logs a receiver's error; here it fails the test."""
    reconcile_node(node.pk)
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logger = logging.getLogger("vservers.usage.sampler")
    logger.addHandler(handler)
    try:
        sample(node, now=None if now is None else now.timestamp())
    finally:
        logger.removeHandler(handler)
    assert not errors, [record.getMessage() for record in errors]


def alert_mails(server) -> list[str]:
    return list(OutboxMail.objects.filter(event=Event.ALERT, server=server).order_by("pk").values_list("subject",
                                                                                                        flat=True))


def in_guest(engine, server, script: str) -> str:
    result = engine.run(server.engine_name, ["/bin/sh", "-c", script])
    assert result.returncode == 0, result
    return result.stdout


def disk_percent(server) -> float:
    server.refresh_from_db()
    return 100 * server.disk_used_bytes / (server.plan.disk_mb * MIB)


def kill_init(engine, server) -> None:
    pid = engine.status(server.engine_name).init_pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while engine.status(server.engine_name, with_addresses=False).state != "stopped":
        assert time.monotonic() < deadline, f"init {pid} of {server.engine_name} did not die"
        time.sleep(0.02)


def test_a_disk_filled_from_inside_mails_once_per_episode(world, provision):
    server = provision("web")  # plan small: 256 MB disk
    save_rules(server, {Kind.DISK: {"enabled": True, "threshold": 50, "minutes": None}})
    sampler_pass(world.node)
    assert disk_percent(server) < 20
    assert alert_mails(server) == []

    in_guest(world.engine, server, "dd if=/dev/zero of=/fill bs=1M count=150 2>/dev/null && sync")
    sampler_pass(world.node)
    full = disk_percent(server)
    assert full > 55
    assert alert_mails(server) == [f"Alert: the disk of web is {full:.0f} % full"]
    assert OutboxMail.objects.get(event=Event.ALERT).to == world.alice.email

    for _ in range(3):  # still full: the same episode
        sampler_pass(world.node)
    assert len(alert_mails(server)) == 1

    in_guest(world.engine, server, "rm /fill && sync")
    sampler_pass(world.node)
    assert disk_percent(server) < 20
    assert AlertEpisode.objects.get().ended is not None

    in_guest(world.engine, server, "dd if=/dev/zero of=/fill bs=1M count=150 2>/dev/null && sync")
    sampler_pass(world.node)
    assert len(alert_mails(server)) == 2
    assert AlertEpisode.objects.filter(ended__isnull=True).count() == 1


def test_a_killed_init_is_unreachable_and_a_tenants_stop_is_not(world, provision, drain):
    crashed, stopped = provision("crashed", "stopped", autostart=False)
    for server in (crashed, stopped):
        save_rules(server, {Kind.UNREACHABLE: {"enabled": True, "threshold": None, "minutes": 2}})
    sampler_pass(world.node)

    kill_init(world.engine, crashed)
    request_operation(stopped, OperationKind.STOP, world.alice)
    drain()
    start = timezone.now()
    sampler_pass(world.node, start)
    crashed.refresh_from_db()
    stopped.refresh_from_db()
    assert (crashed.state, stopped.state) == (State.STOPPED, State.STOPPED)

    sampler_pass(world.node, start + timedelta(minutes=1))
    assert alert_mails(crashed) == []
    sampler_pass(world.node, start + timedelta(minutes=2))
    assert alert_mails(crashed) == ["Alert: crashed is unreachable"]
    for minutes in (3, 10, 60):
        sampler_pass(world.node, start + timedelta(minutes=minutes))
    assert alert_mails(crashed) == ["Alert: crashed is unreachable"]
    assert alert_mails(stopped) == []

    # Its tenant starts it again: the episode ends, and nothing more is mailed.
    request_operation(crashed, OperationKind.START, world.alice)
    drain()
    # The real clock now: a sample taken now is an hour old on the test's clock.
    sampler_pass(world.node)
    assert AlertEpisode.objects.get(rule__server=crashed).ended is not None
    assert len(alert_mails(crashed)) == 1
