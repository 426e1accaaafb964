"""Backups and restores whose worker is killed (SIGKILL) in the middle, and a backup
directory that is full.

A real worker process (`manage.py nodeworker`, tests/panel/faults.py) stops itself at a named
point, of the panel's job (VSERVERS_TEST_FAULT, vservers.jobs.Run.checkpoint) or inside the
engine's archive writing or restore (VSERVER_TEST_FAULT, vservers.engine.faults), and the test
kills it there. Then a new worker settles the operation (failed, "interrupted"), the server
runs, its files are whole (a backup: as they were; a restore: the retry puts the backup back),
another backup or restore succeeds, and nothing is left in the kernel (mounts, loop devices,
frozen cgroups, processes) once the server is deleted.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.engine.helpers import http_get
from tests.panel import faults
from tests.panel.faults import assert_tells_the_truth, kernel_state, server_leaks, wait_until
from tests.panel_world import BRIDGE, wait_for_http
from vservers.actions import request_operation
from vservers.models import Backup, Operation, OperationKind, OperationStatus, State
from vservers.models.operations import FINISHED, INTERRUPTED

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers


def finished(operation: Operation) -> Operation | None:
    operation.refresh_from_db()
    return operation if operation.status in FINISHED else None


def put_page(engine, server, path: str, text: str) -> None:
    engine.run(server.engine_name, ["/bin/sh", "-c", f"cat > /var/www/{path}"], input=text)


def page(server, path: str) -> tuple[int, str]:
    address = server.ip_list()[0]
    wait_for_http(address)
    return http_get(address, path, bridge=BRIDGE)


def delete_and_check_nothing_is_left(server, drain, engine, uid_bases) -> None:
    server.refresh_from_db()
    if server.state != State.DELETED:
        request_operation(server, OperationKind.DELETE, None)
        drain()
        server.refresh_from_db()
        assert server.state == State.DELETED
    assert kernel_state(engine, server) == "missing"
    assert not server_leaks(uid_bases), server_leaks(uid_bases)


def kill_at(workers, kind_fault: str = "", engine_fault: str = ""):
    """A worker that stops itself at the named point, killed there; then a new worker."""
    env = {"VSERVER_TEST_FAULT": engine_fault} if engine_fault else None
    first = workers(fault=kind_fault, env=env)
    first.wait_paused()
    return first


BACKUP_POINTS = [("backup_create:before-engine", ""), ("", "backup:writing"), ("backup_create:after-engine", "")]


@pytest.mark.parametrize(("panel_point", "engine_point"), BACKUP_POINTS,
                         ids=[p or e for p, e in BACKUP_POINTS])
def test_a_worker_killed_during_a_backup_leaves_the_server_running_and_whole(
        fault_world, provision, drain, workers, panel_point, engine_point):
    engine = fault_world.engine
    server = provision("web")
    put_page(engine, server, "kept.html", "whole\n")
    uid_bases = [engine.spec(server.engine_name).uid_base]
    operation = request_operation(server, OperationKind.BACKUP_CREATE, None)

    first = kill_at(workers, panel_point, engine_point)
    operation.refresh_from_db()
    assert operation.status == OperationStatus.RUNNING
    assert first.kill() == []

    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert (operation.status, operation.error) == (OperationStatus.FAILED, INTERRUPTED)
    assert_tells_the_truth(engine, server)
    assert server.state == State.RUNNING
    assert page(server, "/kept.html") == (200, "whole\n")
    # No half archive is listed (a kill after the engine's part leaves an archive without
    # its row: the retry makes another one).
    listed = {info.name for info in engine.backup_list(server.engine_name)}
    assert set(Backup.objects.filter(server=server).values_list("name", flat=True)) <= listed

    retry = request_operation(server, OperationKind.BACKUP_CREATE, None)
    wait_until(lambda: finished(retry), lambda: f"the retry:\n{second.log_tail()}")
    assert retry.status == OperationStatus.SUCCEEDED, retry.error + "\n" + retry.detail
    assert Backup.objects.filter(server=server).count() >= 1
    second.stop()
    delete_and_check_nothing_is_left(server, drain, engine, uid_bases)


RESTORE_POINTS = [("backup_restore:before-engine", ""), ("", "backup-restore:extracted"),
                  ("backup_restore:after-engine", "")]


@pytest.mark.parametrize(("panel_point", "engine_point"), RESTORE_POINTS,
                         ids=[p or e for p, e in RESTORE_POINTS])
def test_a_worker_killed_during_a_restore_leaves_a_server_that_starts_and_one_retry_restores_it(
        fault_world, provision, drain, workers, panel_point, engine_point):
    engine = fault_world.engine
    # Not autostart: the reconciler would start it by itself after the kill, racing the checks.
    server = provision("web", autostart=False)
    put_page(engine, server, "kept.html", "from the backup\n")
    request_operation(server, OperationKind.BACKUP_CREATE, None)
    drain()
    backup = Backup.objects.get(server=server)
    put_page(engine, server, "kept.html", "changed since\n")
    uid_bases = [engine.spec(server.engine_name).uid_base]
    operation = request_operation(server, OperationKind.BACKUP_RESTORE, None, backup=str(backup.uuid))

    first = kill_at(workers, panel_point, engine_point)
    operation.refresh_from_db()
    assert operation.status == OperationStatus.RUNNING
    server.refresh_from_db()
    assert server.state == State.RESTORING
    if engine_point:
        # The files are unpacked: the engine's last progress call is on the operation, live.
        assert operation.output.startswith("Restoring: 100 % ("), operation.output
    assert first.kill() == []

    second = workers()
    wait_until(lambda: finished(operation), lambda: f"the operation to be settled:\n{second.log_tail()}")
    assert (operation.status, operation.error) == (OperationStatus.FAILED, INTERRUPTED)
    assert_tells_the_truth(engine, server)  # not stuck "restoring"; the kernel's state
    # One retry (the tenant's) restores it, whatever the kill left.
    retry = request_operation(server, OperationKind.BACKUP_RESTORE, None, backup=str(backup.uuid))
    wait_until(lambda: finished(retry), lambda: f"the retry:\n{second.log_tail()}")
    assert retry.status == OperationStatus.SUCCEEDED, retry.error + "\n" + retry.detail
    server.refresh_from_db()
    assert server.state == State.RUNNING
    assert page(server, "/kept.html") == (200, "from the backup\n")
    second.stop()
    delete_and_check_nothing_is_left(server, drain, engine, uid_bases)


@pytest.fixture
def tiny_backup_dir(engine):
    """The engine's backup directory on a tmpfs of 1 MiB, so that a backup fills it; unmounted
    at the end (what was in the directory before is hidden meanwhile, not touched)."""
    directory = engine.config.backup_dir
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "vservers-test-backups", str(directory)],
                   check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_backup_directory_fails_plainly_for_the_tenant_and_keeps_the_previous_backups(
        world, provision, drain, engine, tiny_backup_dir):
    from django.test import Client

    server = provision("web")
    # A first backup that fits: 1 MiB holds a fresh busybox server's archive.
    request_operation(server, OperationKind.BACKUP_CREATE, None)
    drain()
    first = Backup.objects.get(server=server)
    # Fill what is left, then back up again.
    put_page(engine, server, "big.bin", "")
    engine.run(server.engine_name, ["/bin/sh", "-c", "head -c 3000000 /dev/urandom > /var/www/big.bin"])
    failed = request_operation(server, OperationKind.BACKUP_CREATE, None)
    drain()
    failed.refresh_from_db()
    assert failed.status == OperationStatus.FAILED
    assert failed.error == ("The backup could not be made; the previous backups are kept; "
                            "the operator has been told.")
    assert "full" in failed.detail  # the engine's own words, for operators
    assert str(tiny_backup_dir) not in failed.error
    assert list(Backup.objects.filter(server=server)) == [first]
    assert {info.name for info in engine.backup_list(server.engine_name)} == {first.name}
    server.refresh_from_db()
    assert server.state == State.RUNNING

    tenant = Client()
    tenant.force_login(world.alice)
    shown = tenant.get(f"/servers/{server.uuid}/").content.decode()
    assert "The backup could not be made; the previous backups are kept" in shown
    assert "Details for operators" not in shown and str(tiny_backup_dir) not in shown
    operator = Client()
    operator.force_login(world.operator)
    assert str(tiny_backup_dir) in operator.get(f"/operator/servers/{server.uuid}/").content.decode()
