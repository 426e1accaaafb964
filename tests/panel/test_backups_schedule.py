"""The backup schedule (vservers.backups.schedule): when a schedule is due, and the pass that
queues scheduled backups, driven by the clock it is given. Rows only: the queue is recorded
(offline_world's `queued`); the backups themselves and retention run against the real engine
in test_backups_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from tests.locks import needs_row_locks, row_locked_elsewhere
from vservers.backups import actions as backup_actions
from vservers.backups.schedule import next_due, schedule_pass
from vservers.models import BackupSchedule, Operation, OperationKind, OperationStatus, State, VirtualServer


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def server(offline_world):
    w = offline_world
    made = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                        template=w.busybox, node=w.node, state=State.RUNNING)
    w.pool.allocate(made)
    return made


def test_a_daily_schedule_is_due_at_its_time_today_or_tomorrow():
    schedule = BackupSchedule(frequency="daily", time=time(3, 30))
    assert next_due(schedule, at("2026-12-06T02:00:00")) == at("2026-12-06T03:30:00")
    assert next_due(schedule, at("2026-12-06T03:30:00")) == at("2026-12-07T03:30:00")
    assert next_due(schedule, at("2026-12-31T23:59:00")) == at("2027-01-01T03:30:00")


def test_a_weekly_schedule_is_due_on_its_weekday():
    schedule = BackupSchedule(frequency="weekly", weekday=2, time=time(1, 0))  # Wednesdays
    # 2026-12-06 is a Sunday.
    assert next_due(schedule, at("2026-12-06T12:00:00")) == at("2026-12-09T01:00:00")
    assert next_due(schedule, at("2026-12-09T00:59:00")) == at("2026-12-09T01:00:00")
    assert next_due(schedule, at("2026-12-09T01:00:00")) == at("2026-12-16T01:00:00")


def _schedule(server, when: str, **fields) -> BackupSchedule:
    return BackupSchedule.objects.create(server=server, frequency="daily", time=time(3, 0), next_due=at(when),
                                         **fields)


def test_the_pass_queues_a_scheduled_backup_when_due_and_moves_on(offline_world, server):
    schedule = _schedule(server, "2026-12-06T03:00:00")
    assert schedule_pass(offline_world.node, at("2026-12-06T02:59:00")) == "0 backups queued, 0 skipped"
    assert not offline_world.queued

    assert schedule_pass(offline_world.node, at("2026-12-06T03:00:30")) == "1 backups queued, 0 skipped"
    [operation] = offline_world.queued
    assert (operation.kind, operation.params, operation.requested_by) == (
        OperationKind.BACKUP_CREATE, {"origin": "scheduled"}, None)
    schedule.refresh_from_db()
    assert schedule.last_queued == at("2026-12-06T03:00:30")
    assert schedule.next_due == at("2026-12-07T03:00:00")

    # The same minute again (a second worker, a pass run twice): nothing more.
    schedule_pass(offline_world.node, at("2026-12-06T03:00:40"))
    assert len(offline_world.queued) == 1


@pytest.mark.both_databases
def test_a_schedule_another_pass_holds_is_skipped_not_waited_for(transactional_db, offline_world, server):
    needs_row_locks()
    schedule = _schedule(server, "2026-12-06T03:00:00")
    with row_locked_elsewhere(BackupSchedule, schedule.pk):
        # Waiting for the lock would queue the backup here.
        assert schedule_pass(offline_world.node, at("2026-12-06T03:00:30")) == "0 backups queued, 0 skipped"
    assert not offline_world.queued
    assert schedule_pass(offline_world.node, at("2026-12-06T03:00:40")) == "1 backups queued, 0 skipped"
    assert len(offline_world.queued) == 1


def test_no_second_backup_while_one_is_queued_or_running(offline_world, server):
    Operation.objects.create(server=server, kind=OperationKind.BACKUP_CREATE, status=OperationStatus.RUNNING)
    schedule = _schedule(server, "2026-12-06T03:00:00")
    assert schedule_pass(offline_world.node, at("2026-12-06T03:01:00")) == "0 backups queued, 1 skipped"
    assert not offline_world.queued
    schedule.refresh_from_db()
    assert schedule.next_due == at("2026-12-07T03:00:00")  # skipped, not queued late


@pytest.mark.parametrize("state", [State.ERROR, State.RESTORING, State.DELETED])
def test_a_server_in_no_state_to_back_up_is_skipped(offline_world, server, state):
    VirtualServer.objects.filter(pk=server.pk).update(state=state)
    _schedule(server, "2026-12-06T03:00:00")
    assert schedule_pass(offline_world.node, at("2026-12-06T03:01:00")) == "0 backups queued, 1 skipped"
    assert not offline_world.queued


def test_disabled_schedules_and_plans_that_keep_none_queue_nothing(offline_world, server):
    _schedule(server, "2026-12-06T03:00:00", enabled=False)
    assert schedule_pass(offline_world.node, at("2026-12-06T04:00:00")) == "0 backups queued, 0 skipped"
    BackupSchedule.objects.filter(server=server).update(enabled=True)
    offline_world.small.backups_kept = 0
    offline_world.small.save()
    assert schedule_pass(offline_world.node, at("2026-12-06T04:00:00")) == "0 backups queued, 1 skipped"
    assert not offline_world.queued


def test_saving_a_schedule_sets_its_next_run(offline_world, server):
    saved = backup_actions.save_schedule(server, {"enabled": True, "frequency": "weekly", "weekday": 6,
                                                  "time": time(23, 15)})
    assert saved.next_due > datetime.now(UTC)
    assert saved.next_due.weekday() == 6 and (saved.next_due.hour, saved.next_due.minute) == (23, 15)
    off = backup_actions.save_schedule(server, {"enabled": False, "frequency": "daily", "time": time(1, 0)})
    assert off.pk == saved.pk and off.next_due is None
