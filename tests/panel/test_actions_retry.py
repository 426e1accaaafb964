"""Retrying a failed operation (vservers.actions.retry_operation, retryable): the same kind and
parameters again, linked to the failed one, only for the latest operation of a server, only
where the table of transitions lets the server's state ask for it, and only for the kinds the
user's role retries (models.transitions.Retry)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from accounts.models import AuditEntry, Membership
from vservers import actions
from vservers.models import TRANSITIONS, Operation, OperationKind, OperationStatus, Retry, State, VirtualServer
from vservers.models.operations import SECRET_PARAMS


@pytest.fixture
def w(offline_world):
    w = offline_world
    w.server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.STOPPED)
    return w


def failed(server, kind, **params) -> Operation:
    return Operation.objects.create(server=server, kind=kind, params=params, status=OperationStatus.FAILED,
                                    error="The server could not be started; the operator has been told.")


def test_a_failed_start_is_asked_for_again_linked_to_the_one_it_retries(w, rf):
    first = failed(w.server, OperationKind.START)
    request = rf.post("/")
    request.user = w.alice
    retried = actions.retry_operation(first, w.alice, request=request)
    assert (retried.kind, retried.status, retried.retry_of, retried.requested_by) == (
        OperationKind.START, OperationStatus.QUEUED, first, w.alice)
    assert w.queued == [retried]
    # (Outside a request's middleware the operation's own "system" entries are recorded too.)
    entry = AuditEntry.objects.exclude(details__has_key="system").get()
    assert (entry.action, entry.actor, entry.details) == ("server.start", w.alice, {"retry_of": str(first.uuid)})
    # Now the retry is the latest: the failed one cannot be retried a second time.
    with pytest.raises(actions.ActionRefused, match="only the latest operation"):
        actions.retry_operation(first, w.alice)


def test_the_parameters_go_along(w):
    w.server.state = State.RUNNING
    w.server.save()
    first = failed(w.server, OperationKind.SERVICE_RESTART, service="httpd")
    retried = actions.retry_operation(first, w.alice)
    assert (retried.kind, retried.params) == (OperationKind.SERVICE_RESTART, {"service": "httpd"})


@pytest.mark.parametrize("status", [OperationStatus.SUCCEEDED, OperationStatus.QUEUED, OperationStatus.RUNNING])
def test_only_a_failed_operation_is_retried(w, status):
    operation = Operation.objects.create(server=w.server, kind=OperationKind.START, status=status)
    with pytest.raises(actions.ActionRefused, match="only a failed operation"):
        actions.retry_operation(operation, w.operator)
    assert Operation.objects.count() == 1


def test_only_the_latest_operation_of_its_server_is_retried(w):
    # The demo's case: provisioning failed, then a start finished it. The failed provisioning
    # is history now, even though provisioning could still be asked for.
    first = failed(w.server, OperationKind.PROVISION)
    Operation.objects.create(server=w.server, kind=OperationKind.START, status=OperationStatus.SUCCEEDED)
    with pytest.raises(actions.ActionRefused, match="only the latest operation"):
        actions.retry_operation(first, w.operator)
    assert actions.retryable([first], w.operator) == set()


def test_a_retry_is_refused_where_the_state_does_not_allow_its_kind(w):
    # A stop failed, and the server stopped after all (the kernel settled it).
    first = failed(w.server, OperationKind.STOP)
    assert not w.server.may(OperationKind.STOP)
    with pytest.raises(actions.ActionRefused, match="cannot stop while the server is stopped"):
        actions.retry_operation(first, w.operator)
    assert actions.retryable([first], w.operator) == set()
    assert Operation.objects.count() == 1


def test_the_tenant_retries_a_failed_provisioning_of_a_server_in_error(w):
    w.server.state = State.ERROR
    w.server.save()
    first = failed(w.server, OperationKind.PROVISION)
    assert actions.retryable([first], w.alice) == {first.pk}
    retried = actions.retry_operation(first, w.alice)
    assert (retried.kind, retried.retry_of_id) == (OperationKind.PROVISION, first.pk)


def test_a_delete_is_retried_by_operators_only(w):
    w.server.state = State.ERROR
    w.server.save()
    first = failed(w.server, OperationKind.DELETE)
    assert actions.retryable([first], w.alice) == set()
    with pytest.raises(PermissionDenied, match="only an operator"):
        actions.retry_operation(first, w.alice)
    assert Operation.objects.count() == 1
    assert actions.retryable([first], w.operator) == {first.pk}
    retried = actions.retry_operation(first, w.operator)
    assert (retried.kind, retried.requested_by) == (OperationKind.DELETE, w.operator)


def test_nobody_retries_what_needed_a_password(w):
    w.server.state = State.RUNNING
    w.server.save()
    first = failed(w.server, OperationKind.ACCOUNT_ADD, account="carol")  # its password is wiped
    assert actions.retryable([first], w.operator) == set()
    with pytest.raises(actions.ActionRefused, match="password is not kept"):
        actions.retry_operation(first, w.operator)


def test_read_only_members_see_no_retry(w):
    w.alice.membership.role = Membership.READONLY
    w.alice.membership.save()
    first = failed(w.server, OperationKind.START)
    assert actions.retryable([first], w.alice) == set()


def test_the_table_says_who_retries_each_kind():
    tenant = {kind for kind, t in TRANSITIONS.items() if t.retry is Retry.TENANT}
    assert {OperationKind.PROVISION, OperationKind.START, OperationKind.STOP, OperationKind.RESTART} <= tenant
    # Never a delete of a server, nor an operator's decision, for tenants.
    assert OperationKind.DELETE not in tenant and OperationKind.CHANGE_PLAN not in tenant
    assert OperationKind.ACCOUNT_DELETE not in tenant
    # Nor wiping a server's files again on a tenant's behalf: they ask again, typing its name.
    assert OperationKind.REINSTALL not in tenant
    # The kinds that take a secret cannot be retried by anybody: it is wiped when they end.
    secret_kinds = {OperationKind.ACCOUNT_ADD, OperationKind.ACCOUNT_PASSWORD, OperationKind.ROOT_PASSWORD}
    assert SECRET_PARAMS == {"password"}
    assert {kind for kind, t in TRANSITIONS.items() if t.retry is Retry.NEVER} == secret_kinds
