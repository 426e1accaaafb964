"""Domain decisions (vservers.actions): quotas counted with pending requests and plan changes,
re-checked on approval; operations refused by the table of transitions, deduplicated and
capped per tenant."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings

from accounts.models import Tenant
from vservers import actions
from vservers.models import (
    TRANSITIONS,
    IPPool,
    Node,
    Operation,
    OperationKind,
    Plan,
    State,
    VirtualServer,
)

# Run on SQLite and again on PostgreSQL (make test, scripts/with-postgres).
pytestmark = pytest.mark.both_databases


@pytest.fixture
def one_cpu(db):
    return Plan.objects.create(name="one", cpus=Decimal("1"), memory_mb=512, disk_mb=2048)


@pytest.fixture
def node(db):
    node = Node.objects.create(name="local", queue_name="default")
    IPPool.objects.create(name="test", node=node, network="198.19.128.0/29", gateway="198.19.128.1")
    return node


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_user("operator", is_staff=True)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice")


def server(tenant, name, plan, template, state=State.RUNNING, **fields) -> VirtualServer:
    return VirtualServer.objects.create(
        tenant=tenant, name=name, hostname=f"{name}.example", plan=plan, template=template, state=state, **fields
    )


# -- quotas -----------------------------------------------------------------------------------


def test_it_names_the_quota_that_does_not_fit(acme, small, large, busybox, alice):
    server(acme, "one", small, busybox)
    with pytest.raises(actions.QuotaExceeded) as refused:
        actions.request_server(acme, alice, name="web", hostname="web.example", plan=large, template=busybox)
    message = str(refused.value)
    assert "CPUs would add up to 2.5 of at most 2;" in message
    assert "memory would add up to 2560 MB of at most 2048 MB" in message
    assert "disk would add up to 10240 MB of at most 8192 MB" in message
    assert not VirtualServer.objects.filter(name="web").exists()


def test_only_live_servers_count_against_the_quota(acme, small, busybox):
    for name in ("one", "two", "three"):
        server(acme, name, small, busybox)
    assert actions.quota_problems(acme, small) == ["your servers would exceed the limit of 3"]
    VirtualServer.objects.filter(name="one").update(state=State.DELETED)
    VirtualServer.objects.filter(name="two").update(state=State.REJECTED)
    assert actions.quota_problems(acme, small) == []
    assert actions.tenant_usage(acme) == {"servers": 1, "cpus": Decimal("0.5"), "memory_mb": 512, "disk_mb": 2048}


def test_a_requested_server_counts_against_the_quota(acme, small, busybox):
    server(acme, "one", small, busybox, state=State.REQUESTED)
    assert actions.tenant_usage(acme)["servers"] == 1


def test_a_plan_change_replaces_the_servers_own_share(acme, small, large, busybox, alice):
    web = server(acme, "web", small, busybox)
    assert actions.request_plan_change(web, large, alice) is True  # 2 CPUs in all, not 2.5
    other = server(acme, "other", small, busybox)
    web.refresh_from_db()
    with pytest.raises(actions.QuotaExceeded, match="does not fit your quota"):
        actions.request_plan_change(other, large, alice)
    assert actions.request_plan_change(web, small, alice) is False  # withdrawn
    web.refresh_from_db()
    assert web.requested_plan is None


def test_pending_plan_changes_count_so_two_cannot_both_be_approved(acme, small, one_cpu, busybox, alice, operator,
                                                                    rq_redis):
    """The bypass that was found: at most 1.75 CPUs, two 0.5-CPU servers, both asked to move
    to a 1-CPU plan. The first request waits; the second no longer fits."""
    Tenant.objects.filter(pk=acme.pk).update(max_cpus=Decimal("1.75"))
    acme.refresh_from_db()
    web = server(acme, "web", small, busybox)
    db = server(acme, "db", small, busybox)
    assert actions.request_plan_change(web, one_cpu, alice)
    assert actions.tenant_usage(acme)["cpus"] == Decimal("1.5")  # web counts with its larger plan
    with pytest.raises(actions.QuotaExceeded, match=r"CPUs would add up to 2 of at most 1\.75"):
        actions.request_plan_change(db, one_cpu, alice)
    web.refresh_from_db()
    actions.decide_plan_change(web, True, operator)
    assert Operation.objects.filter(server=web, kind=OperationKind.CHANGE_PLAN).exists()


def test_approval_checks_the_quota_again(acme, small, large, busybox, alice, operator, node, rq_redis):
    requested = actions.request_server(acme, alice, name="web", hostname="web.example", plan=small,
                                       template=busybox)
    # The operator raised a plan's price... no: the tenant's quota went down meanwhile.
    Tenant.objects.filter(pk=acme.pk).update(max_cpus=Decimal("0.25"))
    requested.tenant.refresh_from_db()
    with pytest.raises(actions.QuotaExceeded, match="CPUs would add up to 0.5 of at most 0.25"):
        actions.approve(requested, operator, node=node)
    requested.refresh_from_db()
    assert requested.state == State.REQUESTED
    assert not requested.addresses.exists()


def test_approving_a_plan_change_checks_the_quota_again(acme, small, large, busybox, alice, operator, rq_redis):
    web = server(acme, "web", small, busybox)
    actions.request_plan_change(web, large, alice)
    Tenant.objects.filter(pk=acme.pk).update(max_cpus=Decimal("1"))
    web.refresh_from_db()
    with pytest.raises(actions.QuotaExceeded):
        actions.decide_plan_change(web, True, operator)
    web.refresh_from_db()
    assert web.requested_plan == large  # still waiting: the refusal rolled the decision back
    assert not Operation.objects.filter(server=web).exists()


def test_a_second_request_with_a_live_name_is_refused(acme, small, busybox, alice):
    actions.request_server(acme, alice, name="web", hostname="web.example", plan=small, template=busybox)
    with pytest.raises(actions.NameTaken):
        actions.request_server(acme, alice, name="web", hostname="web.example", plan=small, template=busybox)


def test_cancel_withdraws_a_request_and_nothing_else(acme, small, busybox):
    waiting = server(acme, "web", small, busybox, state=State.REQUESTED)
    actions.cancel(waiting)
    assert waiting.state == State.DELETED
    running = server(acme, "db", small, busybox)
    with pytest.raises(actions.ActionRefused):
        actions.cancel(running)


# -- operations -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [s.value for s in State])
@pytest.mark.parametrize("kind", sorted(TRANSITIONS))
def test_operations_are_asked_exactly_where_the_table_allows(acme, small, busybox, operator, rq_redis, kind, state):
    target = server(acme, "web", small, busybox, state=state)
    allowed = state in TRANSITIONS[kind].asked_in
    assert target.may(kind) == allowed
    if allowed:
        operation = actions.request_operation(target, kind, operator)
        assert operation.kind == kind
    else:
        with pytest.raises(actions.ActionRefused, match="cannot .* while the server is"):
            actions.request_operation(target, kind, operator)
        assert not Operation.objects.exists()


def test_the_same_pending_operation_is_returned_not_queued_twice(acme, small, busybox, alice, rq_redis):
    web = server(acme, "web", small, busybox)
    first = actions.request_operation(web, OperationKind.REFRESH, alice)
    again = actions.request_operation(web, OperationKind.REFRESH, alice)
    assert again.pk == first.pk
    other = actions.request_operation(web, OperationKind.SERVICE_RESTART, alice, service="httpd")
    assert other.pk != first.pk
    assert Operation.objects.count() == 2


@override_settings(PANEL_MAX_PENDING_PER_TENANT=3)
def test_a_tenant_has_a_cap_on_pending_operations(acme, small, busybox, alice, operator, rq_redis):
    web = server(acme, "web", small, busybox)
    for service in ("a", "b", "c"):
        actions.request_operation(web, OperationKind.SERVICE_RESTART, alice, service=service)
    with pytest.raises(actions.ActionRefused, match="3 operations of your servers are still waiting"):
        actions.request_operation(web, OperationKind.SERVICE_RESTART, alice, service="d")
    # Operators (and the reconciler) are not held to a tenant's cap.
    actions.request_operation(web, OperationKind.SERVICE_RESTART, operator, service="d")
    assert Operation.objects.count() == 4
