"""The operator's area: approvals, servers, tenants and members, the catalogue, the logs, and
the audit entries all of them write (sign-ins included).

Personas: alice (acme's admin), bob (globex's admin), and the operator, a staff user. Queueing
is the outside world here: vservers.actions.enqueue is replaced by a recorder, so these
tests need neither Redis nor the kernel.
"""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts.models import AuditEntry, Membership, Tenant
from vservers.models import (
    IPAddress,
    IPPool,
    Node,
    Operation,
    OperationKind,
    OperationStatus,
    Plan,
    State,
    Template,
    VirtualServer,
)


@pytest.fixture
def world(offline_world):
    """conftest's offline_world: its users sign in with their passwords ("alice password 1"), and
    world.queued holds what was queued."""
    return offline_world


@pytest.fixture
def op_client(client, world):
    client.force_login(world.operator)
    return client


def make_server(world, tenant=None, name="web", state=State.REQUESTED, **fields) -> VirtualServer:
    tenant = tenant or world.acme
    defaults = {"plan": world.small, "template": world.busybox, "hostname": f"{name}.example.test"}
    if state not in (State.REQUESTED, State.REJECTED):
        defaults["node"] = world.node
    return VirtualServer.objects.create(tenant=tenant, name=name, state=state, **{**defaults, **fields})


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def audit(action: str) -> AuditEntry:
    return AuditEntry.objects.get(action=action)


# -- access ---------------------------------------------------------------------------------


def test_it_redirects_anonymous_users_to_login(client, world):
    response = client.get("/operator/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/operator/"


def test_it_forbids_tenant_users(client, world):
    client.force_login(world.alice)
    assert client.get("/operator/").status_code == 403
    assert client.post(reverse("op_approve", args=[make_server(world).uuid])).status_code == 403
    assert not world.queued


@pytest.mark.parametrize(
    "name",
    [
        "op_dashboard",
        "op_approvals",
        "op_servers",
        "op_server_create",
        "op_tenants",
        "op_plans",
        "op_templates",
        "op_pools",
        "op_nodes",
        "op_operations",
        "op_audit",
    ],
)
def test_every_list_page_renders_for_the_operator(op_client, world, name):
    make_server(world, name="waiting")
    make_server(world, name="live", state=State.RUNNING, requested_plan=world.medium)
    response = op_client.get(reverse(name))
    assert response.status_code == 200
    assert b'aria-label="Operator"' in response.content


def test_every_detail_page_renders_for_the_operator(op_client, world):
    server = make_server(world, state=State.RUNNING)
    world.pool.allocate(server)
    for url in [
        reverse("op_server_detail", args=[server.uuid]),
        reverse("op_tenant_detail", args=[world.acme.uuid]),
        reverse("op_member_add", args=[world.acme.uuid]),
        reverse("op_plan_edit", args=[world.small.uuid]),
        reverse("op_pool_detail", args=[world.pool.pk]),
    ]:
        response = op_client.get(url)
        assert response.status_code == 200, url
        assert b"198.19.128.2" in response.content or "pool" not in url


# -- dashboard ------------------------------------------------------------------------------


def test_dashboard_counts_servers_and_adds_up_plans_per_node(op_client, world):
    make_server(world, name="a")
    make_server(world, name="b", state=State.RUNNING)  # small: 0.5 CPU, 256 MB, 1024 MB
    make_server(world, name="c", state=State.STOPPED, plan=world.medium)  # 1 CPU, 512 MB, 4096 MB
    make_server(world, name="d", state=State.ERROR)
    make_server(world, name="e", state=State.DELETED, plan=world.medium)  # no longer counts
    response = op_client.get(reverse("op_dashboard"))
    assert response.context["counts"] == {"awaiting": 1, "running": 1, "errors": 1, "plan_changes": 0, "unknown": 0}
    (node,) = response.context["nodes"]
    assert (node.server_count, node.cpus_allocated, node.memory_allocated, node.disk_allocated) == (3, 2, 1024, 6144)
    assert node.memory_percent == 25  # of 4096 MB
    assert b"1024 / 4096 MB" in response.content


# -- approvals ------------------------------------------------------------------------------


def test_approvals_page_lists_requests_and_plan_changes(op_client, world):
    make_server(world, name="fresh", requested_by=world.alice)
    make_server(world, world.globex, name="bigger", state=State.RUNNING, requested_plan=world.medium)
    make_server(world, name="settled", state=State.RUNNING)
    response = op_client.get(reverse("op_approvals"))
    assert [s.name for s in response.context["requested"]] == ["fresh"]
    assert [s.name for s in response.context["plan_changes"]] == ["bigger"]
    assert b"alice" in response.content
    assert b"settled" not in response.content


@pytest.mark.both_databases
def test_approve_allocates_an_address_and_queues_a_provision_operation(op_client, world):
    server = make_server(world)
    response = op_client.post(reverse("op_approve", args=[server.uuid]))
    assert response.status_code == 302
    assert response["Location"] == reverse("op_approvals")

    server.refresh_from_db()
    assert server.state == State.APPROVED
    assert server.node == world.node
    assert server.ip_list() == ["198.19.128.2"]  # the lowest host besides the gateway
    (operation,) = world.queued
    assert (operation.server, operation.kind, operation.requested_by) == (server, "provision", world.operator)
    entry = audit("server.approve")
    assert (entry.actor, entry.tenant, entry.object_id, entry.details["node"]) == (
        world.operator,
        world.acme,
        str(server.uuid),
        "local",
    )
    # The entry and the message say why this node (the only one, not reporting in here).
    assert entry.details["placement"].startswith("node local: the only node that qualifies")
    assert "198.19.128.2" in messages_of(response)[0]
    assert "Placed on node local: the only node that qualifies" in messages_of(response)[0]


def test_approve_places_the_server_on_the_chosen_node(op_client, world):
    other = Node.objects.create(name="second", queue_name="node-second")
    IPPool.objects.create(name="second", node=other, network="198.19.130.0/24", gateway="198.19.130.1")
    server = make_server(world)
    op_client.post(reverse("op_approve", args=[server.uuid]), {"node": "second"})
    server.refresh_from_db()
    assert server.node == other
    assert server.ip_list() == ["198.19.130.2"]


def test_approve_goes_back_to_the_page_it_came_from_but_not_elsewhere(op_client, world):
    server = make_server(world)
    detail = reverse("op_server_detail", args=[server.uuid])
    assert op_client.post(reverse("op_approve", args=[server.uuid]), {"next": detail})["Location"] == detail
    other = make_server(world, name="other")
    response = op_client.post(reverse("op_approve", args=[other.uuid]), {"next": "https://evil.example/"})
    assert response["Location"] == reverse("op_approvals")


@pytest.mark.both_databases
def test_approving_twice_is_refused_with_a_message(op_client, world):
    server = make_server(world)
    op_client.post(reverse("op_approve", args=[server.uuid]))
    response = op_client.post(reverse("op_approve", args=[server.uuid]))
    assert response.status_code == 302
    assert "only servers awaiting approval can be approved" in messages_of(response)[-1]
    assert len(world.queued) == 1
    assert IPAddress.objects.filter(server=server).count() == 1


@pytest.mark.both_databases
def test_approve_refuses_when_the_pool_is_exhausted_and_changes_nothing(op_client, world):
    world.pool.network, world.pool.gateway = "198.19.131.0/30", "198.19.131.1"  # one address to give
    world.pool.save()
    first, second = make_server(world, name="first"), make_server(world, name="second")
    op_client.post(reverse("op_approve", args=[first.uuid]))
    response = op_client.post(reverse("op_approve", args=[second.uuid]))
    assert "no node can take second (local: no free address in pool test)" in messages_of(response)[-1]
    second.refresh_from_db()
    assert (second.state, second.node, second.ip_list()) == (State.REQUESTED, None, [])
    assert not second.operations.exists()
    assert len(world.queued) == 1
    assert AuditEntry.objects.filter(action="server.approve").count() == 1


def test_approve_with_an_unknown_node_is_refused(op_client, world):
    server = make_server(world)
    response = op_client.post(reverse("op_approve", args=[server.uuid]), {"node": "nowhere"})
    assert "choose an active node" in messages_of(response)[0]
    server.refresh_from_db()
    assert server.state == State.REQUESTED


def test_approve_of_an_unknown_server_is_404(op_client, world):
    assert op_client.post(reverse("op_approve", args=["00000000-0000-0000-0000-000000000000"])).status_code == 404


def test_approve_needs_post(op_client, world):
    assert op_client.get(reverse("op_approve", args=[make_server(world).uuid])).status_code == 405


def test_reject_stores_the_reason_for_the_tenant(op_client, world):
    server = make_server(world)
    response = op_client.post(reverse("op_reject", args=[server.uuid]), {"reason": "  no mail servers, sorry "})
    assert response.status_code == 302
    server.refresh_from_db()
    assert (server.state, server.state_reason) == (State.REJECTED, "no mail servers, sorry")
    assert not server.addresses.exists()
    assert not world.queued
    assert audit("server.reject").details == {"reason": "no mail servers, sorry"}


def test_reject_needs_a_reason(op_client, world):
    server = make_server(world)
    response = op_client.post(reverse("op_reject", args=[server.uuid]), {"reason": "   "})
    assert "give the tenant a reason" in messages_of(response)[0]
    server.refresh_from_db()
    assert server.state == State.REQUESTED


def test_reject_of_a_running_server_is_refused(op_client, world):
    server = make_server(world, state=State.RUNNING)
    response = op_client.post(reverse("op_reject", args=[server.uuid]), {"reason": "late"})
    assert "only servers awaiting approval can be rejected" in messages_of(response)[0]
    server.refresh_from_db()
    assert server.state == State.RUNNING


# -- plan changes ---------------------------------------------------------------------------


def test_plan_change_approval_queues_change_plan_and_clears_the_request(op_client, world):
    server = make_server(world, state=State.RUNNING, requested_plan=world.medium)
    response = op_client.post(reverse("op_plan_change", args=[server.uuid, "approve"]))
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.requested_plan is None
    assert server.plan == world.small  # the worker switches it when the change is done
    (operation,) = world.queued
    assert (operation.kind, operation.params, operation.requested_by) == (
        OperationKind.CHANGE_PLAN,
        {"plan_id": world.medium.pk},
        world.operator,
    )
    assert audit("server.change_plan").details == {"plan": "medium"}


def test_plan_change_rejection_clears_the_request(op_client, world):
    server = make_server(world, state=State.STOPPED, requested_plan=world.medium)
    op_client.post(reverse("op_plan_change", args=[server.uuid, "reject"]))
    server.refresh_from_db()
    assert server.requested_plan is None
    assert server.plan == world.small
    assert not world.queued
    assert audit("server.plan_change_reject").details == {"plan": "medium"}


def test_plan_change_refused_by_the_state_keeps_the_request(op_client, world):
    server = make_server(world, state=State.ERROR, requested_plan=world.medium)
    response = op_client.post(reverse("op_plan_change", args=[server.uuid, "approve"]))
    assert "cannot change plan while the server is error" in messages_of(response)[0]
    server.refresh_from_db()
    assert server.requested_plan == world.medium
    assert not Operation.objects.exists()


def test_plan_change_without_a_request_says_so(op_client, world):
    server = make_server(world, state=State.RUNNING)
    response = op_client.post(reverse("op_plan_change", args=[server.uuid, "approve"]))
    assert "has no plan change waiting" in messages_of(response)[0]
    assert not world.queued


def test_plan_change_knows_only_approve_and_reject(op_client, world):
    server = make_server(world, state=State.RUNNING, requested_plan=world.medium)
    assert op_client.post(reverse("op_plan_change", args=[server.uuid, "maybe"])).status_code == 404


# -- servers --------------------------------------------------------------------------------


@pytest.fixture
def fleet(world):
    node2 = Node.objects.create(name="second", queue_name="node-second")
    make_server(world, name="web", state=State.RUNNING, hostname="www.acme.test")
    make_server(world, name="db", state=State.STOPPED, hostname="db.acme.test")
    make_server(world, world.globex, name="shop", state=State.RUNNING, node=node2, hostname="shop.globex.test")
    make_server(world, world.globex, name="mail", hostname="mx.globex.test")
    return node2


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["db", "web", "mail", "shop"]),
        ("?tenant=globex", ["mail", "shop"]),
        ("?state=running", ["web", "shop"]),
        ("?node=second", ["shop"]),
        ("?q=globex", ["mail", "shop"]),  # hostname
        ("?q=WE", ["web"]),  # name, any case
        ("?tenant=acme&state=running", ["web"]),
        ("?state=nonsense", ["db", "web", "mail", "shop"]),  # an invalid filter is ignored
    ],
)
def test_server_list_filters(op_client, world, fleet, query, expected):
    response = op_client.get(reverse("op_servers") + query)
    assert response.status_code == 200
    assert [s.name for s in response.context["page"].object_list] == expected


def test_server_list_pages_by_fifty_without_a_query_per_row(op_client, world, django_assert_max_num_queries):
    for i in range(60):
        server = make_server(world, name=f"s{i:02}", state=State.RUNNING)
        IPAddress.objects.create(pool=world.pool, address=f"198.19.128.{i + 10}", server=server)
    with django_assert_max_num_queries(12):
        response = op_client.get(reverse("op_servers"))
    page = response.context["page"]
    assert (len(page.object_list), page.paginator.num_pages) == (50, 2)
    assert b"198.19.128.10" in response.content
    assert b'href="?page=2"' in response.content
    response = op_client.get(reverse("op_servers") + "?state=running&page=2")
    assert len(response.context["page"].object_list) == 10
    assert b'href="?state=running&amp;page=1"' in response.content  # the filters stay


def test_server_detail_shows_operations_and_the_actions_the_state_allows(op_client, world):
    server = make_server(world, state=State.RUNNING)
    Operation.objects.create(
        server=server, kind=OperationKind.PROVISION, status=OperationStatus.FAILED, error="mkfs failed"
    )
    response = op_client.get(reverse("op_server_detail", args=[server.uuid]))
    assert [k.value for k in response.context["kinds"]] == ["stop", "restart", "delete"]
    assert b"mkfs failed" in response.content


@pytest.mark.parametrize("kind", ["stop", "restart", "delete"])
def test_server_action_queues_an_operation(op_client, world, kind):
    server = make_server(world, state=State.RUNNING)
    response = op_client.post(reverse("op_server_action", args=[server.uuid, kind]))
    assert response["Location"] == reverse("op_server_detail", args=[server.uuid])
    (operation,) = world.queued
    assert (operation.server, operation.kind, operation.requested_by) == (server, kind, world.operator)
    assert AuditEntry.objects.filter(action=f"server.{kind}", actor=world.operator).count() == 1


def test_server_action_refused_by_the_state_is_a_message(op_client, world):
    server = make_server(world, state=State.STOPPED)
    response = op_client.post(reverse("op_server_action", args=[server.uuid, "stop"]))
    assert response.status_code == 302
    assert messages_of(response) == [f"{server}: cannot stop while the server is stopped."]
    assert not world.queued


def test_server_action_knows_only_direct_actions(op_client, world):
    server = make_server(world, state=State.RUNNING)
    assert op_client.post(reverse("op_server_action", args=[server.uuid, "provision"])).status_code == 404
    assert op_client.post(reverse("op_server_action", args=[server.uuid, "account_add"])).status_code == 404


def test_operator_creates_a_server_that_is_approved_at_once(op_client, world):
    response = op_client.post(
        reverse("op_server_create"),
        {
            "tenant": world.globex.pk,
            "name": "api",
            "hostname": "api.globex.test",
            "plan": world.medium.pk,
            "template": world.busybox.pk,
            "autostart": "on",
        },
    )
    server = VirtualServer.objects.get(name="api")
    assert response["Location"] == reverse("op_server_detail", args=[server.uuid])
    assert (server.tenant, server.state, server.node, server.requested_by) == (
        world.globex,
        State.APPROVED,
        world.node,
        world.operator,
    )
    assert server.ip_list() == ["198.19.128.2"]
    assert [op.kind for op in world.queued] == ["provision"]
    assert audit("server.create").tenant == world.globex
    assert audit("server.approve").actor == world.operator


def test_server_creation_that_cannot_be_approved_leaves_nothing(op_client, world):
    world.pool.delete()
    response = op_client.post(
        reverse("op_server_create"),
        {
            "tenant": world.acme.pk,
            "name": "api",
            "hostname": "api.acme.test",
            "plan": world.small.pk,
            "template": world.busybox.pk,
        },
    )
    assert response.status_code == 200
    assert "no node can take api (local: no address pool)" in str(response.context["form"].non_field_errors())
    assert not VirtualServer.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="server.").exists()


def test_server_creation_validates_names(op_client, world):
    make_server(world, name="web", state=State.RUNNING)
    response = op_client.post(
        reverse("op_server_create"),
        {
            "tenant": world.acme.pk,
            "name": "web",
            "hostname": "bad_host!",
            "plan": world.small.pk,
            "template": world.busybox.pk,
        },
    )
    errors = response.context["form"].errors
    assert "already has a server named web" in errors["name"][0]
    assert "Invalid hostname" in errors["hostname"][0]  # the engine's words, as the tenant's form shows them
    response = op_client.post(
        reverse("op_server_create"),
        {
            "tenant": world.acme.pk,
            "name": "Web Server",
            "hostname": "w.acme.test",
            "plan": world.small.pk,
            "template": world.busybox.pk,
        },
    )
    assert "Invalid server name" in response.context["form"].errors["name"][0]
    assert VirtualServer.objects.count() == 1


# -- tenants and members --------------------------------------------------------------------


def test_operator_creates_a_tenant(op_client, world):
    response = op_client.post(
        reverse("op_tenants"),
        {
            "name": "Initech",
            "slug": "initech",
            "contact_email": "it@initech.test",
            "max_servers": 3,
            "max_cpus": "2",
            "max_memory_mb": 2048,
            "max_disk_mb": 10240,
        },
    )
    tenant = Tenant.objects.get(slug="initech")
    assert response["Location"] == reverse("op_tenant_detail", args=[tenant.uuid])
    entry = audit("tenant.create")
    assert (entry.tenant, entry.actor, entry.object_id) == (tenant, world.operator, str(tenant.uuid))


def test_tenant_creation_refuses_a_taken_slug(op_client, world):
    response = op_client.post(
        reverse("op_tenants"),
        {
            "name": "Acme 2",
            "slug": "acme",
            "max_servers": 3,
            "max_cpus": "2",
            "max_memory_mb": 2048,
            "max_disk_mb": 10240,
        },
    )
    assert response.status_code == 200
    assert "slug" in response.context["form"].errors
    assert Tenant.objects.count() == 2


def test_operator_edits_a_tenants_quotas(op_client, world):
    response = op_client.post(
        reverse("op_tenant_detail", args=[world.acme.uuid]),
        {
            "name": "Acme",
            "slug": "acme",
            "contact_email": "",
            "max_servers": 10,
            "max_cpus": "8",
            "max_memory_mb": 4096,
            "max_disk_mb": 20480,
        },
    )
    assert response.status_code == 302
    world.acme.refresh_from_db()
    assert (world.acme.max_servers, world.acme.max_cpus) == (10, 8)
    assert audit("tenant.update").details == {"changes": {"max_servers": "10", "max_cpus": "8"}}


def test_tenant_detail_lists_members_and_usage(op_client, world):
    make_server(world, name="web", state=State.RUNNING, plan=world.medium)
    response = op_client.get(reverse("op_tenant_detail", args=[world.acme.uuid]))
    assert [m.user.username for m in response.context["members"]] == ["alice"]
    assert response.context["usage"] == {"servers": 1, "cpus": 1, "memory": 512, "disk": 4096, "snapshots": 0}
    assert b"bob" not in response.content


def test_member_added_with_a_generated_password_sees_it_once(op_client, world, client):
    response = op_client.post(
        reverse("op_member_add", args=[world.acme.uuid]),
        {
            "username": "carol",
            "email": "carol@acme.test",
            "role": "readonly",
        },
    )
    assert response.status_code == 200
    password = response.context["password"]
    assert len(password) >= 16
    assert password.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    membership = Membership.objects.get(user__username="carol")
    assert (membership.tenant, membership.role) == (world.acme, "readonly")
    assert membership.user.check_password(password)
    assert not membership.user.is_staff
    entry = audit("member.add")
    assert (entry.tenant, entry.details) == (world.acme, {"username": "carol", "role": "readonly"})
    assert password not in str(AuditEntry.objects.values_list("details", flat=True))
    # and nowhere else: the tenant page does not show it again
    assert password.encode() not in op_client.get(reverse("op_tenant_detail", args=[world.acme.uuid])).content


def test_member_added_with_a_given_password(op_client, world):
    response = op_client.post(
        reverse("op_member_add", args=[world.globex.uuid]),
        {
            "username": "dave",
            "role": "admin",
            "password": "a long enough passphrase",
        },
    )
    assert response.context["password"] is None
    user = Membership.objects.get(tenant=world.globex, user__username="dave").user
    assert user.check_password("a long enough passphrase")


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        ({"username": "ALICE", "role": "admin"}, "username", "exists already"),
        ({"username": "carol", "role": "admin", "password": "123"}, "password", "too short"),
        ({"username": "bad name!", "role": "admin"}, "username", "Enter a valid username"),
        ({"username": "carol", "role": "owner"}, "role", "Select a valid choice"),
    ],
)
def test_member_add_validates(op_client, world, data, field, error):
    response = op_client.post(reverse("op_member_add", args=[world.acme.uuid]), data)
    assert response.status_code == 200
    assert error in " ".join(response.context["form"].errors[field])
    assert Membership.objects.count() == 2


# -- plans, templates, pools, nodes ---------------------------------------------------------


PLAN = {"name": "large", "cpus": "2", "memory_mb": 2048, "disk_mb": 8192, "pids": 512, "is_active": "on"}


def test_operator_creates_and_edits_a_plan(op_client, world):
    assert op_client.post(reverse("op_plans"), PLAN).status_code == 302
    plan = Plan.objects.get(name="large")
    assert audit("plan.create").object_id == str(plan.uuid)
    response = op_client.post(reverse("op_plan_edit", args=[plan.uuid]), {**PLAN, "memory_mb": 3072, "is_active": ""})
    assert response.status_code == 302
    plan.refresh_from_db()
    assert (plan.memory_mb, plan.is_active) == (3072, False)
    assert audit("plan.update").details == {"changes": {"memory_mb": "3072", "is_active": "False"}}


def test_plan_limits_are_validated(op_client, world):
    response = op_client.post(reverse("op_plans"), {**PLAN, "cpus": "0", "pids": 2, "memory_mb": 1})
    assert set(response.context["form"].errors) == {"cpus", "pids", "memory_mb"}
    assert not Plan.objects.filter(name="large").exists()


def test_operator_adds_and_toggles_a_template(op_client, world):
    op_client.post(reverse("op_templates"), {"name": "debian", "display_name": "Debian 12", "is_active": "on"})
    template = Template.objects.get(name="debian")
    assert audit("template.create").object_repr == "Debian 12"
    op_client.post(reverse("op_template_toggle", args=["debian"]))
    template.refresh_from_db()
    assert not template.is_active
    op_client.post(reverse("op_template_toggle", args=["debian"]))
    template.refresh_from_db()
    assert template.is_active
    actions_done = list(AuditEntry.objects.filter(action__startswith="template.").values_list("action", flat=True))
    assert sorted(actions_done) == ["template.activate", "template.create", "template.deactivate"]


def test_template_names_follow_the_engine(op_client, world):
    response = op_client.post(reverse("op_templates"), {"name": "9lives", "display_name": "x"})
    assert "Invalid template name" in response.context["form"].errors["name"][0]


def test_operator_creates_a_pool(op_client, world):
    response = op_client.post(
        reverse("op_pools"),
        {
            "name": "more",
            "node": world.node.pk,
            "network": "198.19.132.0/26",
            "gateway": "198.19.132.1",
        },
    )
    pool = IPPool.objects.get(name="more")
    assert response["Location"] == reverse("op_pool_detail", args=[pool.pk])
    assert audit("pool.create").details == {"network": "198.19.132.0/26", "gateway": "198.19.132.1", "node": "local"}
    response = op_client.get(reverse("op_pools"))
    assert {p.name: (p.capacity, p.used) for p in response.context["pools"]} == {"more": (61, 0), "test": (253, 0)}


@pytest.mark.parametrize(
    ("network", "gateway", "field", "error"),
    [
        ("198.19.132.0/33", "198.19.132.1", "network", "not a network in CIDR form"),
        ("198.19.132.5/24", "198.19.132.1", "network", "has host bits set"),
        ("banana", "198.19.132.1", "network", "not a network in CIDR form"),
        ("198.19.132.0/24", "198.19.133.1", "gateway", "the gateway must lie inside the network"),
        ("198.19.132.0/24", "not-an-address", "gateway", "valid IPv4 or IPv6 address"),
        ("198.19.128.128/25", "198.19.128.129", "network", "overlaps pool test"),
    ],
)
def test_pool_validation_errors(op_client, world, network, gateway, field, error):
    response = op_client.post(
        reverse("op_pools"),
        {
            "name": "more",
            "node": world.node.pk,
            "network": network,
            "gateway": gateway,
        },
    )
    assert response.status_code == 200
    assert error in " ".join(response.context["form"].errors[field])
    assert not IPPool.objects.filter(name="more").exists()
    assert not AuditEntry.objects.filter(action="pool.create").exists()


@pytest.mark.parametrize(
    ("network", "gateway"),
    [
        ("198.19.128.0/24", "198.19.128.1"),
        ("198.19.129.0/27", "198.19.129.30"),
        ("198.19.129.0/30", "198.19.129.0"),
        ("198.19.129.0/31", "198.19.129.1"),
        ("198.19.129.7/32", "198.19.129.7"),
        ("fd00:1b::/120", "fd00:1b::1"),
        ("fd00:1b::/127", "fd00:1b::"),
        ("198.19.129.0/28", "198.19.130.1"),
    ],
)
def test_pool_size_by_arithmetic_equals_counting(network, gateway):
    pool = IPPool(name="x", network=network, gateway=gateway)
    assert pool.size == sum(1 for _ in pool.iter_hosts())


@pytest.mark.both_databases
def test_pool_detail_lists_allocations(op_client, world):
    server = make_server(world, state=State.RUNNING)
    world.pool.allocate(server)
    response = op_client.get(reverse("op_pool_detail", args=[world.pool.pk]))
    assert [a.address for a in response.context["page"].object_list] == ["198.19.128.2"]
    assert response.context["pool"].used == 1
    assert op_client.get(reverse("op_pool_detail", args=[999])).status_code == 404


def test_nodes_page_shows_capacity_usage_and_pools(op_client, world):
    make_server(world, state=State.RUNNING, plan=world.medium)
    response = op_client.get(reverse("op_nodes"))
    (node,) = response.context["nodes"]
    assert (node.cpu_percent, node.memory_percent, node.disk_percent) == (50, 12, 6)
    assert [p.name for p in node.pool_list] == ["test"]


# -- logs -----------------------------------------------------------------------------------


def test_operations_log_filters_by_status_and_kind(op_client, world, django_assert_max_num_queries):
    server = make_server(world, state=State.RUNNING)
    Operation.objects.create(server=server, kind=OperationKind.START, status=OperationStatus.FAILED)
    Operation.objects.create(server=server, kind=OperationKind.STOP, status=OperationStatus.SUCCEEDED)
    Operation.objects.create(server=server, kind=OperationKind.START, status=OperationStatus.QUEUED)

    def listed(query):
        return [(op.kind, op.status) for op in op_client.get(reverse("op_operations") + query).context["page"]]

    assert listed("?status=failed") == [("start", "failed")]
    assert sorted(listed("?kind=start")) == [("start", "failed"), ("start", "queued")]
    assert listed("?kind=stop&status=succeeded") == [("stop", "succeeded")]
    for _ in range(60):
        Operation.objects.create(server=server, kind=OperationKind.REFRESH, requested_by=world.alice)
    with django_assert_max_num_queries(10):
        response = op_client.get(reverse("op_operations"))
    assert len(response.context["page"].object_list) == 50


def test_audit_log_pages_and_filters(op_client, world):
    for i in range(55):
        AuditEntry.objects.create(action="server.start", tenant=world.acme, object_repr=f"acme/s{i}")
    AuditEntry.objects.create(action="tenant.update", tenant=world.globex)
    response = op_client.get(reverse("op_audit"))
    assert response.context["page"].paginator.num_pages == 2
    response = op_client.get(reverse("op_audit") + "?tenant=globex")
    assert [e.action for e in response.context["page"]] == ["tenant.update"]
    response = op_client.get(reverse("op_audit") + "?action=auth.")
    assert [e.action for e in response.context["page"]] == ["auth.login"]  # the operator's own


# -- sign-ins in the audit log --------------------------------------------------------------


def test_login_and_logout_are_audited(client, world):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice password 1"}, REMOTE_ADDR="198.51.100.7"
    )
    assert response.status_code == 302
    entry = audit("auth.login")
    assert (entry.actor, entry.tenant, entry.object_type, entry.remote_addr) == (
        world.alice,
        world.acme,
        "User",
        "198.51.100.7",
    )
    client.post("/accounts/logout/")
    entry = audit("auth.logout")
    assert (entry.actor, entry.tenant) == (world.alice, world.acme)


def test_failed_login_is_audited_without_the_password(client, world):
    client.post("/accounts/login/", {"username": "alice", "password": "guess"}, REMOTE_ADDR="203.0.113.9")
    entry = audit("auth.login_failed")
    assert (entry.actor, entry.tenant, entry.remote_addr, entry.details) == (
        None,
        None,
        "203.0.113.9",
        {"username": "alice"},
    )
    assert not AuditEntry.objects.filter(action="auth.login").exists()


def test_operator_login_has_no_tenant(client, world):
    client.force_login(world.operator)
    entry = audit("auth.login")
    assert (entry.actor, entry.tenant) == (world.operator, None)
