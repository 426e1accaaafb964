"""What every page and the alerts read of the usage history: the contract of vservers.usage.

Each function makes a fixed number of queries (one), whatever the history's length or the
number of servers, and reads only the rows of its window. Points are on an even grid of
epoch seconds (UTC); None is a gap (the server was stopped, or nothing sampled it):

 - "1h": the raw samples, one point per PANEL_SAMPLE_SECONDS;
 - "24h" and "7d": 5-minute averages and maxima;
 - "30d": hourly, rolled up from the 5-minute points on reading (720 points, not 8,640).

The rolled-up windows end with the last closed 5-minute bucket (the sampler rolls a bucket up
at its first sample after it), the raw one with the latest sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import BinaryField
from django.db.models.functions import Substr

from ..models import Node, UsageFiveMin, UsageRaw, VirtualServer
from . import archive
from .archive import BUCKET, BUCKETS_PER_DAY, DAY

WINDOWS = ("1h", "24h", "7d", "30d")
RAW_METRICS = ("cpu", "memory", "disk", "pids", "net_in", "net_out", "net_in_packets", "net_out_packets")
ROLLUP_METRICS = tuple(name for name in archive.FIELDS if name not in ("n", "n_rates"))
HOUR = 3600
SPARK_POINTS = 24  # hourly CPU over the last 24 h


@dataclass
class Series:
    window: str
    step: int  # seconds between points
    t: list[int]  # epoch seconds (UTC), one per point, evenly spaced
    metrics: dict[str, list[float | None]]  # None where there is no sample: a gap

    def to_json(self) -> dict:
        return {"window": self.window, "step": self.step, "t": self.t, "metrics": self.metrics}


@dataclass(frozen=True)
class Sample:
    """One raw sample (the alerts read these). `running` is always True: a stopped server is
    not sampled, so its absence over a stretch is what says it was not running."""

    at: datetime
    running: bool
    cpu: float | None  # fraction of one core since the sample before; None after a restart
    cpu_seconds: float
    memory_bytes: int
    disk_used_bytes: int
    pids: int
    net_in: float | None  # bytes/s
    net_out: float | None
    net_in_packets: float | None  # packets/s
    net_out_packets: float | None


def server_series(server: VirtualServer, window: str, *, now: int | None = None) -> Series:
    return _series({"server": server}, window, now)


def node_series(node: Node, window: str, *, now: int | None = None) -> Series:
    """The node's totals: gauges summed over its running servers, rates summed."""
    return _series({"node": node, "server__isnull": True}, window, now)


def recent(server: VirtualServer, since: datetime) -> list[Sample]:
    """SERVER's raw samples taken at SINCE or later (at most the last 24 h), oldest first."""
    first = int(since.timestamp())
    rows = UsageRaw.objects.filter(server=server, start__gte=archive.bucket_of(first)).order_by("start")
    samples = []
    for start, data in rows.values_list("start", "data"):
        for p in archive.unpack_points(data, start):
            if p.t >= first:
                samples.append(Sample(
                    at=datetime.fromtimestamp(p.t, UTC), running=True, cpu=p.cpu, cpu_seconds=p.cpu_seconds,
                    memory_bytes=p.memory_bytes, disk_used_bytes=p.disk_used_bytes, pids=p.pids,
                    net_in=p.net_in, net_out=p.net_out, net_in_packets=p.net_in_packets,
                    net_out_packets=p.net_out_packets,
                ))
    return samples


def sparklines(server_ids: Sequence[int], *, now: int | None = None) -> dict[int, list[float | None]]:
    """Hourly average CPU (fraction of one core) over the last 24 h of each server in
    SERVER_IDS, oldest first, in one query that reads only the "n_rates" and "cpu" columns of the
    day rows (a SUBSTR of the blob): 2 x 2,304 bytes per server, not 2 x 16 KB."""
    now = int(time.time()) if now is None else now
    last = archive.bucket_of(now) - BUCKET
    end = last - last % HOUR
    first = end - (SPARK_POINTS - 1) * HOUR
    result: dict[int, list[float | None]] = {pk: [None] * SPARK_POINTS for pk in server_ids}
    if not server_ids:
        return result
    head = 2 * BUCKETS_PER_DAY * 4  # the "n_rates" and "cpu" columns: FIELDS starts with them
    assert archive.FIELDS[:2] == ("n_rates", "cpu")
    rows = (
        UsageFiveMin.objects.filter(server_id__in=list(server_ids), start__gte=archive.day_of(first),
                                    start__lte=archive.day_of(last))
        .annotate(head=Substr("data", 1, head, output_field=BinaryField()))
        .values_list("server_id", "start", "head")
    )
    per_server: dict[int, dict[int, tuple[list[float], list[float]]]] = {}
    for server_id, start, data in rows:
        data = bytes(data)
        n = archive.column(data, "n_rates", BUCKETS_PER_DAY)
        cpu = archive.column(data, "cpu", BUCKETS_PER_DAY)
        per_server.setdefault(server_id, {})[start] = (n, cpu)
    for server_id, days in per_server.items():
        points = result[server_id]
        for i in range(SPARK_POINTS):
            hour = first + i * HOUR
            cols = days.get(archive.day_of(hour))
            if cols is None:
                continue
            first_slot = (hour - archive.day_of(hour)) // BUCKET
            slots = range(first_slot, first_slot + HOUR // BUCKET)
            point = archive.rollup_slots({"n_rates": cols[0], "cpu": cols[1]}, slots, averaged=("cpu",))
            points[i] = point.get("cpu")
    return result


# --- the windows ---------------------------------------------------------------------------------


def _series(series_filter: dict, window: str, now: int | None) -> Series:
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; one of {', '.join(WINDOWS)}")
    now = int(time.time()) if now is None else now
    if window == "1h":
        return _raw_series(series_filter, now)
    days = {"24h": 1, "7d": 7, "30d": 30}[window]
    step = HOUR if window == "30d" else BUCKET
    last = archive.bucket_of(now) - BUCKET  # the last closed bucket
    end = last - last % step
    count = days * DAY // step
    first = end - (count - 1) * step
    rows = UsageFiveMin.objects.filter(
        **series_filter, start__gte=archive.day_of(first), start__lte=archive.day_of(last)
    ).values_list("start", "data")
    by_day = {start: archive.columns(bytes(data)) for start, data in rows}
    t = [first + i * step for i in range(count)]
    metrics: dict[str, list[float | None]] = {name: [None] * count for name in ROLLUP_METRICS}
    per_step = step // BUCKET
    for i, when in enumerate(t):
        cols = by_day.get(archive.day_of(when))
        if cols is None:
            continue
        slot = (when - archive.day_of(when)) // BUCKET
        if per_step == 1:
            if cols["n"][slot] <= 0:
                continue
            point = {name: cols[name][slot] for name in ROLLUP_METRICS}
        else:
            point = archive.rollup_slots(cols, range(slot, slot + per_step))
            if not point["n"]:
                continue
        for name in ROLLUP_METRICS:
            value = point.get(name)
            metrics[name][i] = None if value is None or math.isnan(value) else value
    return Series(window, step, t, metrics)


def _raw_series(series_filter: dict, now: int) -> Series:
    step = int(settings.PANEL_SAMPLE_SECONDS)
    count = HOUR // step
    end = now - now % step
    first = end - (count - 1) * step
    rows = UsageRaw.objects.filter(
        **series_filter, start__gte=archive.bucket_of(first), start__lte=archive.bucket_of(now)
    ).order_by("start").values_list("start", "data")
    t = [first + i * step for i in range(count)]
    metrics: dict[str, list[float | None]] = {name: [None] * count for name in RAW_METRICS}
    for start, data in rows:
        for p in archive.unpack_points(data, start):
            i = (p.t - first) // step
            if 0 <= i < count:  # two samples in one step (the period changed): the later one
                for name in RAW_METRICS:
                    metrics[name][i] = p.value(name)
    return Series("1h", step, t, metrics)
