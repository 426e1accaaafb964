"""Snapshots in the panel without a node (vservers.snapshot_actions and the card's views):
the plan's limit, the disk quota with snapshots counted, names, the confirmation of a
restore, and that nobody reaches another tenant's snapshots. The API's side is in
tests/api/test_snapshots.py; the engine's part, and the whole journey through a real worker,
in tests/engine/test_snapshots.py and tests/panel/test_snapshots.py."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditEntry
from vservers import actions, snapshot_actions
from vservers.models import Operation, OperationKind, Snapshot, State, VirtualServer
from vservers.views.tenant.display import quota_meters

MIB = 2**20


@pytest.fixture
def w(offline_world):
    w = offline_world
    w.small.snapshots_max = 2
    w.small.save()
    w.acme.max_disk_mb = 4096
    w.acme.save()

    def server(tenant, name):
        made = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.RUNNING,
                                            disk_used_bytes=10 * MIB)
        w.pool.allocate(made)
        return made

    w.web = server(w.acme, "web")
    w.theirs = server(w.globex, "secret-web")
    Snapshot.objects.create(server=w.theirs, name="theirs", size_bytes=5 * MIB)
    return w


def snap(server, name, size_mb=1):
    return Snapshot.objects.create(server=server, name=name, size_bytes=size_mb * MIB)


def test_a_snapshot_is_queued_with_a_name_from_the_time(w):
    operation = snapshot_actions.take(w.web, w.alice, label="  before   the upgrade ")
    assert operation.kind == OperationKind.SNAPSHOT_CREATE
    assert operation.params["label"] == "before the upgrade"
    assert operation.params["snapshot"].startswith("s") and len(operation.params["snapshot"]) == 16
    assert w.queued == [operation]
    # Asked for again while it waits: a second one, with its own name (not the same request).
    second = snapshot_actions.take(w.web, w.alice, name="mine")
    assert second.params["snapshot"] == "mine"


def test_the_plans_limit_refuses_the_next_one_and_names_one_to_delete(w):
    snap(w.web, "first")
    snapshot_actions.take(w.web, w.alice)  # pending: counts as the second
    with pytest.raises(actions.ActionRefused, match=r"web has 2 snapshots, as many as its plan small keeps: "
                                                    r"delete one first \(the oldest is first\)"):
        snapshot_actions.take(w.web, w.alice)
    w.small.snapshots_max = 0
    w.small.save()
    w.web.refresh_from_db()
    with pytest.raises(actions.ActionRefused, match="the plan small includes no snapshots"):
        snapshot_actions.take(w.web, w.alice)


def test_snapshots_count_against_the_disk_quota_and_are_shown(w):
    # small's disk is 1024 MB (offline_plans); 4096 MB of quota: 3072 left before snapshots.
    snap(w.web, "big", size_mb=3065)
    assert snapshot_actions.disk_use(w.acme) == {"disks_mb": 1024, "snapshots_mb": 3065, "total_mb": 4089,
                                                 "max_mb": 4096}
    with pytest.raises(actions.ActionRefused, match=r"a snapshot of about 10 MB would bring your disk use to "
                                                    r"4099 MB of at most 4096 MB \(server disks 1024 MB, "
                                                    r"snapshots 3065 MB\)"):
        snapshot_actions.take(w.web, w.alice)
    disk = next(m for m in quota_meters(w.acme) if m.label == "Disk")
    assert disk.used == "4089 MB (3065 MB snapshots)" and disk.percent == 100
    # A new server's disk meets the snapshots too.
    assert actions.quota_problems(w.acme, w.small) == ["disk would add up to 5113 MB of at most 4096 MB"]
    # Another tenant's snapshots are not acme's.
    assert snapshot_actions.snapshot_mb(w.globex) == 5


def test_bad_names_are_refused_by_the_action_and_the_form(w, client):
    for bad in ("Upper", "a b", "../x", "-x", "x" * 33):
        with pytest.raises(actions.ActionRefused, match="invalid snapshot name"):
            snapshot_actions.take(w.web, w.alice, name=bad)
    client.force_login(w.alice)
    response = client.post(reverse("snapshot_take", args=[w.web.uuid]), {"name": "../evil"}, follow=True)
    assert "Invalid snapshot name" in response.content.decode()
    assert not Operation.objects.filter(kind=OperationKind.SNAPSHOT_CREATE).exists()


def test_the_card_takes_restores_with_a_confirmation_and_deletes(w, client):
    snap(w.web, "before", size_mb=3)
    client.force_login(w.alice)
    page = client.get(reverse("server_detail", args=[w.web.uuid])).content.decode()
    assert 'id="snapshots"' in page and "before" in page and "1 of 2 the plan keeps" in page
    assert "3.0\xa0MB on the node" in page

    restore = reverse("snapshot_restore", args=[w.web.uuid, "before"])
    response = client.post(restore, follow=True)  # no confirmation
    assert "tick the box to confirm" in response.content.decode()
    assert not Operation.objects.filter(kind=OperationKind.SNAPSHOT_RESTORE).exists()
    client.post(restore, {"confirm": "on"})
    client.post(reverse("snapshot_delete", args=[w.web.uuid, "before"]))
    client.post(reverse("snapshot_take", args=[w.web.uuid]), {"label": "nightly"})
    kinds = [(op.kind, op.params.get("snapshot")) for op in w.queued]
    assert kinds[:2] == [(OperationKind.SNAPSHOT_RESTORE, "before"), (OperationKind.SNAPSHOT_DELETE, "before")]
    assert kinds[2][0] == OperationKind.SNAPSHOT_CREATE
    audited = list(AuditEntry.objects.filter(action__startswith="server.snapshot").values_list("action", flat=True))
    assert sorted(audited) == ["server.snapshot_create", "server.snapshot_delete", "server.snapshot_restore"]


def test_the_operator_page_has_the_card_and_acts_for_the_tenant(w, client):
    snap(w.web, "ops")
    client.force_login(w.operator)
    page = client.get(reverse("op_server_detail", args=[w.web.uuid])).content.decode()
    assert 'id="snapshots"' in page and reverse("op_snapshot_restore", args=[w.web.uuid, "ops"]) in page
    response = client.post(reverse("op_snapshot_take", args=[w.web.uuid]), {"name": "by-ops"})
    assert response.status_code == 302 and response["Location"].endswith("#snapshots")
    assert w.queued[-1].params["snapshot"] == "by-ops" and w.queued[-1].requested_by == w.operator


def test_nobody_reaches_another_tenants_snapshots(w, client):
    client.force_login(w.alice)
    theirs = w.theirs.uuid
    for url in (
        reverse("snapshot_take", args=[theirs]),
        reverse("snapshot_restore", args=[theirs, "theirs"]),
        reverse("snapshot_delete", args=[theirs, "theirs"]),
    ):
        assert client.post(url, {"confirm": "on"}).status_code == 404
    # Nor another server's snapshot through one's own server.
    assert client.post(reverse("snapshot_delete", args=[w.web.uuid, "theirs"])).status_code == 404
    assert w.queued == []
    assert Snapshot.objects.filter(name="theirs").exists()

