"""Writing the usage history: appending samples, rolling up, pruning (the layout and the
rollups' definitions: vservers.usage.archive; the tables: vservers.models.usage).

Every rollup sets slots from its whole source, never adds to them, so rolling up twice is
harmless. Two writers that roll up into the same row at once (a sampler and a prune job)
are serialized: the rows are locked (PostgreSQL) or the second writer's transaction fails
(SQLite allows one writer; a stale read fails the write) and its source stays unrolled for
the next run; nothing is lost either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q

from ..models import UsageDaily, UsageFiveMin, UsageRaw
from ..models.usage import UsageRow
from . import archive
from .archive import BUCKET, BUCKETS_PER_DAY, DAY, DAYS_PER_MONTH_ROW, Point

log = logging.getLogger(__name__)

RAW_KEEP = DAY
FIVE_MIN_KEEP = 30 * DAY
DAILY_KEEP = 365 * DAY
# Rows handled per statement and transaction by the prune job: a write lock is held for one
# batch only, so a page (or the sampler) waits at most that long.
BATCH = 200

# A series: ("s", server pk) or ("n", node pk) for the node's total.
Key = tuple[str, int]


def key_of(row: UsageRow) -> Key:
    return ("s", row.server_id) if row.server_id is not None else ("n", row.node_id)


def _series_rows(model: type[UsageRow], keys: Iterable[Key], starts: Iterable[int], lock: bool = False):
    """The rows of MODEL of the series KEYS at STARTS, by (key, start): one query."""
    keys, starts = set(keys), sorted(set(starts))
    servers = [pk for kind, pk in keys if kind == "s"]
    nodes = [pk for kind, pk in keys if kind == "n"]
    if not starts or not keys:
        return {}
    from django.db.models import Q

    query = Q(server_id__in=servers) | Q(server__isnull=True, node_id__in=nodes)
    rows = model._default_manager.filter(query, start__in=starts)
    if lock:
        rows = rows.select_for_update()
    found = {}
    for row in rows:
        if key_of(row) in keys:
            found[key_of(row), row.start] = row
    return found


# --- raw ------------------------------------------------------------------------------------------


@dataclass
class Latest:
    """The rows a sampling pass of one node reads first: its series' raw rows of the current
    and the previous bucket."""

    rows: dict[tuple[Key, int], UsageRaw]

    def previous(self, key: Key, bucket: int) -> Point | None:
        """KEY's last sample before this pass (in the current or the previous bucket)."""
        for start in (bucket, bucket - BUCKET):
            row = self.rows.get((key, start))
            if row is not None and (points := archive.unpack_points(bytes(row.data), start)):
                return points[-1]
        return None


def latest(node_id: int, bucket: int) -> Latest:
    # A server that moved here from another node (issue 16) may have this bucket's row from
    # the other node's sampler: it is the same series (one row per server and start).
    rows = UsageRaw.objects.filter(Q(node_id=node_id) | Q(server__node_id=node_id), start__in=[bucket - BUCKET, bucket])
    return Latest({(key_of(row), row.start): row for row in rows})


def append(node_id: int, points: dict[Key, Point], seen: Latest) -> None:
    """Add POINTS (all in one bucket) to their series' raw rows: one UPDATE per batch of
    existing rows and one INSERT per batch of new ones, in one transaction."""
    if not points:
        return
    bucket = archive.bucket_of(next(iter(points.values())).t)
    changed, new = [], []
    for key, point in points.items():
        packed = archive.pack_point(point, bucket)
        row = seen.rows.get((key, bucket))
        if row is not None:
            # A sample the prune job's rollup missed (a bucket it took for closed) is rolled
            # up again.
            row.data, row.rolled = bytes(row.data) + packed, False
            changed.append(row)
        else:
            row = UsageRaw(node_id=node_id, server_id=key[1] if key[0] == "s" else None, start=bucket, data=packed)
            seen.rows[key, bucket] = row
            new.append(row)
    with transaction.atomic():
        UsageRaw.objects.bulk_update(changed, ["data", "rolled"], batch_size=BATCH)
        UsageRaw.objects.bulk_create(new, batch_size=BATCH)


def _write_slots(model, rows, period_of, width: int, slot_of, point_of) -> tuple[list, list]:
    """Write each of ROWS' rollup (POINT_OF(row)) into slot SLOT_OF(row, period) of its
    series' row of MODEL for PERIOD_OF(row.start), WIDTH slots wide, locked for the update and
    made when missing; the caller is in a transaction. Returns (changed rows, new rows), each
    with rolled=False: its content has yet to reach the next archive."""
    targets = _series_rows(model, (key_of(r) for r in rows), (period_of(r.start) for r in rows), lock=True)
    changed: dict[int, Any] = {}
    new: list = []
    for row in rows:
        key, period = key_of(row), period_of(row.start)
        target = targets.get((key, period))
        if target is None:
            target = targets[key, period] = model(node_id=row.node_id, server_id=row.server_id, start=period,
                                                  data=bytes(archive.empty_row(width)))
            new.append(target)
        elif target.pk is not None:
            changed[target.pk] = target
        data = bytearray(target.data)
        archive.set_slot(data, slot_of(row, period), point_of(row))
        target.data, target.rolled = bytes(data), False
    return list(changed.values()), new


def roll_raw(rows: Sequence[UsageRaw]) -> int:
    """Roll the closed raw ROWS up into their days' 5-minute rows and mark them rolled.
    Returns how many."""
    if not rows:
        return 0
    with transaction.atomic():
        changed, new = _write_slots(
            UsageFiveMin, rows, archive.day_of, BUCKETS_PER_DAY,
            slot_of=lambda raw, day: (raw.start - day) // BUCKET,
            point_of=lambda raw: archive.rollup_points(archive.unpack_points(bytes(raw.data), raw.start)))
        UsageFiveMin.objects.bulk_update(changed, ["data", "rolled"], batch_size=BATCH)
        UsageFiveMin.objects.bulk_create(new, batch_size=BATCH)
        UsageRaw.objects.filter(pk__in=[r.pk for r in rows]).update(rolled=True)
    return len(rows)


def roll_days(rows: Sequence[UsageFiveMin]) -> int:
    """Roll the 5-minute ROWS of closed days up into their months' daily rows."""
    if not rows:
        return 0
    with transaction.atomic():
        changed, new = _write_slots(
            UsageDaily, rows, archive.month_of, DAYS_PER_MONTH_ROW,
            slot_of=lambda five, month: (five.start - month) // DAY,
            point_of=lambda five: archive.rollup_slots(archive.columns(bytes(five.data)), range(BUCKETS_PER_DAY)))
        UsageDaily.objects.bulk_update(changed, ["data"], batch_size=BATCH)
        UsageDaily.objects.bulk_create(new, batch_size=BATCH)
        # Only rows no raw rollup wrote to meanwhile (that one set rolled=False again).
        for five in rows:
            UsageFiveMin.objects.filter(pk=five.pk, data=five.data).update(rolled=True)
    return len(rows)


# --- the prune job's work ------------------------------------------------------------------------


def _batches(queryset) -> Iterable[list]:
    """QUERYSET's rows, BATCH at a time, re-queried after each batch (the previous one is
    rolled or deleted by then, so it drops out of the filter)."""
    while True:
        batch = list(queryset[:BATCH])
        if not batch:
            return
        yield batch
        if len(batch) < BATCH:
            return


def roll_up_closed(now: int) -> dict[str, int]:
    """Roll up what is closed and not rolled yet: raw buckets before the previous one (the
    sampler rolls up the previous bucket itself, and may still be adding to it when its pass
    began in it; these are what it missed), and days over for longer than two buckets (their
    last bucket is rolled by then)."""
    counts = {"raw rolled": 0, "days rolled": 0}
    before = archive.bucket_of(now) - BUCKET
    for batch in _batches(UsageRaw.objects.filter(rolled=False, start__lt=before).order_by("start")):
        counts["raw rolled"] += roll_raw(batch)
    closed_day = archive.day_of(now - 2 * BUCKET) - DAY
    for batch in _batches(UsageFiveMin.objects.filter(rolled=False, start__lte=closed_day).order_by("start")):
        done = roll_days(batch)
        counts["days rolled"] += done
        if UsageFiveMin.objects.filter(pk__in=[r.pk for r in batch], rolled=False).count() == len(batch):
            break  # every one was written to meanwhile: the next run
    return counts


def prune(now: int) -> dict[str, int]:
    """Delete the rows whose whole period is past its retention, BATCH rows per statement."""
    cutoffs = {
        "raw": (UsageRaw, now - RAW_KEEP - BUCKET + 1),  # start + BUCKET <= now - RAW_KEEP
        "5min": (UsageFiveMin, now - FIVE_MIN_KEEP - DAY + 1),
        "daily": (UsageDaily, archive.month_of(now - DAILY_KEEP)),
    }
    counts = {}
    for name, (model, before) in cutoffs.items():
        counts[name] = 0
        manager = model._default_manager
        old = manager.filter(start__lt=before).order_by("start").values_list("pk", flat=True)
        for batch in _batches(old):
            counts[name] += manager.filter(pk__in=batch).delete()[0]
    return counts
