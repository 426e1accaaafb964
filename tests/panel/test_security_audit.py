"""The audit log has an entry for every operation and every sign-in, however it came about.

Operations: every view of the URL resolver is sent a valid POST by the user who may use it
(tests/panel/routes.py), each against the same fresh world; every Operation that comes out of
it must have exactly one entry for its server, "server.<kind>" (provisioning: "server.approve"),
with the user who asked and the address the request came from. Operations made without a
request (the reconciler's autostart, `manage.py demo`) get theirs from accounts.signals.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import transaction
from django.test import Client

from accounts.models import AuditEntry
from tests.panel.routes import ADMIN_PREFIX, SignedIn, actor, all_routes, candidates, data_for, security_world
from vservers import actions
from vservers.models import Operation, OperationKind, State

ADDRESS = "198.51.100.44"


@pytest.fixture
def world(offline_world, django_user_model):
    return security_world(offline_world, django_user_model)


def audited_kind(entry: AuditEntry) -> str | None:
    """The operation kind an entry stands for, if it is about one."""
    kind = entry.action.removeprefix("server.")
    if kind == "approve":
        return OperationKind.PROVISION
    return kind if kind in OperationKind.values else None


def unaudited(operations: list[Operation]) -> list[str]:
    """Operations without exactly one matching entry: "<kind> of <server>: <n> entries"."""
    wanted = Counter((str(op.server.uuid), op.kind) for op in operations)
    found = Counter(
        (entry.object_id, audited_kind(entry))
        for entry in AuditEntry.objects.filter(object_id__in={key[0] for key in wanted})
        if audited_kind(entry)
    )
    return [f"{kind} of {uuid}: {found[(uuid, kind)]} entries for {n}" for (uuid, kind), n in wanted.items()
            if found[(uuid, kind)] != n]


def test_every_operation_any_view_makes_is_audited_once(world):
    kinds, problems = set(), []
    before = set(Operation.objects.values_list("pk", flat=True))
    clients = SignedIn(REMOTE_ADDR=ADDRESS)
    for route in all_routes():
        if route.route.startswith(ADMIN_PREFIX):
            continue  # Django's admin keeps its own log (LogEntry) and makes no operations
        user = actor(route, world)
        for url in route.urls(candidates(route, world)):
            client = clients.client(user)
            with transaction.atomic():
                client.post(url, data_for(route, world))
                made = list(Operation.objects.exclude(pk__in=before).select_related("server"))
                kinds.update(op.kind for op in made)
                problems += [f"POST {url}: {problem}" for problem in unaudited(made)]
                for op in made:
                    entry = AuditEntry.objects.filter(object_id=str(op.server.uuid)).latest("pk")
                    if (entry.actor, entry.remote_addr) != (user, ADDRESS):
                        problems.append(f"POST {url}: {entry.action} by {entry.actor} from {entry.remote_addr}")
                transaction.set_rollback(True)
    assert not problems, "\n".join(problems)
    # Every kind of operation there is was made by some view (else this test looked at none).
    assert kinds == set(OperationKind.values), f"no view made {set(OperationKind.values) - kinds}"


def test_operations_made_without_a_request_are_audited(world):
    """As the reconciler's autostart (no user) and `manage.py demo` (the operator) make them."""
    autostart = actions.request_operation(world.stopped, OperationKind.START, None)
    provision = actions.approve(world.pending, world.operator, node=world.node)
    assert not unaudited([autostart, provision])
    entry = AuditEntry.objects.get(action="server.start", object_id=str(world.stopped.uuid))
    assert (entry.actor, entry.tenant, entry.remote_addr) == (None, world.globex, None)
    assert entry.details == {"operation": str(autostart.uuid), "system": True}
    entry = AuditEntry.objects.get(action="server.provision", object_id=str(world.pending.uuid))
    assert entry.actor == world.operator


def test_a_refused_operation_leaves_no_entry(world):
    with pytest.raises(actions.ActionRefused):
        actions.request_operation(world.pending, OperationKind.START, world.bob)
    assert not AuditEntry.objects.filter(action="server.start").exists()
    assert world.pending.state == State.REQUESTED


# -- sign-ins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_every_sign_in_page_audits_success_and_failure(world, url):
    client = Client(REMOTE_ADDR=ADDRESS)
    client.post(url, {"username": "operator", "password": "wrong"})
    client.post(url, {"username": "operator", "password": "operator pw 1"})
    failed = AuditEntry.objects.get(action="auth.login_failed")
    assert (failed.actor, failed.remote_addr, failed.details) == (None, ADDRESS, {"username": "operator"})
    login = AuditEntry.objects.get(action="auth.login")
    assert (login.actor, login.remote_addr, login.object_id) == (world.operator, ADDRESS, str(world.operator.pk))


def test_a_sign_in_by_other_means_is_audited(world):
    Client().force_login(world.bob)
    entry = AuditEntry.objects.get(action="auth.login")
    assert (entry.actor, entry.tenant) == (world.bob, world.globex)


def test_signing_out_is_audited(world):
    client = Client(REMOTE_ADDR=ADDRESS)
    client.force_login(world.bob)
    client.post("/accounts/logout/")
    entry = AuditEntry.objects.get(action="auth.logout")
    assert (entry.actor, entry.remote_addr) == (world.bob, ADDRESS)
    # request.user, a SimpleLazyObject, is named as what it wraps.
    assert (entry.object_type, entry.object_repr) == ("User", "bob")
