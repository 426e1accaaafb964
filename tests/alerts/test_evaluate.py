"""alerts.evaluate on synthetic samples, time driven by `now`: an episode starts when its
condition holds (for its duration), mails once, and ends only below the threshold by the
hysteresis; unreachable is "expected to run but not seen running"; the tenant's stop, a
deletion and an opt-out write no mail; a pass costs the same queries for 3 servers as for
30; a silent node's servers are judged by the other nodes' passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerts.evaluate import evaluate
from alerts.models import AlertEpisode, AlertRule, Kind, save_rules
from notifications.models import Event, OptOut, OutboxMail
from vservers.models import Operation, OperationKind, OperationStatus, State, VirtualServer

MIB = 1024 * 1024
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def w(offline_world, django_user_model):
    """offline_world (plan small: 256 MB memory, 1024 MB disk) with a read-only member of acme,
    who must get no alert mail, and acme's running server "web" on node local."""
    from accounts.models import Membership

    w = offline_world
    carol = django_user_model.objects.create_user("carol", "carol@acme.test")
    Membership.objects.create(user=carol, tenant=w.acme, role=Membership.READONLY)
    w.web = running(w, "web")
    return w


def running(w, name: str, tenant=None) -> VirtualServer:
    """A server that was set up and runs, as the worker leaves it."""
    server = VirtualServer.objects.create(tenant=tenant or w.acme, name=name, hostname=f"{name}.example.test",
                                          plan=w.small, template=w.busybox, node=w.node, state=State.RUNNING)
    Operation.objects.create(server=server, kind=OperationKind.PROVISION, status=OperationStatus.SUCCEEDED,
                             finished=T0 - timedelta(days=1))
    return server


def sample(server: VirtualServer, at: datetime, *, memory_mb: float = 10, disk_mb: float = 10) -> None:
    """What the sampler leaves in the server's fields."""
    VirtualServer.objects.filter(pk=server.pk).update(
        memory_bytes=int(memory_mb * MIB), disk_used_bytes=int(disk_mb * MIB), sampled_at=at)


def rules(server, **kinds) -> None:
    """rules(server, disk=90, memory=(95, 5), unreachable=5): switch those on."""
    wanted = {}
    for kind, value in kinds.items():
        if kind == Kind.DISK:
            threshold, minutes = value, None
        elif kind == Kind.UNREACHABLE:
            threshold, minutes = None, value
        else:
            threshold, minutes = value
        wanted[kind] = {"enabled": True, "threshold": threshold, "minutes": minutes}
    save_rules(server, wanted)


def mails(kind: str | None = None) -> list[tuple[str, str]]:
    rows = OutboxMail.objects.filter(event=Event.ALERT).order_by("pk")
    return [(m.to, m.subject) for m in rows if kind is None or kind in m.subject]


def episodes(server) -> list[tuple[datetime, datetime | None]]:
    return list(AlertEpisode.objects.filter(rule__server=server).order_by("pk").values_list("started", "ended"))


def test_a_full_disk_mails_the_admins_once_per_episode(w):
    rules(w.web, disk=90)
    sample(w.web, T0, disk_mb=900)  # 88 %
    evaluate(w.node, T0)
    assert mails() == []

    sample(w.web, T0 + timedelta(seconds=30), disk_mb=950)  # 93 %
    evaluate(w.node, T0 + timedelta(seconds=30))
    assert mails() == [("alice@acme.test", "Alert: the disk of web is 93 % full")]
    body = OutboxMail.objects.get(event=Event.ALERT).body
    assert "web (web.example.test) is 93 % full (of the 1024 MB of its plan)" in body
    assert "at or above your alert threshold of 90 %" in body

    # Still above, then hovering around the threshold: the same episode, no second mail.
    for i, disk in enumerate([1000, 900, 930, 880, 921], start=2):
        at = T0 + timedelta(seconds=30 * i)
        sample(w.web, at, disk_mb=disk)
        evaluate(w.node, at)
    assert len(mails()) == 1
    assert episodes(w.web) == [(T0 + timedelta(seconds=30), None)]

    # Below by the hysteresis (85 %): the episode ends; above again: a second one, a second mail.
    sample(w.web, T0 + timedelta(minutes=5), disk_mb=860)  # 84 %
    evaluate(w.node, T0 + timedelta(minutes=5))
    assert episodes(w.web)[0][1] == T0 + timedelta(minutes=5)
    sample(w.web, T0 + timedelta(minutes=6), disk_mb=940)
    evaluate(w.node, T0 + timedelta(minutes=6))
    assert len(mails()) == 2
    assert [ended is None for _, ended in episodes(w.web)] == [False, True]


def test_memory_alerts_only_after_its_minutes_above_without_a_gap(w):
    rules(w.web, memory=(95, 5))
    start = T0

    def run(seconds: int, memory_mb: float) -> None:
        at = start + timedelta(seconds=seconds)
        sample(w.web, at, memory_mb=memory_mb)
        evaluate(w.node, at)

    # 4.5 minutes above (96 % of 256 MB), one sample below, then above again: no mail yet.
    for s in range(0, 300, 30):
        run(s, 246)
    run(300, 200)
    assert mails() == []
    # From 330 s on, above in every sample: the mail comes with the sample 5 minutes later.
    for s in range(330, 630, 30):
        run(s, 250)
        assert mails() == []
    run(630, 250)
    assert mails() == [("alice@acme.test", "Alert: web uses 98 % of its memory")]
    assert "at least 95 % of the 256 MB memory of its plan for 5 minutes" in OutboxMail.objects.get().body

    # A gap in the samples (the server was not sampled for longer than 3 periods) does not end
    # an episode, and a stretch above with a gap in it does not start one.
    for s in range(660, 1200, 30):
        run(s, 250)
    assert len(mails()) == 1
    run(1200, 240)  # 93.75 %: above the 90 % the episode ends at
    assert episodes(w.web)[0][1] is None
    run(1230, 200)
    assert episodes(w.web)[0][1] is not None
    run(1260, 250)
    sample(w.web, start + timedelta(seconds=1400), memory_mb=250)
    evaluate(w.node, start + timedelta(seconds=1600))  # the last sample is 200 s old: a gap
    for s in range(1630, 1900, 30):
        run(s, 250)
    assert len(mails()) == 1  # 240 s above since the gap
    run(1930, 250)
    assert len(mails()) == 2


def test_a_server_not_running_against_its_tenants_will_is_unreachable_after_its_minutes(w):
    rules(w.web, unreachable=5)
    sample(w.web, T0)
    evaluate(w.node, T0)
    # Its init died: the reconcile says stopped; no operation asked for it.
    w.web.move([State.RUNNING], State.STOPPED, "the server's init exited")
    for minute in range(1, 6):
        sample(w.web, T0 + timedelta(minutes=minute), memory_mb=0)
        evaluate(w.node, T0 + timedelta(minutes=minute))
    assert mails() == []
    evaluate(w.node, T0 + timedelta(minutes=6))
    assert mails() == [("alice@acme.test", "Alert: web is unreachable")]
    assert "should be running, but for 5 minutes it has not been" in OutboxMail.objects.get().body
    evaluate(w.node, T0 + timedelta(minutes=7))
    assert len(mails()) == 1

    # Running again (its autostart, or the tenant's start): the episode ends.
    Operation.objects.create(server=w.web, kind=OperationKind.START, status=OperationStatus.SUCCEEDED)
    w.web.move([State.STOPPED], State.RUNNING)
    sample(w.web, T0 + timedelta(minutes=8))
    evaluate(w.node, T0 + timedelta(minutes=8))
    assert episodes(w.web)[0][1] == T0 + timedelta(minutes=8)


def test_a_running_server_the_node_sends_no_sample_of_is_unreachable(w):
    rules(w.web, unreachable=2)
    sample(w.web, T0)
    for minute in range(0, 4):  # the server still shows running, but its last sample ages
        evaluate(w.node, T0 + timedelta(minutes=minute))
    assert mails() == []  # stale only after 90 s; then 2 minutes
    evaluate(w.node, T0 + timedelta(minutes=4))
    assert mails() == [("alice@acme.test", "Alert: web is unreachable")]
    assert "last sample: 2026-12-06 12:00 UTC" in OutboxMail.objects.get().body


def test_a_server_its_tenant_stopped_or_deleted_or_never_ran_is_not_unreachable(w):
    stopped, deleting, failed = running(w, "stopped"), running(w, "deleting"), running(w, "failed")
    busy = running(w, "busy")
    for server in (w.web, stopped, deleting, failed, busy):
        rules(server, unreachable=1)
    Operation.objects.create(server=stopped, kind=OperationKind.STOP, status=OperationStatus.SUCCEEDED)
    stopped.move([State.RUNNING], State.STOPPED)
    Operation.objects.create(server=deleting, kind=OperationKind.DELETE, status=OperationStatus.RUNNING)
    deleting.move([State.RUNNING], State.DELETING)
    Operation.objects.filter(server=failed).update(status=OperationStatus.FAILED)
    failed.move([State.RUNNING], State.ERROR, "provisioning failed")
    Operation.objects.create(server=busy, kind=OperationKind.RESTART, status=OperationStatus.RUNNING)
    busy.move([State.RUNNING], State.STOPPING)
    w.web.move([State.RUNNING], State.STOPPED)  # the only one down against its tenant's will

    for minute in range(0, 30, 5):
        evaluate(w.node, T0 + timedelta(minutes=minute))

    assert [m[1] for m in mails()] == ["Alert: web is unreachable"]


def test_switching_a_rule_off_or_deleting_the_server_ends_its_episode(w):
    other = running(w, "other")
    rules(w.web, disk=50)
    rules(other, disk=50)
    sample(w.web, T0, disk_mb=900)
    sample(other, T0, disk_mb=900)
    evaluate(w.node, T0)
    assert len(mails()) == 2

    save_rules(w.web, {Kind.DISK: {"enabled": False, "threshold": 50, "minutes": None}})
    other.move([State.RUNNING], State.DELETED)
    evaluate(w.node, T0 + timedelta(minutes=1))

    assert AlertEpisode.objects.filter(ended__isnull=True).count() == 0
    assert len(mails()) == 2


def test_admins_who_opted_out_get_no_alert_mail_and_the_episode_still_counts(w):
    OptOut.objects.create(user=w.alice, event=Event.ALERT)
    rules(w.web, disk=90)
    sample(w.web, T0, disk_mb=1000)
    evaluate(w.node, T0)
    assert mails() == []
    episode = AlertEpisode.objects.get()
    assert episode.mails == 0 and episode.ended is None


def test_a_pass_judges_its_own_nodes_rules_and_the_unreachable_ones_of_silent_nodes(w, rq_redis):
    """Three other nodes, none seen for 10 minutes: "silent" has no worker, "busy" has one
    registered in Redis (a long job keeps its reconcile and sampler from running), "alive"
    was seen just now."""
    from rq import Queue, SimpleWorker

    from vservers.models import Node

    w.node.last_seen = T0
    w.node.save()
    ago = T0 - timedelta(minutes=10)
    alive = Node.objects.create(name="alive", queue_name="node-alive", last_seen=T0)
    silent = Node.objects.create(name="silent", queue_name="node-silent", last_seen=ago)
    busy = Node.objects.create(name="busy", queue_name="node-busy", last_seen=ago)
    worker = SimpleWorker([Queue("node-busy", connection=rq_redis)], connection=rq_redis)
    worker.register_birth()
    servers = {}
    for node in (alive, silent, busy):
        server = servers[node.name] = running(w, f"on-{node.name}")
        VirtualServer.objects.filter(pk=server.pk).update(node=node)
        rules(server, disk=10, unreachable=1)
        sample(server, ago, disk_mb=900)

    for minute in range(0, 3):
        evaluate(w.node, T0 + timedelta(minutes=minute))
    # The silent node's server is unreachable; the busy node's is not judged by others, nor
    # is anybody's disk.
    assert [m[1] for m in mails()] == ["Alert: on-silent is unreachable"]
    assert "last sample: 2026-12-06 11:50 UTC" in OutboxMail.objects.get().body
    evaluate(alive, T0)
    assert sorted(m[1] for m in mails()) == [
        "Alert: on-silent is unreachable", "Alert: the disk of on-alive is 88 % full"]

    # The busy node's worker gone too: now it is silent.
    worker.register_death()
    for minute in range(3, 5):
        evaluate(w.node, T0 + timedelta(minutes=minute))
    assert "Alert: on-busy is unreachable" in [m[1] for m in mails()]


def test_a_pass_costs_the_same_queries_for_30_servers_as_for_3(w):
    def queries(servers: list) -> int:
        for server in servers:
            rules(server, disk=90, memory=(95, 5), unreachable=5)
            sample(server, T0, disk_mb=10, memory_mb=10)
        with CaptureQueriesContext(connection) as captured:
            evaluate(w.node, T0)
        return len(captured)

    few = queries([running(w, f"a{i}") for i in range(3)])  # 9 rules, none firing
    many = queries([running(w, f"b{i}") for i in range(27)])
    assert AlertRule.objects.count() == 90
    assert few == many == 3  # the other nodes not seen lately (none), the episodes ended, the rules


def test_a_stop_recording_zeros_neither_ends_a_disk_episode_nor_mails_again_at_the_next_start(w):
    rules(w.web, disk=90)
    sample(w.web, T0, disk_mb=1000)
    evaluate(w.node, T0)
    w.web.move([State.RUNNING], State.STOPPED)
    sample(w.web, T0 + timedelta(minutes=1), disk_mb=0, memory_mb=0)  # what a stop leaves
    evaluate(w.node, T0 + timedelta(minutes=1))
    w.web.move([State.STOPPED], State.RUNNING)
    sample(w.web, T0 + timedelta(minutes=2), disk_mb=1000)
    evaluate(w.node, T0 + timedelta(minutes=2))
    assert len(mails()) == 1
    assert episodes(w.web) == [(T0, None)]
