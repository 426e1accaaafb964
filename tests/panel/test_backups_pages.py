"""The backups' pages: who may see and do what (a tenant never another tenant's backups: 404;
read-only members look but every POST is 403; operators everything), what the card and the
list show, and what each action queues and audits. Rows only (offline_world): the worker's
side runs against the real engine in test_backups_e2e.py."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry, Membership
from vservers.models import Backup, BackupSchedule, OperationKind, State, VirtualServer
from vservers.models.keep import BackupRestoreRequest

NAME = "vs-0123456789ab-20261206T030000Z.tar.zst"


@pytest.fixture
def w(offline_world, django_user_model):
    w = offline_world
    for tenant, name in ((w.acme, "acme-web"), (w.globex, "globex-web")):
        server = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                              template=w.busybox, node=w.node, state=State.RUNNING)
        w.pool.allocate(server)
        backup = Backup.objects.create(tenant=tenant, server=server, server_name=name, node=w.node,
                                       name=NAME.replace("0123", "acme" if tenant == w.acme else "0bex"),
                                       size_bytes=3 * 2**20, manifest={"template": "busybox", "bytes": 10 * 2**20})
        setattr(w, name.split("-")[0] + "_web", server)
        setattr(w, name.split("-")[0] + "_backup", backup)
    w.carol = django_user_model.objects.create_user("carol", "carol@acme.test", "carol password 1")
    Membership.objects.create(user=w.carol, tenant=w.acme, role=Membership.READONLY)
    return w


def backup_urls(backup) -> list[tuple[str, str]]:
    u = backup.uuid
    return [("get", f"/servers/backups/{u}/restore/"), ("post", f"/servers/backups/{u}/restore/"),
            ("get", f"/servers/backups/{u}/new-server/"), ("post", f"/servers/backups/{u}/new-server/"),
            ("post", f"/servers/backups/{u}/delete/"), ("post", f"/servers/backups/{u}/download/")]


def server_urls(server) -> list[tuple[str, str]]:
    return [("post", f"/servers/{server.uuid}/backups/create/"), ("post", f"/servers/{server.uuid}/backups/schedule/")]


def test_another_tenants_backups_are_not_found_anywhere(client, w):
    client.force_login(w.alice)
    for method, url in backup_urls(w.globex_backup) + server_urls(w.globex_web):
        assert getattr(client, method)(url).status_code == 404, (method, url)
    listing = client.get("/servers/backups/")
    assert listing.status_code == 200
    assert w.acme_backup.name.encode() in listing.content
    assert w.globex_backup.name.encode() not in listing.content and b"globex" not in listing.content
    assert not w.queued and not BackupSchedule.objects.exists()
    # The control: the same URLs reach globex's backup for bob.
    client.force_login(w.bob)
    assert client.get(f"/servers/backups/{w.globex_backup.uuid}/restore/").status_code == 200


def test_a_read_only_member_looks_but_may_not_act(client, w):
    client.force_login(w.carol)
    assert client.get("/servers/backups/").status_code == 200
    page = client.get(f"/servers/{w.acme_web.uuid}/")
    assert page.status_code == 200 and b'id="backups"' in page.content
    assert b"Back up now" not in page.content and b"Download" not in page.content
    for method, url in backup_urls(w.acme_backup) + server_urls(w.acme_web):
        if method == "post" or url.endswith("new-server/"):
            assert getattr(client, method)(url).status_code == 403, (method, url)
    assert not w.queued and not BackupSchedule.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="backup").exists()


def test_the_card_backs_up_now_restores_and_deletes_through_operations(client, w):
    client.force_login(w.alice)
    page = client.get(f"/servers/{w.acme_web.uuid}/")
    assert b"Back up now" in page.content and w.acme_backup.name.encode() in page.content
    client.post(f"/servers/{w.acme_web.uuid}/backups/create/")
    confirm = client.get(f"/servers/backups/{w.acme_backup.uuid}/restore/")
    assert b"all its files are replaced" in confirm.content
    client.post(f"/servers/backups/{w.acme_backup.uuid}/restore/")
    client.post(f"/servers/backups/{w.acme_backup.uuid}/delete/")
    assert [(op.kind, op.params) for op in w.queued] == [
        (OperationKind.BACKUP_CREATE, {}),
        (OperationKind.BACKUP_RESTORE, {"backup": str(w.acme_backup.uuid)}),
        (OperationKind.BACKUP_DELETE, {"backup": str(w.acme_backup.uuid)}),
    ]
    entries = AuditEntry.objects.filter(actor=w.alice, action__startswith="server.").order_by("pk")
    actions = list(entries.values_list("action", flat=True))
    assert actions == ["server.backup_create", "server.backup_restore", "server.backup_delete"]


def test_an_operator_acts_on_any_tenants_backups_from_his_server_page(client, w):
    client.force_login(w.operator)
    page = client.get(f"/operator/servers/{w.globex_web.uuid}/")
    assert page.status_code == 200 and w.globex_backup.name.encode() in page.content
    answer = client.post(f"/servers/{w.globex_web.uuid}/backups/create/", {"area": "operator"})
    assert answer["Location"] == f"/operator/servers/{w.globex_web.uuid}/#backups"
    client.post(f"/servers/backups/{w.globex_backup.uuid}/delete/", {"area": "operator"})
    assert [op.kind for op in w.queued] == [OperationKind.BACKUP_CREATE, OperationKind.BACKUP_DELETE]
    listing = client.get("/servers/backups/")
    assert w.globex_backup.name.encode() in listing.content and w.acme_backup.name.encode() in listing.content


def test_the_schedule_form_says_utc_and_saves(client, w):
    client.force_login(w.alice)
    page = client.get(f"/servers/{w.acme_web.uuid}/")
    assert b"Time of day (UTC)" in page.content
    client.post(f"/servers/{w.acme_web.uuid}/backups/schedule/",
                {"enabled": "on", "frequency": "weekly", "weekday": "4", "time": "02:30"})
    schedule = BackupSchedule.objects.get(server=w.acme_web)
    assert (schedule.enabled, schedule.frequency, schedule.weekday, f"{schedule.time:%H:%M}") == (
        True, "weekly", 4, "02:30")
    assert schedule.next_due.weekday() == 4
    assert AuditEntry.objects.filter(action="server.backup_schedule", actor=w.alice).count() == 1
    page = client.get(f"/servers/{w.acme_web.uuid}/")
    assert b"weekly on Friday at 02:30 UTC" in page.content


def test_a_plan_that_keeps_no_backups_refuses_a_schedule(client, w):
    w.small.backups_kept = 0
    w.small.save()
    client.force_login(w.alice)
    answer = client.post(f"/servers/{w.acme_web.uuid}/backups/schedule/",
                         {"enabled": "on", "frequency": "daily", "weekday": "0", "time": "02:30"}, follow=True)
    assert b"keeps no scheduled backups" in answer.content
    assert not BackupSchedule.objects.exists()


def test_a_backup_of_a_deleted_server_goes_into_a_new_one_approved_on_its_node(client, w):
    VirtualServer.objects.filter(pk=w.acme_web.pk).update(state=State.DELETED)
    w.acme_web.addresses.all().delete()
    client.force_login(w.alice)
    listing = client.get("/servers/backups/")
    assert b"(deleted)" in listing.content and b"New server from it" in listing.content
    refused = client.post(f"/servers/backups/{w.acme_backup.uuid}/restore/")
    assert refused["Location"] == f"/servers/backups/{w.acme_backup.uuid}/new-server/"
    small_disk = client.post(f"/servers/backups/{w.acme_backup.uuid}/new-server/",
                             {"name": "reborn", "hostname": "reborn.acme.test", "plan": w.small.pk})
    assert small_disk.status_code == 302  # 10 MB of files fit the small plan's disk
    server = VirtualServer.objects.get(name="reborn")
    assert server.state == State.REQUESTED and server.template == w.busybox
    assert BackupRestoreRequest.objects.get(server=server).backup == w.acme_backup

    from vservers import actions

    operation = actions.approve(server, w.operator)
    assert (operation.kind, operation.params) == (OperationKind.BACKUP_RESTORE, {"backup": str(w.acme_backup.uuid)})
    server.refresh_from_db()
    assert server.state == State.APPROVED and server.node == w.node and server.ip_list()


def test_a_backup_restored_into_a_new_server_needs_a_plan_with_room_for_its_files(client, w):
    Backup.objects.filter(pk=w.acme_backup.pk).update(manifest={"template": "busybox", "bytes": 5000 * 2**20})
    client.force_login(w.alice)
    answer = client.post(f"/servers/backups/{w.acme_backup.uuid}/new-server/",
                         {"name": "reborn", "hostname": "reborn.acme.test", "plan": w.small.pk})
    assert answer.status_code == 200 and b"choose a plan with more disk" in answer.content
    assert not VirtualServer.objects.filter(name="reborn").exists()


def test_progress_is_written_to_the_running_operation_about_once_a_second(w):
    from vservers.backups.jobs import ProgressWriter
    from vservers.jobs import Run
    from vservers.models import Operation, OperationStatus

    operation = Operation.objects.create(server=w.acme_web, kind=OperationKind.BACKUP_CREATE,
                                         status=OperationStatus.RUNNING)
    writer = ProgressWriter(Run(operation, engine=None), "Backing up")  # the writer never calls the engine
    total = 300 * 2**20
    for step in range(1, 1001):
        writer(step * total // 1000, total)
    operation.refresh_from_db()
    assert operation.output == "Backing up: 100 % (300.0 of 300.0 MB)"
    # The first call writes, then at most one a second, and the last one: a thousand calls in
    # well under a few seconds make a handful of writes, not a thousand.
    assert 2 <= writer.writes <= 5


def test_a_backup_of_a_deleted_server_is_marked_for_its_node_to_delete(client, w):
    VirtualServer.objects.filter(pk=w.acme_web.pk).update(state=State.DELETED)
    client.force_login(w.alice)
    answer = client.post(f"/servers/backups/{w.acme_backup.uuid}/delete/")
    assert answer["Location"] == "/servers/backups/"
    assert not w.queued  # nothing runs on a deleted server (the transitions table)
    w.acme_backup.refresh_from_db()
    assert w.acme_backup.delete_requested is not None
    assert w.acme_backup.name.encode() not in client.get("/servers/backups/").content
    assert client.get(f"/servers/backups/{w.acme_backup.uuid}/restore/").status_code == 404
    assert AuditEntry.objects.filter(action="backup.delete", actor=w.alice).count() == 1
