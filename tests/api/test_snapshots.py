"""Snapshots through the API: list, take, restore, delete; bad names (400), the plan's limit
(409 with the reason), and another tenant's snapshots not found (404). The rules are
vservers.snapshot_actions' (tests/panel/test_snapshots_actions.py)."""

from __future__ import annotations

import pytest

from vservers.models import Operation, OperationKind, Snapshot, State, VirtualServer

MIB = 2**20


@pytest.fixture
def w(offline_world, api):
    w = offline_world
    w.small.snapshots_max = 2
    w.small.save()

    def server(tenant, name):
        made = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.RUNNING)
        w.pool.allocate(made)
        return made

    w.web = server(w.acme, "web")
    w.theirs = server(w.globex, "secret-web")
    Snapshot.objects.create(server=w.theirs, name="theirs", size_bytes=5 * MIB)
    w.alice_api = api(w.alice)
    return w


def test_the_api_lists_takes_restores_and_deletes(w):
    Snapshot.objects.create(server=w.web, name="one", size_bytes=2 * MIB)
    api = w.alice_api
    base = f"/api/v1/servers/{w.web.uuid}/snapshots/"
    listed = api.get(base).json()["results"]
    assert [(s["name"], s["size_bytes"]) for s in listed] == [("one", 2 * MIB)]
    assert set(listed[0]) == {"name", "label", "created", "size_bytes", "freeze_ms", "copy_ms"}
    assert api.get(f"{base}one/").json()["name"] == "one"
    response = api.post(base, {"name": "two", "label": "api"}, format="json")
    assert response.status_code == 202 and response.json()["kind"] == "snapshot_create"
    assert api.post(f"{base}one/restore/").status_code == 202
    assert api.delete(f"{base}one/").status_code == 202
    # Past the plan's limit (one kept, one asked for): 409 with the reason.
    response = api.post(base, {}, format="json")
    assert response.status_code == 409 and "as many as its plan small keeps" in response.json()["detail"]
    assert [op.kind for op in w.queued] == ["snapshot_create", "snapshot_restore", "snapshot_delete"]


def test_bad_names_are_refused_with_400(w):
    base = f"/api/v1/servers/{w.web.uuid}/snapshots/"
    response = w.alice_api.post(base, {"name": "Bad Name"}, format="json")
    assert response.status_code == 400 and "name" in response.json()["fields"]
    Snapshot.objects.create(server=w.web, name="taken", size_bytes=MIB)
    assert w.alice_api.post(base, {"name": "taken"}, format="json").status_code == 400
    assert w.alice_api.get(f"{base}Bad%20Name/").status_code == 404
    assert not Operation.objects.filter(kind=OperationKind.SNAPSHOT_CREATE).exists()


def test_another_tenants_snapshots_are_not_found(w):
    api = w.alice_api
    base = f"/api/v1/servers/{w.theirs.uuid}/snapshots/"
    assert api.get(base).status_code == 404
    assert api.post(base, {}, format="json").status_code == 404
    assert api.get(f"{base}theirs/").status_code == 404
    assert api.delete(f"{base}theirs/").status_code == 404
    assert api.post(f"{base}theirs/restore/").status_code == 404
    # Nor another server's snapshot through one's own server.
    own = f"/api/v1/servers/{w.web.uuid}/snapshots/theirs/"
    assert api.get(own).status_code == 404 and api.post(f"{own}restore/").status_code == 404
    assert w.queued == []
    assert Snapshot.objects.filter(name="theirs").exists()
