"""How usage history is packed, and the rollups: plain Python, no Django, no kernel.

Like RRD's archives, a row holds a period's points, not one point:

 - raw: one row per server per 5-minute bucket, the samples taken in it appended as fixed
   records (RAW: counters, gauges and the rates computed when the sample was taken);
 - 5 minutes: one row per server per UTC day, 288 slots;
 - daily: one row per server per UTC month, 31 slots.

A rollup row is column-major float32: all of a day's "n" values, then all its "cpu" values,
and so on (FIELDS), NaN where there was no sample (a gap). Column-major so that a page that
wants one metric (the sparklines' CPU) reads only those bytes (SUBSTR of the blob in SQL),
and setting one slot is a pack_into.

Rollups are pure functions of their source and are written by setting slots, never by adding
to them: rolling up the same bucket twice gives the same row. Their definitions:

 - n: how many raw samples went into the point; n_rates: how many of them have rates (the
   first sample after a start or a counter reset has none);
 - an average is the mean over the raw samples in the bucket of the values they have; a
   daily average is the mean of the 5-minute averages weighted by their n (n_rates for a
   rate), so it equals the mean of the day's raw samples;
 - a maximum is the maximum of the samples' values (of the 5-minute maxima for a day).

Samples are taken at one period, so the mean over samples is the time-weighted mean.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

BUCKET = 300  # seconds of one raw row and of one 5-minute point
DAY = 86400
BUCKETS_PER_DAY = DAY // BUCKET
DAYS_PER_MONTH_ROW = 31
NAN = float("nan")

# One raw sample, little-endian: seconds into the bucket, the init's start time (a new one is
# a new cgroup and veth: counters start again), CPU seconds, network bytes and packets in and
# out, memory and disk bytes, processes, then the rates against the previous sample (NaN: none).
RAW = struct.Struct("<HQdQQQQQQIfffff")

# The metrics of a rollup point, in storage order: "n" is how many samples the point has,
# "n_rates" how many of them have rates (a sample has all its rates or none). "n_rates" first
# and "cpu" next: the sparklines read just those two columns.
FIELDS = (
    "n_rates",
    "cpu", "cpu_max",
    "n",
    "memory", "memory_max",
    "disk",
    "pids",
    "net_in", "net_in_max",
    "net_out", "net_out_max",
    "net_in_packets",
    "net_out_packets",
)
# Which raw value each averaged field comes from; a *_max field is the maximum of its base.
AVERAGED = ("cpu", "memory", "disk", "pids", "net_in", "net_out", "net_in_packets", "net_out_packets")
MAXED = ("cpu", "memory", "net_in", "net_out")
RATES = ("cpu", "net_in", "net_out", "net_in_packets", "net_out_packets")
_F32 = struct.Struct("<f")
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}


def f32(value: float) -> float:
    """VALUE as a rollup row stores it (float32)."""
    return _F32.unpack(_F32.pack(value))[0]


# --- raw samples -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One raw sample of a server (or a node's total: its counters are 0, its rates the sums
    of its servers'). Network "in" is what reached the server: what the host end of its veth
    transmitted; "out" is what the host end received."""

    t: int  # epoch seconds, UTC
    started: int = 0  # the init's start time: the counters' incarnation
    cpu_seconds: float = 0.0
    in_bytes: int = 0
    out_bytes: int = 0
    in_packets: int = 0
    out_packets: int = 0
    memory_bytes: int = 0
    disk_used_bytes: int = 0
    pids: int = 0
    cpu: float | None = None  # fraction of one core since the previous sample
    net_in: float | None = None  # bytes/s
    net_out: float | None = None
    net_in_packets: float | None = None  # packets/s
    net_out_packets: float | None = None

    def value(self, name: str) -> float | None:
        """The value of metric NAME (a key of the query API)."""
        if name == "memory":
            return float(self.memory_bytes)
        if name == "disk":
            return float(self.disk_used_bytes)
        if name == "pids":
            return float(self.pids)
        return getattr(self, name)


def bucket_of(t: int) -> int:
    return t - t % BUCKET


def _nan(value: float | None) -> float:
    return NAN if value is None else value


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def pack_point(point: Point, bucket: int) -> bytes:
    offset = point.t - bucket
    if not 0 <= offset < BUCKET:
        raise ValueError(f"sample at {point.t} is outside the bucket starting at {bucket}")
    return RAW.pack(
        offset, point.started, point.cpu_seconds, point.in_bytes, point.out_bytes, point.in_packets,
        point.out_packets, point.memory_bytes, point.disk_used_bytes, point.pids,
        _nan(point.cpu), _nan(point.net_in), _nan(point.net_out), _nan(point.net_in_packets),
        _nan(point.net_out_packets),
    )


def unpack_points(data: bytes | bytearray | memoryview, bucket: int) -> list[Point]:
    """The samples of a raw row whose bucket starts at BUCKET, in the order they were taken."""
    usable = len(data) - len(data) % RAW.size  # a torn tail is not a sample
    return [
        Point(bucket + r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
              _none(r[10]), _none(r[11]), _none(r[12]), _none(r[13]), _none(r[14]))
        for r in RAW.iter_unpack(bytes(data[:usable]))
    ]


# The longest interval a rate is computed over: beyond it the sampler was not running and the
# average over the whole stretch would show as one point at its end.
MAX_RATE_INTERVAL = 600


def with_rates(point: Point, previous: Point | None) -> Point:
    """POINT (counters and gauges read now) with its rates against PREVIOUS, the server's
    sample before. No rate at all when there is no previous sample, it is too old, the init
    changed, or any counter went backwards: a restart made a new cgroup and veth, and the
    difference would be a reset, not usage (never a spike)."""
    if previous is None:
        return point
    dt = point.t - previous.t
    counters = ("cpu_seconds", "in_bytes", "out_bytes", "in_packets", "out_packets")
    if (
        not 0 < dt <= MAX_RATE_INTERVAL
        or point.started != previous.started
        or any(getattr(point, c) < getattr(previous, c) for c in counters)
    ):
        return point
    return Point(
        point.t, point.started, point.cpu_seconds, point.in_bytes, point.out_bytes, point.in_packets,
        point.out_packets, point.memory_bytes, point.disk_used_bytes, point.pids,
        cpu=(point.cpu_seconds - previous.cpu_seconds) / dt,
        net_in=(point.in_bytes - previous.in_bytes) / dt,
        net_out=(point.out_bytes - previous.out_bytes) / dt,
        net_in_packets=(point.in_packets - previous.in_packets) / dt,
        net_out_packets=(point.out_packets - previous.out_packets) / dt,
    )


def total(t: int, points: Iterable[Point]) -> Point:
    """A node's total at T: gauges summed, and each rate the sum of the servers' that have one
    (none if none has)."""
    points = list(points)

    def rate_sum(name: str) -> float | None:
        values = [v for p in points if (v := getattr(p, name)) is not None]
        return math.fsum(values) if values else None

    return Point(
        t,
        memory_bytes=sum(p.memory_bytes for p in points),
        disk_used_bytes=sum(p.disk_used_bytes for p in points),
        pids=sum(p.pids for p in points),
        cpu=rate_sum("cpu"), net_in=rate_sum("net_in"), net_out=rate_sum("net_out"),
        net_in_packets=rate_sum("net_in_packets"), net_out_packets=rate_sum("net_out_packets"),
    )


# --- rollup rows -------------------------------------------------------------------------------


def empty_row(slots: int) -> bytearray:
    """A rollup row of SLOTS points, every one a gap (counts 0, the rest NaN)."""
    row = bytearray(_F32.pack(NAN) * (slots * len(FIELDS)))
    for count in ("n", "n_rates"):
        struct.pack_into(f"<{slots}f", row, FIELD_INDEX[count] * slots * _F32.size, *([0.0] * slots))
    return row


def slots_of(row: bytes | bytearray) -> int:
    return len(row) // (_F32.size * len(FIELDS))


def set_slot(row: bytearray, slot: int, values: dict[str, float]) -> None:
    """Write one point (VALUES by field, a missing field a gap) into slot SLOT of ROW."""
    slots = slots_of(row)
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot} is outside a row of {slots}")
    for i, name in enumerate(FIELDS):
        _F32.pack_into(row, (i * slots + slot) * _F32.size, values.get(name, NAN))


def column(row: bytes | bytearray, name: str, slots: int | None = None) -> list[float]:
    """All values of field NAME in ROW (NaN for gaps). SLOTS if ROW holds only the first
    columns (a SUBSTR of the blob)."""
    slots = slots or slots_of(row)
    start = FIELD_INDEX[name] * slots * _F32.size
    return list(struct.unpack_from(f"<{slots}f", row, start))


def columns(row: bytes | bytearray) -> dict[str, list[float]]:
    slots = slots_of(row)
    return {name: column(row, name, slots) for name in FIELDS}


def rollup_points(points: Sequence[Point]) -> dict[str, float]:
    """One 5-minute point from the raw samples of its bucket (see the module's docstring)."""
    if not points:
        return {"n": 0.0, "n_rates": 0.0}
    values = {"n": float(len(points)), "n_rates": float(sum(p.cpu is not None for p in points))}
    for name in AVERAGED:
        present = [v for p in points if (v := p.value(name)) is not None]
        if present:
            values[name] = math.fsum(present) / len(present)
            if name in MAXED:
                values[name + "_max"] = max(present)
    return values


def rollup_slots(cols: dict[str, list[float]], slots: Iterable[int],
                 averaged: Sequence[str] = AVERAGED) -> dict[str, float]:
    """One coarser point from SLOTS of a rollup row's columns COLS (e.g. a day from its 288
    five-minute points): averages weighted by each point's n (n_rates for a rate), maxima of
    maxima. AVERAGED: the metrics wanted (COLS may hold only those and their counts)."""
    slots = list(slots)
    values: dict[str, float] = {}
    for count in ("n", "n_rates"):
        if count in cols:
            values[count] = math.fsum(w for s in slots if (w := cols[count][s]) > 0)
    for name in averaged:
        weights = cols["n_rates" if name in RATES else "n"]
        present = [(weights[s], cols[name][s]) for s in slots if weights[s] > 0 and not math.isnan(cols[name][s])]
        if not present:
            continue
        values[name] = math.fsum(w * v for w, v in present) / math.fsum(w for w, _ in present)
        if name in MAXED and name + "_max" in cols:
            maxima = [m for s in slots if weights[s] > 0 and not math.isnan(m := cols[name + "_max"][s])]
            if maxima:
                values[name + "_max"] = max(maxima)
    return values


# --- calendar ----------------------------------------------------------------------------------


def day_of(t: int) -> int:
    return t - t % DAY


def month_of(t: int) -> int:
    """The epoch second the UTC month of T starts at."""
    d = datetime.fromtimestamp(t, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def next_month(month: int) -> int:
    d = datetime.fromtimestamp(month, UTC)
    year, mon = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, mon, 1, tzinfo=UTC).timestamp())
