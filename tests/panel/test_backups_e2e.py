"""Backups end to end against the real engine, a real Redis and RQ's worker (drain): a busybox
server's page is backed up, the server deleted, and the backup restored into a new server that
answers with the same page at its new address; restore into the same server; the scheduled
backups and their retention; a full backup directory. The kill -9 tests are in
test_backups_faults.py."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from django.test import Client

from tests.engine.helpers import http_get as engine_http_get
from tests.panel_world import BRIDGE
from vservers import actions
from vservers.backups.schedule import schedule_pass
from vservers.models import Backup, BackupKind, BackupSchedule, OperationKind, OperationStatus, State, VirtualServer


def page(address: str, path: str) -> tuple[int, str]:
    """GET PATH from a server, only after `ip route get` names the tests' bridge."""
    return engine_http_get(address, path, bridge=BRIDGE)


def put_page(engine, server, path: str, text: str) -> None:
    engine.run(server.engine_name, ["/bin/sh", "-c", f"cat > /var/www/{path}"], input=text)


def last(server, kind):
    return server.operations.filter(kind=kind).order_by("-pk").first()


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_backup_restored_into_a_new_server_answers_with_the_same_page_at_its_new_address(world, provision, drain,
                                                                                          engine):
    server = provision("web")
    old_address = server.ip_list()[0]
    text = f"kept across servers {secrets.token_hex(8)}\n"
    put_page(engine, server, "kept.html", text)
    assert page(old_address, "/kept.html") == (200, text)

    alice = signed_in(world.alice)
    alice.post(f"/servers/{server.uuid}/backups/create/")
    drain()
    made = last(server, OperationKind.BACKUP_CREATE)
    assert made.status == OperationStatus.SUCCEEDED, made.error + made.detail
    backup = Backup.objects.get(server=server)
    assert backup.kind == BackupKind.MANUAL and backup.tenant == world.acme and backup.node == world.node
    assert backup.size_bytes > 0 and len(backup.sha256) == 64
    assert backup.manifest["template"] == "busybox"
    assert backup.name in made.output and "MB compressed" in made.output

    # The server goes; its backup stays, listed for the tenant with a way into a new server.
    alice.post(f"/servers/{server.uuid}/action/delete/")
    asked = alice.post(f"/servers/backups/{backup.uuid}/new-server/",
                       {"name": "reborn", "hostname": "reborn.acme.example", "plan": world.small.pk})
    assert asked.status_code == 302, asked.content.decode()[-2000:]
    new = VirtualServer.objects.get(name="reborn", tenant=world.acme)
    # Approved while the old server still holds its address: the new one gets another.
    restore = actions.approve(new, world.operator, check_quota=False)
    assert restore.kind == OperationKind.BACKUP_RESTORE
    drain()
    server.refresh_from_db()
    assert server.state == State.DELETED
    restore.refresh_from_db()
    assert restore.status == OperationStatus.SUCCEEDED, restore.error + "\n" + restore.detail
    new.refresh_from_db()
    assert new.state == State.RUNNING
    new_address = new.ip_list()[0]
    assert new_address != old_address
    from tests.panel_world import wait_for_http

    wait_for_http(new_address)
    assert page(new_address, "/kept.html") == (200, text)
    listing = alice.get("/servers/backups/")
    assert b"(deleted)" in listing.content  # the backup still names the server it was taken of

    # Deleting the backup of the deleted server: its node's next schedule pass deletes it.
    alice.post(f"/servers/backups/{backup.uuid}/delete/")
    assert backup.name in {info.name for info in engine.backup_list()}
    assert schedule_pass(world.node, datetime.now(UTC)).endswith(", 1 deleted")
    assert backup.name not in {info.name for info in engine.backup_list()}
    assert not Backup.objects.filter(pk=backup.pk).exists()


def test_a_backup_restored_into_its_own_server_brings_back_a_changed_page(world, provision, drain, engine):
    server = provision("web")
    address = server.ip_list()[0]
    put_page(engine, server, "mine.html", "before\n")
    alice = signed_in(world.alice)
    alice.post(f"/servers/{server.uuid}/backups/create/")
    drain()
    backup = Backup.objects.get(server=server)
    put_page(engine, server, "mine.html", "changed after the backup\n")
    put_page(engine, server, "later.html", "made after the backup\n")
    assert page(address, "/mine.html")[1] == "changed after the backup\n"

    alice.post(f"/servers/backups/{backup.uuid}/restore/")
    drain()
    restore = last(server, OperationKind.BACKUP_RESTORE)
    assert restore.status == OperationStatus.SUCCEEDED, restore.error + "\n" + restore.detail
    server.refresh_from_db()
    assert server.state == State.RUNNING
    from tests.panel_world import wait_for_http

    wait_for_http(address)
    assert page(address, "/mine.html") == (200, "before\n")
    assert page(address, "/later.html")[0] == 404


def test_scheduled_backups_are_queued_when_due_and_pruned_beyond_the_plan(world, provision, drain, engine):
    from datetime import time, timedelta

    world.small.backups_kept = 2
    world.small.save()
    server = provision("web")
    manual = Client()
    manual.force_login(world.alice)
    manual.post(f"/servers/{server.uuid}/backups/create/")
    drain()
    kept_by_hand = Backup.objects.get(server=server)
    schedule = BackupSchedule.objects.create(server=server, frequency="daily", time=time(3, 0),
                                             next_due=datetime(2026, 12, 7, 3, 0, tzinfo=UTC))
    made = []
    for day in range(3):
        now = datetime(2026, 12, 7 + day, 3, 0, 20, tzinfo=UTC)
        assert schedule_pass(world.node, now - timedelta(minutes=1)) == "0 backups queued, 0 skipped"
        assert schedule_pass(world.node, now) == "1 backups queued, 0 skipped"
        drain()
        operation = last(server, OperationKind.BACKUP_CREATE)
        assert operation.status == OperationStatus.SUCCEEDED, operation.error + operation.detail
        made.append(Backup.objects.filter(server=server, kind=BackupKind.SCHEDULED).latest("pk"))
    schedule.refresh_from_db()
    assert schedule.next_due == datetime(2026, 12, 10, 3, 0, tzinfo=UTC)
    # The oldest scheduled one is gone, archive and row; the two newest and the manual one stay.
    scheduled = set(Backup.objects.filter(server=server, kind=BackupKind.SCHEDULED).values_list("name", flat=True))
    assert scheduled == {made[1].name, made[2].name}
    assert Backup.objects.filter(pk=kept_by_hand.pk).exists()
    on_node = {info.name for info in engine.backup_list(server.engine_name)}
    assert on_node == {kept_by_hand.name, made[1].name, made[2].name}
    assert f"Pruned 1 scheduled backup beyond the plan's 2: {made[0].name}." in last(
        server, OperationKind.BACKUP_CREATE).output
