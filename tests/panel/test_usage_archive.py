"""The packing of usage history and the rollups' arithmetic, on synthetic series."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from vservers.usage import archive
from vservers.usage.archive import BUCKET, BUCKETS_PER_DAY, Point, f32

COUNTER = st.integers(min_value=0, max_value=2**63 - 1)
GAUGE = st.integers(min_value=0, max_value=2**40)
RATE = st.one_of(st.none(), st.floats(min_value=0, max_value=1e9, allow_nan=False, width=32))


@st.composite
def points(draw, bucket=1_800_000_000):
    return Point(
        t=bucket + draw(st.integers(0, BUCKET - 1)), started=draw(st.integers(0, 2**63)),
        cpu_seconds=draw(st.floats(0, 1e9)), in_bytes=draw(COUNTER), out_bytes=draw(COUNTER),
        in_packets=draw(COUNTER), out_packets=draw(COUNTER), memory_bytes=draw(GAUGE),
        disk_used_bytes=draw(GAUGE), pids=draw(st.integers(0, 2**32 - 1)), cpu=draw(RATE), net_in=draw(RATE),
        net_out=draw(RATE), net_in_packets=draw(RATE), net_out_packets=draw(RATE),
    )


@given(st.lists(points(), max_size=12))
def test_raw_samples_come_back_exactly_as_packed(samples):
    data = b"".join(archive.pack_point(p, 1_800_000_000) for p in samples)
    assert len(data) == len(samples) * archive.RAW.size
    assert archive.unpack_points(data, 1_800_000_000) == samples


def test_a_torn_tail_is_not_a_sample():
    data = archive.pack_point(Point(t=1_800_000_000 + 5, pids=3), 1_800_000_000)
    assert archive.unpack_points(data + data[:10], 1_800_000_000) == [Point(t=1_800_000_005, pids=3)]


def test_a_sample_outside_its_bucket_is_refused():
    for t in (1_800_000_000 - 1, 1_800_000_000 + BUCKET):
        try:
            archive.pack_point(Point(t=t), 1_800_000_000)
        except ValueError:
            continue
        raise AssertionError(f"{t} was packed")


def test_rates_are_counter_differences_over_the_interval():
    before = Point(t=1000, started=7, cpu_seconds=10.0, in_bytes=1000, out_bytes=50, in_packets=10, out_packets=1)
    now = Point(t=1030, started=7, cpu_seconds=25.0, in_bytes=31_000, out_bytes=350, in_packets=40, out_packets=4)
    got = archive.with_rates(now, before)
    assert (got.cpu, got.net_in, got.net_out, got.net_in_packets, got.net_out_packets) == (
        0.5, 1000.0, 10.0, 1.0, 0.1)
    assert got.in_bytes == 31_000  # the counters are kept as read


@given(st.sampled_from(["cpu_seconds", "in_bytes", "out_bytes", "in_packets", "out_packets", "started", "t"]))
def test_a_reset_or_gap_gives_no_rate_never_a_spike(changed):
    before = Point(t=1000, started=7, cpu_seconds=10.0, in_bytes=1000, out_bytes=50, in_packets=10, out_packets=1)
    now = Point(t=1030, started=7, cpu_seconds=11.0, in_bytes=2000, out_bytes=60, in_packets=11, out_packets=2)
    broken = {
        "cpu_seconds": {"cpu_seconds": 0.2},  # a new cgroup counts from zero
        "in_bytes": {"in_bytes": 10},  # a new veth too
        "out_bytes": {"out_bytes": 0},
        "in_packets": {"in_packets": 0},
        "out_packets": {"out_packets": 0},
        "started": {"started": 8},  # another init, even with counters that happen to be higher
        "t": {"t": 1000 + archive.MAX_RATE_INTERVAL + 1},  # the sampler was away
    }[changed]
    import dataclasses

    got = archive.with_rates(dataclasses.replace(now, **broken), before)
    assert (got.cpu, got.net_in, got.net_out, got.net_in_packets, got.net_out_packets) == (None,) * 5
    assert archive.with_rates(now, None).cpu is None  # the first sample has none either


@given(st.lists(points(), min_size=1, max_size=30))
def test_a_five_minute_point_is_the_mean_and_maximum_of_its_samples(samples):
    row = archive.empty_row(BUCKETS_PER_DAY)
    archive.set_slot(row, 17, archive.rollup_points(samples))
    cols = archive.columns(row)
    assert cols["n"][17] == len(samples)
    for name in archive.AVERAGED:
        present = [p.value(name) for p in samples if p.value(name) is not None]
        if not present:
            assert math.isnan(cols[name][17])
            continue
        assert cols[name][17] == f32(math.fsum(present) / len(present))
        if name in archive.MAXED:
            assert cols[name + "_max"][17] == f32(max(present))
    # Only slot 17 was written: every other one is still a gap.
    assert all(cols["n"][s] == 0 and math.isnan(cols["cpu"][s]) for s in range(BUCKETS_PER_DAY) if s != 17)


@settings(max_examples=50)
@given(st.lists(st.lists(st.floats(0, 64, width=32), min_size=0, max_size=10), min_size=1, max_size=BUCKETS_PER_DAY))
def test_a_day_is_the_mean_of_all_its_samples_and_the_maximum_of_its_maxima(buckets):
    """Buckets with any number of samples, and empty ones (gaps): the day's average is what
    averaging the raw samples directly gives, not a mean of means."""
    day = 1_800_000_000 - 1_800_000_000 % archive.DAY
    row = archive.empty_row(BUCKETS_PER_DAY)
    everything = []
    for slot, cpus in enumerate(buckets):
        t = day + slot * BUCKET
        samples = [Point(t=t + i, cpu=c, memory_bytes=1000 * slot) for i, c in enumerate(cpus)]
        everything += samples
        archive.set_slot(row, slot, archive.rollup_points(samples))
    point = archive.rollup_slots(archive.columns(row), range(BUCKETS_PER_DAY))
    assert point["n"] == len(everything)
    if not everything:
        assert set(point) == {"n", "n_rates"}
        return
    exact = math.fsum(p.cpu for p in everything) / len(everything)
    # Each 5-minute mean is stored as float32: the day's is exact up to that rounding.
    assert math.isclose(point["cpu"], exact, rel_tol=1e-6, abs_tol=1e-6)
    assert point["cpu_max"] == f32(max(p.cpu for p in everything))
    memory = math.fsum(p.memory_bytes for p in everything) / len(everything)
    assert math.isclose(point["memory"], memory, rel_tol=1e-6)


def test_node_totals_sum_gauges_and_the_rates_there_are():
    a = Point(t=5, memory_bytes=10, disk_used_bytes=100, pids=2, cpu=0.25, net_in=100.0)
    b = Point(t=5, memory_bytes=20, disk_used_bytes=200, pids=3, cpu=None, net_in=50.0)  # just restarted
    got = archive.total(5, [a, b])
    assert (got.memory_bytes, got.disk_used_bytes, got.pids, got.cpu, got.net_in, got.net_out) == (
        30, 300, 5, 0.25, 150.0, None)


def test_months_start_on_the_first_utc():
    from datetime import UTC, datetime

    t = int(datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp())
    assert archive.month_of(t) == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    assert archive.next_month(archive.month_of(t)) == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
