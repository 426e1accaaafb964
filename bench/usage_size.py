"""How big the usage history is: a full history (raw 24 h, 5-minute points for 30 days, daily
points for a year) for N servers and the node's total, written by vservers.usage.synthetic into
a fresh SQLite database, then the file's size, the bytes of each archive (SQLite's dbstat), and
how long each query function takes at that size.

    .venv/bin/python bench/usage_size.py [--servers 1000] [--period 30] [--keep PATH]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--period", type=int, default=30, help="the sampling period (PANEL_SAMPLE_SECONDS)")
    parser.add_argument("--keep", type=Path, help="write the database here and keep it")
    args = parser.parse_args()

    workdir = tempfile.TemporaryDirectory()
    path = args.keep or Path(workdir.name) / "usage.sqlite3"
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = path
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    empty = _size(path, connection)

    from accounts.models import Tenant
    from vservers.models import Node, Plan, Template, VirtualServer
    from vservers.usage import queries, synthetic

    node = Node.objects.create(name="bench")
    plan = Plan.objects.create(name="bench", cpus="1", memory_mb=256, disk_mb=1024)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    tenant = Tenant.objects.create(name="Bench", slug="bench")
    VirtualServer.objects.bulk_create(
        VirtualServer(tenant=tenant, name=f"s{i}", hostname=f"s{i}.example", plan=plan, template=template, node=node,
                      state="running")
        for i in range(args.servers)
    )
    ids = list(VirtualServer.objects.values_list("pk", flat=True))
    without = _size(path, connection)
    now = int(time.time())
    began = time.monotonic()
    rows = synthetic.fill(node.pk, [*ids, None], now, period=args.period)
    filled = time.monotonic() - began
    full = _size(path, connection)
    per_series = (full - without) / (len(ids) + 1)
    print(f"servers: {args.servers} (+ the node's total), sampled every {args.period} s; rows: {rows}; "
          f"written in {filled:.1f} s")
    print(f"database: {full / 1e6:.1f} MB ({empty / 1e6:.2f} MB empty, {without / 1e6:.2f} MB with the servers "
          f"and no history); history per server: {per_series / 1e3:.1f} kB")
    for table, size in _tables(path).items():
        print(f"  {table}: {size / 1e6:.1f} MB, {size / (len(ids) + 1) / 1e3:.1f} kB per server")

    server = VirtualServer.objects.get(pk=ids[0])
    for window in queries.WINDOWS:
        print(f"server_series({window}): {_timed(lambda w=window: queries.server_series(server, w)):.1f} ms")
        print(f"node_series({window}): {_timed(lambda w=window: queries.node_series(node, w)):.1f} ms")
    print(f"sparklines({len(ids)} servers): {_timed(lambda: queries.sparklines(ids)):.1f} ms")
    print(f"sparklines(50 servers): {_timed(lambda: queries.sparklines(ids[:50])):.1f} ms")
    workdir.cleanup()


def _size(path: Path, connection) -> int:
    """The database file's size once the WAL is folded in."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _tables(path: Path) -> dict[str, int]:
    """Bytes of pages per table and index (SQLite's dbstat), the usage tables only."""
    db = sqlite3.connect(path)
    try:
        found = db.execute(
            "SELECT name, SUM(pgsize) FROM dbstat WHERE name LIKE '%usage%' GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}  # no dbstat in this SQLite
    finally:
        db.close()
    return dict(found)


def _timed(call, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best * 1000


if __name__ == "__main__":
    main()
