"""Synthetic usage history, written straight into the archives: for tests that need a year of
history at 1,000 servers (page queries, database size) without sampling for a year.

The rows are what the sampler and the rollups would leave for a server that ran all along
with a daily CPU wave; every server of one call gets the same bytes (packing once is what
makes a year at 1,000 servers take seconds, not hours).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

from django.db import connection, transaction

from ..models import UsageDaily, UsageFiveMin, UsageRaw
from ..models.usage import UsageRow
from . import archive
from .archive import BUCKET, BUCKETS_PER_DAY, DAY, DAYS_PER_MONTH_ROW, Point
from .store import DAILY_KEEP, FIVE_MIN_KEEP, RAW_KEEP


def _cpu(t: int) -> float:
    return 0.3 + 0.25 * math.sin(2 * math.pi * (t % DAY) / DAY)


def _point(t: int) -> dict[str, float]:
    cpu = _cpu(t)
    return {
        "n": 10.0, "n_rates": 10.0, "cpu": cpu, "cpu_max": min(1.0, cpu * 1.5), "memory": 48e6 + 8e6 * cpu,
        "memory_max": 60e6, "disk": 120e6, "pids": 12.0, "net_in": 2e4 * cpu, "net_in_max": 5e4,
        "net_out": 1e4 * cpu, "net_out_max": 3e4, "net_in_packets": 20 * cpu, "net_out_packets": 10 * cpu,
    }


# Rows per INSERT: 5 parameters each, within SQLite's 32,766 and PostgreSQL's 65,535.
INSERT_ROWS = 2000


def _insert(model: type[UsageRow], rows: Iterable[tuple[int, int | None, int, bytes, bool]]) -> None:
    """ROWS (node, server, start, data, rolled) into MODEL's table, INSERT_ROWS per statement.

    By hand rather than bulk_create: a year at 1,000 servers is about 330,000 rows, and
    building a model instance and compiling an INSERT for each batch took half a minute of
    the half minute this took; the values are what the fields store (ints, bytes, a bool), so
    the database's own parameter binding is all the conversion they need."""
    meta = model._meta
    column_of = {field.name: str(field.column) for field in meta.concrete_fields}
    columns = ", ".join(connection.ops.quote_name(column_of[name])
                        for name in ("node", "server", "start", "data", "rolled"))
    insert = f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES "
    iterator = iter(rows)
    with transaction.atomic(), connection.cursor() as cursor:
        while batch := list(itertools.islice(iterator, INSERT_ROWS)):
            # Many rows per statement: PostgreSQL answers each statement with a round trip.
            cursor.execute(insert + ", ".join(["(%s, %s, %s, %s, %s)"] * len(batch)),
                           [value for row in batch for value in row])


def raw_row(bucket: int, period: int = 30, until: int | None = None) -> bytes:
    """A raw bucket of a server sampled every PERIOD seconds (until UNTIL, if given)."""
    points = []
    for i in range(BUCKET // period):
        t = bucket + i * period
        if until is not None and t > until:
            break
        cpu = _cpu(t)
        points.append(archive.pack_point(Point(
            t=t, started=1, cpu_seconds=(t % 10**6) * cpu, in_bytes=t * 1000, out_bytes=t * 500, in_packets=t,
            out_packets=t // 2, memory_bytes=int(48e6 + 8e6 * cpu), disk_used_bytes=120_000_000, pids=12,
            cpu=cpu, net_in=2e4 * cpu, net_out=1e4 * cpu, net_in_packets=20 * cpu, net_out_packets=10 * cpu,
        ), bucket))
    return b"".join(points)


def day_row(day: int, until: int | None = None) -> bytes:
    """A day's 5-minute row, its buckets from UNTIL on left as gaps."""
    row = archive.empty_row(BUCKETS_PER_DAY)
    for slot in range(BUCKETS_PER_DAY):
        t = day + slot * BUCKET
        if until is not None and t >= until:
            break
        archive.set_slot(row, slot, _point(t))
    return bytes(row)


def month_row(month: int) -> bytes:
    row = archive.empty_row(DAYS_PER_MONTH_ROW)
    days = (archive.next_month(month) - month) // DAY
    for slot in range(days):
        archive.set_slot(row, slot, {**_point(month), "n": 2880.0, "n_rates": 2880.0, "cpu": 0.3})
    return bytes(row)


def fill(node_id: int, server_ids: Sequence[int | None], now: int, *, period: int = 30) -> dict[str, int]:
    """Write a full history ending at NOW for each of SERVER_IDS (None: the node's total):
    raw rows for the last 24 h, 5-minute rows for 30 days, daily rows for a year, as the
    rollups leave them (every closed row rolled). Returns how many rows of each."""
    current = archive.bucket_of(now)
    buckets = range(current - RAW_KEEP, current + 1, BUCKET)
    first_day = archive.day_of(now - FIVE_MIN_KEEP)
    days = range(first_day, archive.day_of(now) + 1, DAY)
    months = []
    month = archive.month_of(now - DAILY_KEEP)
    while month <= now:
        months.append(month)
        month = archive.next_month(month)
    raws = {b: raw_row(b, period, until=now) for b in buckets}
    fives = {d: day_row(d, until=current) for d in days}
    dailies = {m: month_row(m) for m in months}
    for model, rows, last in ((UsageRaw, raws, current), (UsageFiveMin, fives, archive.day_of(now)),
                              (UsageDaily, dailies, months[-1])):
        _insert(model, ((node_id, server_id, start, data, start < last)
                        for server_id in server_ids for start, data in rows.items()))
    return {"raw": len(raws) * len(server_ids), "5min": len(fives) * len(server_ids),
            "daily": len(dailies) * len(server_ids)}
