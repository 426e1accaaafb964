"""The worker's snapshot operations (SNAPSHOT_CREATE, SNAPSHOT_RESTORE, SNAPSHOT_DELETE):
the engine does the work (vservers/engine/snapshots.py), these record it in Snapshot rows.

The node is the truth for which snapshots exist: after each operation the server's rows are
set from the engine's listing (store_snapshots), so a snapshot taken by another operation
(a reinstall's "snapshot first") or one deleted by hand shows as it is. Registered in
jobs.HANDLERS; jobs is imported inside the functions because it imports this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.db import transaction

from .models import Snapshot, VirtualServer

if TYPE_CHECKING:
    from .engine import Engine
    from .jobs import Run

FAILED_SENTENCES = {
    "snapshot_create": "The snapshot could not be taken",
    "snapshot_restore": "The snapshot could not be put back",
    "snapshot_delete": "The snapshot could not be deleted",
}


def store_snapshots(server: VirtualServer, engine: Engine) -> list[Snapshot]:
    """Make SERVER's Snapshot rows say what its node has: sizes updated, rows of snapshots
    the node no longer has removed, snapshots the panel did not know added."""
    on_node = {info.name: info for info in engine.snapshot_list(server.engine_name)}
    with transaction.atomic():
        rows = {row.name: row for row in Snapshot.objects.select_for_update(of=("self",)).filter(server=server)}
        Snapshot.objects.filter(server=server).exclude(name__in=list(on_node)).delete()
        for name, info in on_node.items():
            row = rows.get(name)
            if row is None:
                row = Snapshot.objects.create(
                    server=server, name=name, size_bytes=info.size_bytes,
                    freeze_ms=_ms(info.freeze_seconds), copy_ms=_ms(info.copy_seconds),
                )
                # Its time is the node's, not the moment the panel learnt of it.
                created = datetime.fromtimestamp(info.created, tz=UTC)
                Snapshot.objects.filter(pk=row.pk).update(created=created)
            elif row.size_bytes != info.size_bytes:
                Snapshot.objects.filter(pk=row.pk).update(size_bytes=info.size_bytes)
    return list(Snapshot.objects.filter(server=server))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _snapshot_param(run: Run, required: bool = True) -> str | None:
    from .engine import validate
    from .engine.errors import InvalidInput
    from .jobs import Refused

    name = run.param("snapshot") if required else run.optional("snapshot")
    if name is None:
        return None
    try:
        return validate.user_snapshot_name(name)
    except InvalidInput as exc:
        raise Refused(str(exc)) from None


def create(run: Run) -> None:
    """Params: "snapshot", its name (without one, as a reinstall's "snapshot first" asks,
    the engine names it from the time), and an optional "label"."""
    from .jobs import _begin

    snap = _snapshot_param(run, required=False)
    _begin(run)
    run.checkpoint("before-engine")
    info = run.engine.snapshot_create(run.name, snap)
    run.checkpoint("after-engine")
    with transaction.atomic():
        row, _ = Snapshot.objects.get_or_create(server=run.server, name=info.name)
        Snapshot.objects.filter(pk=row.pk).update(
            label=(run.optional("label") or "")[:100],
            created_by=run.operation.requested_by,
            size_bytes=info.size_bytes,
            freeze_ms=_ms(info.freeze_seconds),
            copy_ms=_ms(info.copy_seconds),
        )
    frozen = "not running, no freeze" if info.freeze_seconds is None else \
        f"processes and disk frozen for {info.freeze_seconds * 1000:.0f} ms"
    run.note(
        f"Took snapshot {info.name}: {info.size_bytes / 2**20:.1f} MiB on the node "
        f"(of a {info.apparent_bytes / 2**20:.0f} MiB disk), copied in {info.copy_seconds * 1000:.0f} ms, {frozen}."
    )
    store_snapshots(run.server, run.engine)


def restore(run: Run) -> None:
    from . import jobs

    snap = str(_snapshot_param(run))
    if not Snapshot.objects.filter(server=run.server, name=snap).exists():
        raise jobs.Refused(f"the server has no snapshot {snap}")
    jobs._begin(run)
    run.checkpoint("before-engine")
    if jobs.init_watch is not None:  # its init ends here; a new one starts
        jobs.init_watch.discard(run.name)
    status = run.engine.snapshot_restore(run.name, snap)
    run.watch_init(status)
    run.checkpoint("after-engine")
    run.server.complete(run.operation.kind)
    run.note(f"Put snapshot {snap} back and started {run.name} (init pid {status.init_pid}).")
    jobs._refresh_best_effort(run)


def delete(run: Run) -> None:
    from .jobs import _begin

    snap = str(_snapshot_param(run))
    _begin(run)
    run.checkpoint("before-engine")
    run.engine.snapshot_delete(run.name, snap)  # a snapshot the node no longer has is deleted too
    run.checkpoint("after-engine")
    Snapshot.objects.filter(server=run.server, name=snap).delete()
    run.note(f"Deleted snapshot {snap}.")
    store_snapshots(run.server, run.engine)
