"""The operator's endpoints: approvals, rejections, plan change decisions, servers made for a
tenant, and the catalogue (tenants, members, plans, templates, pools, nodes, audit), checked by
the operator's own forms and saved by vservers.actions with the same audit entries as the
pages."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry, Membership, Tenant
from vservers.models import IPPool, Operation, Plan, State, Template, VirtualServer


@pytest.fixture
def w(offline_world, api):
    w = offline_world
    w.op = api(w.operator)
    w.alice_api = api(w.alice)
    w.request = VirtualServer.objects.create(tenant=w.acme, name="shop", hostname="shop.acme.test", plan=w.small,
                                             template=w.busybox, state=State.REQUESTED)
    return w


@pytest.mark.both_databases
def test_approve_gives_a_node_and_an_address_and_queues_provisioning(w):
    response = w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/approve/", {"node": "local"}, format="json")
    assert response.status_code == 202 and response.json()["kind"] == "provision"
    w.request.refresh_from_db()
    assert (w.request.state, w.request.node, len(w.request.ip_list())) == (State.APPROVED, w.node, 1)
    assert AuditEntry.objects.filter(action="server.approve", actor=w.operator).count() == 1
    again = w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/approve/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "refused"
    bad_node = w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/approve/", {"node": "nowhere"}, format="json")
    assert bad_node.status_code == 400 and "node" in bad_node.json()["fields"]


def test_reject_takes_a_reason_the_tenant_reads(w):
    assert w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/reject/", {}, format="json").status_code == 400
    response = w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/reject/", {"reason": "no room"}, format="json")
    assert response.status_code == 200 and response.json()["state"] == "rejected"
    assert w.alice_api.get("/api/v1/rejected/").json()["results"][0]["reason"] == "no room"


def test_plan_changes_are_decided(w):
    running = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                           template=w.busybox, node=w.node, state=State.RUNNING)
    base = f"/api/v1/operator/servers/{running.uuid}/plan-change"
    assert w.op.post(f"{base}/approve/").status_code == 409  # nothing waiting
    w.alice_api.post(f"/api/v1/servers/{running.uuid}/plan-change/", {"plan": "medium"}, format="json")
    approved = w.op.post(f"{base}/approve/")
    assert approved.status_code == 202 and approved.json()["kind"] == "change_plan"
    assert Operation.objects.get(kind="change_plan").params == {"plan_id": w.medium.pk}
    w.alice_api.post(f"/api/v1/servers/{running.uuid}/plan-change/", {"plan": "medium"}, format="json")
    rejected = w.op.post(f"{base}/reject/")
    assert rejected.status_code == 200 and rejected.json()["requested_plan"] is None


def test_an_operator_creates_a_server_for_a_tenant(w):
    data = {"tenant": "globex", "name": "api", "hostname": "api.globex.test", "plan": "small", "template": "busybox"}
    response = w.op.post("/api/v1/operator/servers/", data, format="json")
    assert response.status_code == 201
    assert (response.json()["tenant"], response.json()["state"], response.json()["node"]) == (
        "globex", "approved", "local")
    assert w.op.post("/api/v1/operator/servers/", data, format="json").json()["fields"]["name"]


def test_tenants_and_members(w):
    made = w.op.post("/api/v1/operator/tenants/", {"name": "Initech", "slug": "initech"}, format="json")
    assert made.status_code == 201 and made.json()["max_servers"] == 5  # the model's default
    uuid = made.json()["uuid"]
    assert w.op.post("/api/v1/operator/tenants/", {"name": "X", "slug": "initech"}, format="json").status_code == 400
    patched = w.op.patch(f"/api/v1/operator/tenants/{uuid}/", {"max_servers": 9}, format="json")
    assert patched.status_code == 200 and patched.json()["max_servers"] == 9 and patched.json()["name"] == "Initech"
    entry = AuditEntry.objects.get(action="tenant.update")
    assert entry.details["changes"] == {"max_servers": "9"}

    member = w.op.post(f"/api/v1/operator/tenants/{uuid}/members/", {"username": "peter", "role": "readonly"},
                       format="json")
    assert member.status_code == 201 and member["Cache-Control"] == "no-store"
    password = member.json()["password"]
    assert len(password) >= 12
    peter = Membership.objects.get(user__username="peter")
    assert (peter.tenant.slug, peter.role, peter.user.check_password(password)) == ("initech", "readonly", True)
    assert w.op.get(f"/api/v1/operator/tenants/{uuid}/members/").json()["results"] == [
        {"user_id": peter.user.pk, "username": "peter", "email": "", "role": "readonly"}]


def test_members_change_role_and_leave_as_on_the_tenants_page(w, api):
    """What the operator's tenant page does to a member (issue 12, point 1): the same actions,
    the same refusal for the last admin, the same audit entries."""
    from django.contrib.auth import get_user_model

    carol = get_user_model().objects.create_user("carol", "carol@acme.test", "carol password 1")
    Membership.objects.create(user=carol, tenant=w.acme, role=Membership.READONLY)
    carol_api = api(carol, scope="read")
    assert carol_api.get("/api/v1/me/").status_code == 200
    base = f"/api/v1/operator/tenants/{w.acme.uuid}/members"

    assert w.op.get(f"{base}/{carol.pk}/").json()["role"] == "readonly"
    assert w.op.get(f"/api/v1/operator/tenants/{w.globex.uuid}/members/{carol.pk}/").status_code == 404
    bad = w.op.patch(f"{base}/{carol.pk}/", {"role": "owner"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()["fields"]
    promoted = w.op.patch(f"{base}/{carol.pk}/", {"role": "admin"}, format="json")
    assert promoted.status_code == 200 and promoted.json() == {
        "user_id": carol.pk, "username": "carol", "email": "carol@acme.test", "role": "admin"}
    assert AuditEntry.objects.get(action="member.role").details["was"] == "readonly"

    # Alice may go now that carol is an admin too; carol, the last one, may not.
    assert w.op.delete(f"{base}/{w.alice.pk}/").status_code == 204
    w.alice.refresh_from_db()
    assert w.alice.is_active is False and not Membership.objects.filter(user=w.alice).exists()
    assert w.alice_api.get("/api/v1/me/").status_code == 401  # her token stopped with her account
    last = w.op.delete(f"{base}/{carol.pk}/")
    assert last.status_code == 409 and "last admin" in last.json()["detail"]
    demoted = w.op.patch(f"{base}/{carol.pk}/", {"role": "readonly"}, format="json")
    assert demoted.status_code == 409 and "last admin" in demoted.json()["detail"]
    assert Membership.objects.get(user=carol).role == Membership.ADMIN
    assert AuditEntry.objects.filter(action="member.remove").count() == 1
    assert AuditEntry.objects.filter(action="api.write", actor=w.operator).count() == 5
    # Tenants, even the tenant's own admin, reach none of it.
    for method in ("get", "patch", "delete"):
        assert getattr(api(carol), method)(f"{base}/{carol.pk}/", {"role": "readonly"},
                                           format="json").status_code == 403


def test_a_node_is_edited_as_on_its_page(w):
    node = w.op.get("/api/v1/operator/nodes/local/").json()
    assert (node["name"], node["cpu_ratio"]) == ("local", "4.00")
    assert w.op.get("/api/v1/operator/nodes/nowhere/").status_code == 404
    bad = w.op.patch("/api/v1/operator/nodes/local/", {"memory_ratio": "0.01"}, format="json")
    assert bad.status_code == 400 and "memory_ratio" in bad.json()["fields"]
    changed = w.op.patch("/api/v1/operator/nodes/local/", {"cpus": 16, "cpu_ratio": "2.5", "is_active": False},
                         format="json")
    assert changed.status_code == 200
    assert (changed.json()["cpus"], changed.json()["cpu_ratio"], changed.json()["is_active"],
            changed.json()["memory_mb"]) == (16, "2.50", False, node["memory_mb"])
    w.node.refresh_from_db()
    assert (w.node.cpus, str(w.node.cpu_ratio), w.node.is_active) == (16, "2.50", False)
    assert AuditEntry.objects.get(action="node.update").details["changes"].keys() == {"cpus", "cpu_ratio", "is_active"}
    assert w.alice_api.patch("/api/v1/operator/nodes/local/", {"cpus": 1}, format="json").status_code == 403


def test_plans_templates_and_pools_are_checked_by_the_operators_forms(w):
    tiny = w.op.post("/api/v1/operator/plans/", {"name": "tiny", "cpus": "0.1", "memory_mb": 8, "disk_mb": 64},
                     format="json")
    assert tiny.status_code == 400 and tiny.json()["fields"] == {"memory_mb": ["must be at least 16"]}
    plan = w.op.post("/api/v1/operator/plans/", {"name": "tiny", "cpus": "0.1", "memory_mb": 32, "disk_mb": 64},
                     format="json")
    assert plan.status_code == 201
    off = w.op.patch(f"/api/v1/operator/plans/{plan.json()['uuid']}/", {"is_active": False}, format="json")
    assert off.json()["is_active"] is False and off.json()["memory_mb"] == 32
    assert "tiny" not in str(w.alice_api.get("/api/v1/plans/").json())
    assert "tiny" in str(w.op.get("/api/v1/operator/plans/").json())

    bad = w.op.post("/api/v1/operator/templates/", {"name": "../etc", "display_name": "x"}, format="json")
    assert bad.status_code == 400 and "name" in bad.json()["fields"]
    assert w.op.patch("/api/v1/operator/templates/busybox/", {"is_active": False}, format="json").status_code == 200
    assert Template.objects.get(name="busybox").is_active is False
    assert AuditEntry.objects.filter(action="template.deactivate").count() == 1

    overlap = w.op.post("/api/v1/operator/pools/", {"name": "two", "node": "local", "network": "198.19.128.0/25",
                                                    "gateway": "198.19.128.1"}, format="json")
    assert overlap.status_code == 400 and "overlaps pool test" in overlap.json()["fields"]["network"][0]
    pool = w.op.post("/api/v1/operator/pools/", {"name": "two", "node": "local", "network": "198.19.200.0/24",
                                                 "gateway": "198.19.200.1"}, format="json")
    assert pool.status_code == 201 and pool.json()["size"] == 253 and pool.json()["used"] == 0
    assert IPPool.objects.filter(name="two").exists()


def test_nodes_pools_and_the_audit_log_are_listed(w):
    w.op.post(f"/api/v1/operator/servers/{w.request.uuid}/approve/", {}, format="json")
    node = w.op.get("/api/v1/operator/nodes/").json()["results"][0]
    assert (node["name"], node["servers"], node["memory_allocated_mb"]) == ("local", 1, w.small.memory_mb)
    addresses = w.op.get(f"/api/v1/operator/pools/{w.pool.pk}/addresses/").json()["results"]
    assert [(a["server"], a["tenant"]) for a in addresses] == [(str(w.request.uuid), "acme")]
    audit = w.op.get("/api/v1/operator/audit/?action=server.&tenant=acme").json()["results"]
    assert [e["action"] for e in audit] == ["server.approve"]
    assert w.op.get("/api/v1/operator/audit/?tenant=nobody").status_code == 400


def test_nothing_here_for_tenants(w):
    before = (Tenant.objects.count(), Plan.objects.count())
    for url in ("/api/v1/operator/tenants/", "/api/v1/operator/plans/"):
        response = w.alice_api.post(url, {"name": "x", "slug": "x"}, format="json")
        assert response.status_code == 403 and response.json()["detail"] == "operators only"
    assert before == (Tenant.objects.count(), Plan.objects.count())


def test_a_template_is_built_on_every_active_node_and_its_builds_listed(w):
    url = "/api/v1/operator/templates/busybox/builds/"
    assert w.op.get(url).json()["results"] == []
    first = w.op.post(url, format="json")
    assert first.status_code == 202, first.content
    [build] = first.json()["queued"]
    assert (build["template"], build["node"], build["status"]) == ("busybox", "local", "queued")
    assert first.json()["refused"] == []
    assert AuditEntry.objects.filter(action="template.build", object_repr__contains="busybox").count() == 1

    again = w.op.post(url, format="json")  # one build per template and node at a time
    assert again.status_code == 409
    assert again.json()["detail"] == "a build on local is queued or running already"
    listed = w.op.get(url).json()["results"]
    assert [b["uuid"] for b in listed] == [build["uuid"]]
    assert w.op.post("/api/v1/operator/templates/nosuch/builds/", format="json").status_code == 404
    assert w.alice_api.get(url).status_code == 403
