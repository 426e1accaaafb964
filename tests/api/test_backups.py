"""The backups' API: a tenant's token never reaches another tenant's backups (404) and lists
none of them; a read-only member's token, and a read-only token, write nothing (403);
operators see every tenant's. What each write queues (rows only: the worker's side runs in
tests/panel/test_backups_e2e.py)."""

from __future__ import annotations

import pytest

from accounts.models import Membership
from vservers.models import Backup, BackupSchedule, OperationKind, State, VirtualServer
from vservers.models.keep import BackupRestoreRequest


@pytest.fixture
def w(offline_world, api, django_user_model):
    w = offline_world
    for tenant, name in ((w.acme, "acme-web"), (w.globex, "globex-web")):
        server = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                              template=w.busybox, node=w.node, state=State.RUNNING)
        w.pool.allocate(server)
        backup = Backup.objects.create(tenant=tenant, server=server, server_name=name, node=w.node,
                                       name=f"vs-{name[0]}123456789ab-20261206T030000Z.tar.zst",
                                       size_bytes=2**20, sha256="a" * 64,
                                       manifest={"template": "busybox", "template_version": "v", "bytes": 2**20})
        setattr(w, name.split("-")[0] + "_web", server)
        setattr(w, name.split("-")[0] + "_backup", backup)
    w.carol = django_user_model.objects.create_user("carol", "carol@acme.test", "carol password 1")
    Membership.objects.create(user=w.carol, tenant=w.acme, role=Membership.READONLY)
    w.alice_api, w.carol_api, w.operator_api = api(w.alice), api(w.carol), api(w.operator)
    w.alice_read_api = api(w.alice, scope="read")
    return w


def writes(backup, server) -> list[tuple[str, str, dict]]:
    b, s = f"/api/v1/backups/{backup.uuid}", f"/api/v1/servers/{server.uuid}"
    return [("post", f"{b}/restore/", {}), ("post", f"{b}/delete/", {}), ("post", f"{b}/download/", {}),
            ("post", f"{b}/new-server/", {"name": "x1", "hostname": "x1.test", "plan": "small"}),
            ("post", f"{s}/backups/", {}),
            ("put", f"{s}/backup-schedule/", {"enabled": True, "frequency": "daily", "time": "03:00"})]


def test_another_tenants_backups_are_404_and_never_listed(w):
    for method, url, data in writes(w.globex_backup, w.globex_web):
        assert getattr(w.alice_api, method)(url, data, format="json").status_code == 404, url
    for url in (f"/api/v1/backups/{w.globex_backup.uuid}/", f"/api/v1/servers/{w.globex_web.uuid}/backups/",
                f"/api/v1/servers/{w.globex_web.uuid}/backup-schedule/"):
        assert w.alice_api.get(url).status_code == 404, url
    listed = w.alice_api.get("/api/v1/backups/").json()["results"]
    assert [b["uuid"] for b in listed] == [str(w.acme_backup.uuid)]
    assert not w.queued and not BackupSchedule.objects.exists() and not BackupRestoreRequest.objects.exists()
    # The control: the operator reaches both tenants' backups.
    everything = w.operator_api.get("/api/v1/backups/").json()["results"]
    assert {b["uuid"] for b in everything} == {str(w.acme_backup.uuid), str(w.globex_backup.uuid)}
    assert w.operator_api.get(f"/api/v1/backups/{w.globex_backup.uuid}/").status_code == 200


@pytest.mark.parametrize("who", ["carol_api", "alice_read_api"])
def test_read_only_members_and_tokens_write_nothing(w, who):
    client = getattr(w, who)
    assert client.get(f"/api/v1/servers/{w.acme_web.uuid}/backups/").status_code == 200
    for method, url, data in writes(w.acme_backup, w.acme_web):
        assert getattr(client, method)(url, data, format="json").status_code == 403, url
    assert not w.queued and not BackupSchedule.objects.exists() and not BackupRestoreRequest.objects.exists()


def test_a_tenant_backs_up_restores_schedules_and_deletes(w):
    made = w.alice_api.post(f"/api/v1/servers/{w.acme_web.uuid}/backups/")
    assert made.status_code == 202 and made.json()["kind"] == OperationKind.BACKUP_CREATE
    restore = w.alice_api.post(f"/api/v1/backups/{w.acme_backup.uuid}/restore/")
    assert restore.status_code == 202 and restore.json()["kind"] == OperationKind.BACKUP_RESTORE
    schedule = w.alice_api.put(f"/api/v1/servers/{w.acme_web.uuid}/backup-schedule/",
                               {"enabled": True, "frequency": "weekly", "weekday": 6, "time": "04:45"}, format="json")
    assert schedule.status_code == 200, schedule.json()
    assert schedule.json()["time"] == "04:45" and schedule.json()["backups_kept"] == w.small.backups_kept
    assert BackupSchedule.objects.get(server=w.acme_web).next_due.weekday() == 6
    deleted = w.alice_api.post(f"/api/v1/backups/{w.acme_backup.uuid}/delete/")
    assert deleted.status_code == 202
    assert [op.kind for op in w.queued] == [OperationKind.BACKUP_CREATE, OperationKind.BACKUP_RESTORE,
                                            OperationKind.BACKUP_DELETE]
    detail = w.alice_api.get(f"/api/v1/backups/{w.acme_backup.uuid}/").json()
    assert (detail["server"], detail["template"], detail["size_bytes"]) == (str(w.acme_web.uuid), "busybox", 2**20)


def test_a_new_server_from_a_backup_is_requested_and_a_busy_server_is_409(w):
    asked = w.alice_api.post(f"/api/v1/backups/{w.acme_backup.uuid}/new-server/",
                             {"name": "clone", "hostname": "clone.acme.test", "plan": "small"}, format="json")
    assert asked.status_code == 201, asked.json()
    server = VirtualServer.objects.get(uuid=asked.json()["uuid"])
    assert server.state == State.REQUESTED and server.restore_request.backup == w.acme_backup
    VirtualServer.objects.filter(pk=w.acme_web.pk).update(state=State.RESTORING)
    busy = w.alice_api.post(f"/api/v1/backups/{w.acme_backup.uuid}/restore/")
    assert busy.status_code == 409, busy.json()
