"""The table of a server's life (vservers.models.transitions), walked whole: every kind of
operation from every state, as the worker carries it out (VirtualServer.begin/complete)."""

from __future__ import annotations

import pytest

from accounts.models import Tenant
from vservers.models import (
    GUEST_KINDS,
    IN_PROGRESS,
    TERMINAL,
    TRANSITIONS,
    OnFailure,
    OperationKind,
    Plan,
    State,
    Template,
    VirtualServer,
)
from vservers.models.transitions import interrupted

ALL_STATES = [s.value for s in State]


@pytest.fixture
def make(db):
    tenant = Tenant.objects.create(name="Acme", slug="acme")
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    template = Template.objects.create(name="busybox", display_name="BusyBox")

    def make(state: str) -> VirtualServer:
        VirtualServer.objects.filter(name="web").delete()
        return VirtualServer.objects.create(tenant=tenant, name="web", hostname="web.example", plan=plan,
                                            template=template, state=state)

    return make


def test_every_kind_of_operation_has_a_row():
    assert set(TRANSITIONS) == {k.value for k in OperationKind}


@pytest.mark.parametrize("kind", sorted(TRANSITIONS))
def test_what_may_be_asked_can_be_run_and_nothing_runs_on_a_finished_server(kind):
    row = TRANSITIONS[kind]
    assert row.asked_in <= row.runs_from
    assert not row.runs_from & TERMINAL
    if row.busy is not None:
        assert row.busy in row.runs_from  # a second run after a crash starts where the first stopped
        assert row.on_interrupt is not None
    if kind in GUEST_KINDS:
        assert (row.asked_in, row.busy, row.on_failure) == ({State.RUNNING}, None, OnFailure.KEEP)


def test_in_progress_states_are_the_busy_states_and_each_has_a_way_out():
    assert {row.busy for row in TRANSITIONS.values() if row.busy} | {State.APPROVED} == IN_PROGRESS
    for state in IN_PROGRESS:
        row = interrupted(state)
        assert row is not None and row.on_interrupt is not None, state
    for state in set(ALL_STATES) - IN_PROGRESS:
        assert interrupted(state) is None


@pytest.mark.parametrize("state", ALL_STATES)
@pytest.mark.parametrize("kind", sorted(TRANSITIONS))
def test_the_worker_starts_and_ends_each_operation_as_the_table_says(make, kind, state):
    row = TRANSITIONS[kind]
    server = make(state)
    began = server.begin(kind)
    server.refresh_from_db()
    assert began == (state in row.runs_from)
    if not began:
        assert server.state == state  # refused: nothing moved
        return
    assert server.state == (row.busy or state)
    assert server.complete(kind, back_to=state)
    server.refresh_from_db()
    assert server.state == (row.target or state)
