"""The archives in the database: appending samples, rolling up exactly, pruning exactly what is
past retention in batches, and the query API's answers and query counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from vservers.models import UsageDaily, UsageFiveMin, UsageRaw, VirtualServer
from vservers.usage import archive, queries, store, synthetic
from vservers.usage.archive import BUCKET, DAY, Point, f32

# Run on SQLite and again on PostgreSQL (make test, scripts/with-postgres).
pytestmark = pytest.mark.both_databases

# 2026-11-30 23:50 UTC: the last buckets of a day and of a month are near.
T0 = int(datetime(2026, 11, 30, 23, 50, tzinfo=UTC).timestamp())


@pytest.fixture
def servers(offline_world):
    def make(count=1):
        return [
            VirtualServer.objects.create(
                tenant=offline_world.acme, name=f"s{i}", hostname=f"s{i}.example", plan=offline_world.small,
                template=offline_world.busybox, node=offline_world.node,
            )
            for i in range(count)
        ]

    return make


def sample_series(node_id, server_id, start, count, period=30, reset_at=None):
    """Take COUNT samples of a server every PERIOD seconds as the sampler does (counters grow
    by a known amount; at RESET_AT the server restarts: counters from zero, another init)."""
    previous = None
    taken = []
    started, base = 1, 0
    for i in range(count):
        t = start + i * period
        if reset_at is not None and t == reset_at:
            started, base = 2, i
        k = i - base
        point = archive.with_rates(Point(
            t=t, started=started, cpu_seconds=0.25 * period * k + (i % 3) * 0.1, in_bytes=1000 * k * period,
            out_bytes=10 * k * period, in_packets=k * period, out_packets=k, memory_bytes=(40 + i % 7) << 20,
            disk_used_bytes=100 << 20, pids=5 + i % 4,
        ), previous)
        key = ("s", server_id)
        seen = store.latest(node_id, archive.bucket_of(t))
        assert seen.previous(key, archive.bucket_of(t)) == previous
        store.append(node_id, {key: point}, seen)
        # What is stored: the rates as float32.
        previous = archive.unpack_points(archive.pack_point(point, archive.bucket_of(t)), archive.bucket_of(t))[0]
        taken.append(previous)
    return taken


def test_a_closed_bucket_rolls_up_into_its_slot_exactly(servers):
    (server,) = servers()
    taken = sample_series(server.node_id, server.pk, T0, count=30)  # 23:50 to 00:04:30
    store.roll_raw(list(UsageRaw.objects.filter(start__lt=archive.bucket_of(T0 + 15 * 60))))
    assert UsageRaw.objects.count() == 3 and UsageRaw.objects.filter(rolled=False).count() == 0
    days = {row.start: archive.columns(bytes(row.data)) for row in UsageFiveMin.objects.all()}
    day = archive.day_of(T0)
    assert set(days) == {day, day + DAY}  # 23:55 is the old day's last slot, 00:00 the new one's first
    for bucket, cols, slot in ((T0, days[day], 286), (T0 + 300, days[day], 287), (T0 + 600, days[day + DAY], 0)):
        inside = [p for p in taken if bucket <= p.t < bucket + BUCKET]
        assert len(inside) == 10
        assert cols["n"][slot] == 10
        for name in archive.AVERAGED:
            present = [p.value(name) for p in inside if p.value(name) is not None]
            assert cols[name][slot] == f32(math.fsum(present) / len(present)), name
        assert cols["cpu_max"][slot] == f32(max(p.cpu for p in inside if p.cpu is not None))
    # The first sample of all has no rate; its bucket's CPU average is that of the other nine.
    assert taken[0].cpu is None and days[day]["cpu"][286] == f32(math.fsum(p.cpu for p in taken[1:10]) / 9)
    assert days[day]["n"][285] == 0 and math.isnan(days[day]["cpu"][285])  # before: a gap


def test_a_restart_within_a_bucket_leaves_that_interval_out(servers):
    (server,) = servers()
    taken = sample_series(server.node_id, server.pk, T0, count=10, reset_at=T0 + 150)
    assert [p.cpu is None for p in taken] == [True] + [False] * 4 + [True] + [False] * 4
    store.roll_raw(list(UsageRaw.objects.all()))
    cols = archive.columns(bytes(UsageFiveMin.objects.get().data))
    rates = [p.net_in for p in taken if p.net_in is not None]
    assert cols["net_in"][286] == f32(math.fsum(rates) / 8) == f32(1000.0)  # no spike, no dip
    assert cols["net_in_max"][286] == 1000.0


def test_rolling_up_twice_changes_nothing_and_days_reach_their_month(servers):
    (server,) = servers()
    sample_series(server.node_id, server.pk, T0, count=30)
    now = T0 + 40 * 60  # 00:30: the old day is over, and its last bucket rolled
    first = store.roll_up_closed(now)
    assert first == {"raw rolled": 3, "days rolled": 1}
    snapshot = {r.pk: bytes(r.data) for r in UsageFiveMin.objects.all()}
    UsageRaw.objects.update(rolled=False)
    UsageFiveMin.objects.update(rolled=False)
    assert store.roll_up_closed(now) == first
    assert {r.pk: bytes(r.data) for r in UsageFiveMin.objects.all()} == snapshot
    (month,) = UsageDaily.objects.all()
    assert month.start == archive.month_of(T0)  # November
    cols = archive.columns(bytes(month.data))
    assert cols["n"][29] == 20 and cols["n"][28] == 0  # the 30th; the 29th was not sampled
    day = archive.rollup_slots(archive.columns(snapshot[UsageFiveMin.objects.get(start=archive.day_of(T0)).pk]),
                               range(288))
    assert cols["cpu"][29] == f32(day["cpu"]) and cols["memory_max"][29] == f32(day["memory_max"])


def test_pruning_removes_exactly_what_is_past_retention_in_batches(servers, monkeypatch):
    server, other = servers(2)
    now = T0
    keep_raw = now - store.RAW_KEEP - BUCKET + 1  # the oldest bucket start kept: it ends after now-24h
    old_raw = [keep_raw - 1 - i * BUCKET for i in range(7)]
    kept_raw = [archive.bucket_of(keep_raw) + BUCKET, archive.bucket_of(now)]
    for s in (server, other):
        for start in old_raw + kept_raw:
            UsageRaw.objects.create(node_id=s.node_id, server=s, start=archive.bucket_of(start), data=b"", rolled=True)
    old_day = archive.day_of(now - store.FIVE_MIN_KEEP) - DAY  # ended before now - 30 days
    UsageFiveMin.objects.create(node_id=server.node_id, server=server, start=old_day, data=b"", rolled=True)
    UsageFiveMin.objects.create(node_id=server.node_id, server=server, start=old_day + DAY, data=b"", rolled=True)
    old_month = archive.month_of(now - store.DAILY_KEEP - 31 * DAY)
    UsageDaily.objects.create(node_id=server.node_id, server=server, start=old_month, data=b"")
    UsageDaily.objects.create(node_id=server.node_id, server=server, start=archive.next_month(old_month), data=b"")
    monkeypatch.setattr(store, "BATCH", 3)
    with CaptureQueriesContext(connection) as ctx:
        counts = store.prune(now)
    assert counts == {"raw": 14, "5min": 1, "daily": 1}
    left = sorted(UsageRaw.objects.filter(server=server).values_list("start", flat=True))
    assert left == sorted(archive.bucket_of(s) for s in kept_raw)
    assert list(UsageFiveMin.objects.values_list("start", flat=True)) == [old_day + DAY]
    assert list(UsageDaily.objects.values_list("start", flat=True)) == [archive.next_month(old_month)]
    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) >= 5 and all(q.count("%s") <= 3 or q.count(",") <= 2 for q in deletes)


def test_the_queries_answer_from_the_archives(servers):
    (server,) = servers()
    now = T0 + 29 * 30 + 5
    taken = sample_series(server.node_id, server.pk, T0, count=30)
    store.roll_raw(list(UsageRaw.objects.filter(start__lt=archive.bucket_of(now))))
    hour = queries.server_series(server, "1h", now=now)
    assert hour.step == 30 and len(hour.t) == 120 and hour.t[-1] == now - now % 30
    assert hour.metrics["memory"][-30:] == [float(p.memory_bytes) for p in taken]
    assert hour.metrics["cpu"][-30:] == [None if p.cpu is None else f32(p.cpu) for p in taken]
    assert hour.metrics["memory"][:-30] == [None] * 90  # not sampled then: a gap, not a zero
    day = queries.server_series(server, "24h", now=now)
    assert day.step == 300 and len(day.t) == 288 and day.t[-1] == archive.bucket_of(now) - BUCKET
    # The open bucket (from T0 + 600) is not in it yet: its points end with 23:55.
    assert day.metrics["pids"][-2:] == [f32(sum(p.pids for p in taken[0:10]) / 10),
                                        f32(sum(p.pids for p in taken[10:20]) / 10)]
    assert day.metrics["pids"][-3] is None
    month = queries.server_series(server, "30d", now=now)
    assert month.step == 3600 and len(month.t) == 720 and month.t[-1] == T0 - 50 * 60
    assert month.metrics["memory_max"][-1] == f32(max(p.memory_bytes for p in taken[:20]))
    assert month.metrics["memory_max"][-2] is None
    spark = queries.sparklines([server.pk], now=now)
    assert len(spark[server.pk]) == 24 and spark[server.pk][:-1] == [None] * 23
    assert math.isclose(spark[server.pk][-1], math.fsum(p.cpu for p in taken[1:20]) / 19, rel_tol=1e-6)
    since = datetime.fromtimestamp(T0 + 600, UTC)
    assert [s.at for s in queries.recent(server, since)] == [datetime.fromtimestamp(p.t, UTC) for p in taken[20:]]
    assert queries.Series.to_json(hour).keys() == {"window", "step", "t", "metrics"}
    with pytest.raises(ValueError):
        queries.server_series(server, "2h")


@pytest.mark.parametrize("window", queries.WINDOWS)
def test_each_query_is_one_query_whatever_the_history(servers, window, django_assert_num_queries):
    many = servers(20)
    node = many[0].node
    now = T0
    synthetic.fill(node.pk, [s.pk for s in many[:10]] + [None], now)
    for server in (many[0], many[15]):  # a year of history, and none
        with django_assert_num_queries(1):
            series = queries.server_series(server, window, now=now)
        assert series.window == window
    with django_assert_num_queries(1):
        totals = queries.node_series(node, window, now=now)
    assert any(v is not None for v in totals.metrics["cpu"])
    with django_assert_num_queries(1):
        spark = queries.sparklines([s.pk for s in many], now=now)
    assert all(len(points) == 24 for points in spark.values())
    assert all(v is not None for v in spark[many[0].pk]) and spark[many[15].pk] == [None] * 24
    with django_assert_num_queries(1):
        queries.recent(many[0], datetime.fromtimestamp(now - 3600, UTC))
