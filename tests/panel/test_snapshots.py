"""Snapshots through the panel's pages and a real worker, on a real busybox server: take
one, change the server, put it back (the file is back, the added one gone, the server
running and answering), delete it; the rows follow what the node has."""

from __future__ import annotations

from django.urls import reverse

from accounts.models import AuditEntry
from tests.panel_world import wait_for_http
from vservers.actions import request_operation
from vservers.jobs_snapshots import store_snapshots
from vservers.models import Operation, OperationKind, OperationStatus, Snapshot, State


def last(kind: str) -> Operation:
    operation = Operation.objects.filter(kind=kind).latest("pk")
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output
    return operation


def test_take_change_restore_and_delete_through_the_worker(world, provision, drain, client) -> None:
    world.small.snapshots_max = 2
    world.small.save()
    server = provision("web")
    engine, name = world.engine, server.engine_name
    assert engine.run(name, ["sh", "-c", "echo one > /root/mark"]).returncode == 0
    client.force_login(world.alice)

    client.post(reverse("snapshot_take", args=[server.uuid]), {"name": "before", "label": "first one"})
    drain()
    output = last(OperationKind.SNAPSHOT_CREATE).output
    assert "Took snapshot before" in output and "frozen for" in output
    row = Snapshot.objects.get(server=server, name="before")
    assert row.label == "first one" and row.created_by == world.alice
    assert row.size_bytes == engine.snapshot_list(name)[0].size_bytes > 0
    assert row.freeze_ms is not None and row.copy_ms is not None
    server.refresh_from_db()
    assert server.state == State.RUNNING
    wait_for_http(server.ip_list()[0])

    assert engine.run(name, ["sh", "-c", "echo two > /root/mark; echo new > /root/added"]).returncode == 0
    page = client.get(reverse("server_detail", args=[server.uuid])).content.decode()
    assert "before" in page and "first one" in page
    client.post(reverse("snapshot_restore", args=[server.uuid, "before"]), {"confirm": "on"})
    drain()
    last(OperationKind.SNAPSHOT_RESTORE)
    server.refresh_from_db()
    assert server.state == State.RUNNING
    wait_for_http(server.ip_list()[0])
    assert engine.run(name, ["cat", "/root/mark"]).stdout == "one\n"
    assert engine.run(name, ["ls", "/root"]).stdout.split() == ["mark"]

    client.post(reverse("snapshot_delete", args=[server.uuid, "before"]))
    drain()
    last(OperationKind.SNAPSHOT_DELETE)
    assert not Snapshot.objects.filter(server=server).exists()
    assert engine.snapshot_list(name) == []
    actions = sorted(AuditEntry.objects.filter(action__startswith="server.snapshot").values_list("action", flat=True))
    assert actions == ["server.snapshot_create", "server.snapshot_delete", "server.snapshot_restore"]

    # One taken on the node by another operation shows up.
    engine.snapshot_create(name, "by-engine")
    assert [s.name for s in store_snapshots(server, engine)] == ["by-engine"]
    engine.snapshot_delete(name, "by-engine")
    assert store_snapshots(server, engine) == []

    # A snapshot asked for without a name (a reinstall's "snapshot first" asks so) is named by
    # the engine from the time.
    request_operation(server, OperationKind.SNAPSHOT_CREATE, world.alice)
    drain()
    last(OperationKind.SNAPSHOT_CREATE)
    (row,) = Snapshot.objects.filter(server=server)
    assert row.name.startswith("s20") and [s.name for s in engine.snapshot_list(name)] == [row.name]
