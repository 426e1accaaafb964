"""Placement (vservers.placement.choose_node) and the approval that uses it: the freest node that
has the template built, a free address in a pool of its own or shared with it, room within its
ratios, is not draining, and reports in; the operator may pin a node; the approval says where
and why, on the page and in the API."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEntry
from tests.panel import faults
from vservers import actions
from vservers.models import (
    BuiltTemplate,
    IPAddress,
    IPPool,
    Node,
    Operation,
    Plan,
    State,
    Template,
    VirtualServer,
)
from vservers.placement import NoPlacement, choose_node

pytestmark = pytest.mark.both_databases

file_database = faults.file_database

ROOMY = {"cpus": 64, "memory_mb": 1 << 20, "disk_mb": 1 << 24}  # never the scarcest resource


def node(name: str, *, third: int, online: bool = True, built: Template | None = None, pool: bool = True,
         **fields) -> Node:
    """Node NAME, reporting in (or not), with pool NAME-net 198.19.THIRD.0/24 and TEMPLATE
    recorded as built on it."""
    made = Node.objects.create(name=name, queue_name=f"node-{name}",
                               last_seen=timezone.now() if online else None, **{**ROOMY, **fields})
    if pool:
        IPPool.objects.create(name=f"{name}-net", node=made, network=f"198.19.{third}.0/24",
                              gateway=f"198.19.{third}.1")
    if built is not None:
        BuiltTemplate.objects.create(template=built, node=made, version="20261206-000000-000000",
                                     checked=timezone.now())
    return made


@pytest.fixture
def w(offline_world):
    """offline_world without its node "local" (retired: inactive), and a request "web" of
    acme on plan small (0.5 CPU, 256 MB memory, 1024 MB disk)."""
    offline_world.node.is_active = False
    offline_world.node.save()
    offline_world.web = request(offline_world, "web")
    return offline_world


def request(world, name: str, plan: Plan | None = None) -> VirtualServer:
    return VirtualServer.objects.create(tenant=world.acme, name=name, hostname=f"{name}.acme.test",
                                        plan=plan or world.small, template=world.busybox,
                                        state=State.REQUESTED)


def live_on(world, where: Node, name: str, plan: Plan | None = None) -> VirtualServer:
    """A running server on WHERE (its plan counts against the node), with an address."""
    server = VirtualServer.objects.create(tenant=world.globex, name=name, hostname=f"{name}.globex.test",
                                          plan=plan or world.small, template=world.busybox, node=where,
                                          state=State.RUNNING)
    IPPool.allocate_on(where, server)
    return server


@pytest.mark.parametrize(("deciding", "a_fields", "b_fields", "shares"), [
    # b has the more memory free after adding 256 MB: 1792 of 2048 (87.5 %) against 768 of 1024 (75 %).
    ("memory", {"memory_mb": 1024}, {"memory_mb": 2048}, "memory 87 % free"),
    # b has the more CPU: 1.5 of 2 CPUs at ratio 1 (75 %) against 0.5 of 1 (50 %).
    ("CPUs", {"cpus": 1, "cpu_ratio": 1}, {"cpus": 2, "cpu_ratio": 1}, "CPUs 75 %"),
    # b has the more disk: 3072 of 4096 MB (75 %) against 1024 of 2048 (50 %).
    ("disk", {"disk_mb": 2048}, {"disk_mb": 4096}, "disk 75 %"),
])
def test_the_node_with_the_most_free_capacity_wins(w, deciding, a_fields, b_fields, shares):
    node("a", third=140, built=w.busybox, **a_fields)
    b = node("b", third=141, built=w.busybox, **b_fields)
    placed = choose_node(w.web)
    assert placed.node == b, placed.reason
    assert placed.reason.startswith("node b: the most free capacity of 2 nodes that qualify, by its scarcest resource")
    assert shares in placed.reason
    assert placed.reason.endswith("template busybox built; a free address in pool b-net")


def test_what_a_node_holds_already_counts_and_equal_nodes_go_by_name(w):
    a = node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=1024)
    assert choose_node(w.web).node == a  # a tie: the name decides
    live_on(w, a, "old")  # a now holds 256 MB of its 1024
    assert choose_node(w.web).node == b
    live_on(w, b, "older", plan=w.medium)  # b now holds 512 MB
    assert choose_node(w.web).node == a
    # A deleted server holds nothing.
    VirtualServer.objects.filter(name="older").update(state=State.DELETED)
    assert choose_node(w.web).node == b


def test_a_node_whose_ratio_the_server_would_pass_is_not_chosen(w):
    a = node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=384)
    live_on(w, b, "old")  # 256 of b's 384 MB: another 256 passes its 1× memory limit
    assert choose_node(w.web).node == a
    a.is_active = False
    a.save()
    with pytest.raises(NoPlacement) as refused:
        choose_node(w.web)
    assert "b: memory would pass its 1× limit (512 / 384 MB memory)" in str(refused.value)
    # Allowing memory overcommit on b makes room there.
    b.memory_ratio = Decimal(2)
    b.save()
    placed = choose_node(w.web)
    assert placed.node == b and "memory 33 % free" in placed.reason  # 512 of 768


def test_draining_nodes_and_nodes_without_the_template_are_passed_over(w):
    a = node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=4096)
    c = node("c", third=142, memory_mb=8192)  # the freest, but busybox is not built there
    assert choose_node(w.web).node == b
    b.draining = True
    b.save()
    assert choose_node(w.web).node == a
    # A migration ships the template: c qualifies then (the server's own node is excluded).
    moving = live_on(w, a, "moving")
    placed = choose_node(moving, exclude=[a], for_migration=True)
    assert placed.node == c and "template shipped with it" in placed.reason
    assert "a free address in pool c-net" in placed.reason


def test_a_node_without_a_free_address_is_passed_over_and_shared_pools_count(w):
    a = node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=4096, pool=False)
    tiny = IPPool.objects.create(name="b-tiny", node=b, network="198.19.143.0/30", gateway="198.19.143.1")
    live_on(w, b, "holder")  # takes b's one address
    assert choose_node(w.web).node == a
    # A pool of a shared with b: b may take addresses from it, after its own.
    a_net = IPPool.objects.get(name="a-net")
    a_net.shared_with.add(b)
    placed = choose_node(w.web)
    assert placed.node == b and placed.reason.endswith("a free address in pool a-net")
    assert IPPool.usable_on(b) == [tiny, a_net]
    assert IPPool.allocate_on(b, w.web).pool == a_net
    # A server on a with an address of a-net keeps it on b; no free address is needed there.
    moving = live_on(w, a, "moving")
    a_net.network, a_net.gateway = "198.19.140.0/29", "198.19.140.1"  # 5 addresses, all taken now
    a_net.save()
    for i in range(IPPool.objects.get(pk=a_net.pk).size - a_net.addresses.count()):
        live_on(w, a, f"filler{i}")
    placed = choose_node(moving, exclude=[a], for_migration=True)
    assert placed.node == b and placed.reason.endswith("keeps its addresses (pool a-net reaches it)")
    assert IPAddress.objects.filter(server=moving, pool=a_net).exists()


def test_a_node_that_has_not_reported_in_is_the_last_resort(w):
    a = node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=4096, online=False)
    placed = choose_node(w.web)
    assert placed.node == a and "not reported in" not in placed.reason
    a.draining = True
    a.save()
    placed = choose_node(w.web)
    assert placed.node == b
    assert placed.reason.endswith("no node that qualifies is online, and node b has not reported in yet")
    b.last_seen = timezone.now() - timedelta(days=2)  # tests/conftest.py allows a day
    b.save()
    assert "node b has not reported in since" in choose_node(w.web).reason


def test_no_placement_names_what_failed_on_each_node(w):
    node("a", third=140, built=w.busybox, draining=True)
    b = node("b", third=141, built=w.busybox, pool=False)
    IPPool.objects.create(name="b-tiny", node=b, network="198.19.143.0/30", gateway="198.19.143.1")
    live_on(w, b, "holder")
    node("c", third=142)
    node("d", third=144, built=w.busybox, pool=False)
    with pytest.raises(NoPlacement) as refused:
        choose_node(w.web)
    assert str(refused.value) == (
        "no node can take web (a: draining; b: no free address in pool b-tiny; "
        "c: template busybox not built; d: no address pool; local: inactive)")
    # The approval refuses with the same sentence and leaves the request as it was.
    with pytest.raises(actions.ActionRefused, match=r"no node can take web \(a: draining;"):
        actions.approve(w.web, w.operator)
    w.web.refresh_from_db()
    assert (w.web.state, w.web.node, w.web.ip_list()) == (State.REQUESTED, None, [])


def test_a_pinned_node_skips_the_rules_but_its_ratio_warnings_are_shown(w):
    node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=128, draining=True, online=False)
    approval = actions.approve_placed(w.web, w.operator, node=b)
    w.web.refresh_from_db()
    assert (w.web.state, w.web.node, w.web.ip_list()) == (State.APPROVED, b, ["198.19.141.2"])
    assert approval.placement.reason == "node b: pinned by the operator"
    assert approval.warnings == ["This puts b at 256 / 128 MB memory, above its 1× limit"]
    assert approval.message == "Placed on node b: pinned by the operator"


def test_approval_on_the_operator_page_names_the_node_and_why(w, client):
    node("a", third=140, built=w.busybox, memory_mb=1024)
    node("b", third=141, built=w.busybox, memory_mb=2048)
    client.force_login(w.operator)
    page = client.get(reverse("op_approvals")).content.decode()
    assert '<option value="">chosen by placement</option>' in page
    response = client.post(reverse("op_approve", args=[w.web.uuid]))
    (message,) = [str(m) for m in get_messages(response.wsgi_request)]
    assert message == (
        "acme/web is approved on b with 198.19.141.2; provisioning is queued. Placed on node b: the most free "
        "capacity of 2 nodes that qualify, by its scarcest resource (memory 87 % free, CPUs 99 %, disk 99 %); "
        "template busybox built; a free address in pool b-net.")
    # Refused: the sentence says why for each node.
    other = request(w, "other")
    Node.objects.filter(name__in=["a", "b"]).update(draining=True)
    response = client.post(reverse("op_approve", args=[other.uuid]))
    message = [str(m) for m in get_messages(response.wsgi_request)][-1]
    assert message == "acme/other was not approved: no node can take other (a: draining; b: draining; local: inactive)."


def test_approval_through_the_api_names_the_node_and_why(w):
    from api import actions as token_actions

    node("a", third=140, built=w.busybox, memory_mb=1024)
    b = node("b", third=141, built=w.busybox, memory_mb=2048)
    op = APIClient()
    op.credentials(HTTP_AUTHORIZATION=f"Bearer {token_actions.create(w.operator, name='t', scope='write', days=1)[1]}")
    response = op.post(f"/api/v1/operator/servers/{w.web.uuid}/approve/", {}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["kind"], body["node"], body["warnings"]) == ("provision", "b", [])
    assert body["placement"].startswith("node b: the most free capacity of 2 nodes that qualify")
    assert response["Location"] == f"/api/v1/operations/{body['uuid']}/"
    # Pinned on a node the server does not fit: approved, with the warning.
    Node.objects.filter(pk=b.pk).update(memory_mb=512)
    big = request(w, "big", plan=w.medium)
    response = op.post(f"/api/v1/operator/servers/{big.uuid}/approve/", {"node": "b"}, format="json")
    assert response.status_code == 202, response.json()
    assert response.json()["placement"] == "node b: pinned by the operator"
    assert response.json()["warnings"] == ["This puts b at 768 / 512 MB memory, above its 1× limit"]
    assert b.servers.count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("last", "refusal"), [
    ("address", "no free address left in pool tiny"),
    ("memory", "node only has no room left within its ratios since placement chose it"),
])
def test_two_placed_approvals_race_for_the_last_room(file_database, django_user_model, monkeypatch, last, refusal):
    """Two approvals without a pinned node against the only node's last address (or the last
    of its memory): both placements choose it before either approval writes (a barrier holds
    each after choosing), then the pool lock (or the node's row lock and a second look at its
    ratios) lets one through and refuses the other whole: still requested, no address, no
    operation."""
    from accounts.models import Tenant

    queued: list[int] = []
    monkeypatch.setattr(actions, "enqueue", lambda op: transaction.on_commit(lambda: queued.append(op.pk)))
    chose = threading.Barrier(2)

    def choose_then_wait(server):
        placed = choose_node(server)
        chose.wait(timeout=30)
        return placed

    monkeypatch.setattr(actions, "choose_node", choose_then_wait)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    only = node("only", third=145, built=template, pool=last != "address",
                **({"memory_mb": 256} if last == "memory" else {}))
    if last == "address":
        IPPool.objects.create(name="tiny", node=only, network="198.19.145.0/30", gateway="198.19.145.1")
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=256, disk_mb=1024)
    tenant = Tenant.objects.create(name="Acme", slug="acme")
    operator = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True)
    servers = [VirtualServer.objects.create(tenant=tenant, name=f"web{i}", hostname=f"web{i}.test", plan=plan,
                                            template=template) for i in range(2)]
    results: dict[int, str] = {}

    def approve(server_id: int) -> None:
        try:
            actions.approve(VirtualServer.objects.get(pk=server_id), operator, check_quota=False)
            results[server_id] = "ok"
        except actions.ActionRefused as exc:
            results[server_id] = f"refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - the test reports every unexpected error
            results[server_id] = f"error: {type(exc).__name__}: {exc}"
        finally:
            connections.close_all()

    threads = [threading.Thread(target=approve, args=(s.pk,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    connection.close()
    outcomes = sorted(results.values())
    assert outcomes[0] == "ok" and outcomes[1].startswith(f"refused: {refusal}"), results
    assert IPAddress.objects.count() == 1
    (approved,) = VirtualServer.objects.filter(state=State.APPROVED)
    assert approved.node == only and len(approved.ip_list()) == 1
    (refused,) = VirtualServer.objects.filter(state=State.REQUESTED)
    assert refused.node_id is None and not refused.addresses.exists() and not refused.operations.exists()
    assert list(Operation.objects.values_list("pk", flat=True)) == queued

def _token_client(user) -> APIClient:
    from api import actions as token_actions

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_actions.create(user, name='t', scope='write', days=1)[1]}")
    return client


def test_an_operator_drains_a_node_on_its_page_and_through_the_api(w, client):
    a = node("a", third=140, built=w.busybox)
    client.force_login(w.operator)
    fields = {"cpus": 64, "memory_mb": 1 << 20, "disk_mb": 1 << 24, "cpu_ratio": "4", "memory_ratio": "1",
              "disk_ratio": "1", "is_active": "on"}
    assert 'name="draining"' in client.get(reverse("op_node_edit", args=["a"])).content.decode()
    client.post(reverse("op_node_edit", args=["a"]), {**fields, "draining": "on"})
    a.refresh_from_db()
    assert a.draining and not a.accepts_servers
    assert '<span class="badge">draining</span>' in client.get(reverse("op_nodes")).content.decode()
    with pytest.raises(NoPlacement, match=r"a: draining"):
        choose_node(w.web)
    # The API shows it and turns it off; the rest of the node stays as it was.
    op = _token_client(w.operator)
    assert op.get("/api/v1/operator/nodes/a/").json()["draining"] is True
    patched = op.patch("/api/v1/operator/nodes/a/", {"draining": False}, format="json")
    assert patched.status_code == 200 and patched.json()["draining"] is False
    a.refresh_from_db()
    assert not a.draining and a.cpus == 64
    assert choose_node(w.web).node == a


def test_a_pool_is_shared_with_other_nodes_on_its_form_and_through_the_api(w, client):
    a = node("a", third=140, built=w.busybox)
    b = node("b", third=141, built=w.busybox)
    client.force_login(w.operator)
    page = client.post(reverse("op_pools"), {"name": "ab", "node": a.pk, "network": "198.19.146.0/24",
                                             "gateway": "198.19.146.1", "shared_with": [a.pk]})
    assert "node a is the pool&#x27;s own node; share it with other nodes" in page.content.decode()
    client.post(reverse("op_pools"), {"name": "ab", "node": a.pk, "network": "198.19.146.0/24",
                                      "gateway": "198.19.146.1", "shared_with": [b.pk]})
    assert list(IPPool.objects.get(name="ab").shared_with.all()) == [b]
    assert "shared with b" in client.get(reverse("op_pools")).content.decode()
    op = _token_client(w.operator)
    made = op.post("/api/v1/operator/pools/", {"name": "ba", "node": "b", "network": "198.19.147.0/24",
                                               "gateway": "198.19.147.1", "shared_with": ["a"]}, format="json")
    assert made.status_code == 201 and made.json()["shared_with"] == ["a"], made.json()
    refused = op.post("/api/v1/operator/pools/", {"name": "bb", "node": "b", "network": "198.19.148.0/24",
                                                  "gateway": "198.19.148.1", "shared_with": ["b"]}, format="json")
    assert refused.status_code == 400 and "shared_with" in refused.json()["fields"]
    overlapping = op.post("/api/v1/operator/pools/", {"name": "bc", "node": "b", "network": "198.19.147.0/25",
                                                      "gateway": "198.19.147.1"}, format="json")
    assert overlapping.status_code == 400 and "network" in overlapping.json()["fields"]
    listed = {pool["name"]: pool["shared_with"] for pool in op.get("/api/v1/operator/pools/").json()["results"]}
    assert listed == {"a-net": [], "ab": ["b"], "b-net": [], "ba": ["a"], "test": []}


def test_an_existing_pool_is_shared_and_unshared_on_its_page_and_through_the_api(w, client):
    a = node("a", third=140, built=w.busybox)
    b = node("b", third=141, built=w.busybox, pool=False)
    c = node("c", third=142, built=w.busybox)
    a_net = IPPool.objects.get(name="a-net")
    client.force_login(w.operator)
    url = reverse("op_pool_detail", args=[a_net.pk])
    page = client.get(url).content.decode()
    assert 'name="shared_with"' in page and f'value="{a.pk}"' not in page  # not offered its own node
    client.post(url, {"shared_with": [b.pk]})
    assert list(a_net.shared_with.all()) == [b]
    assert AuditEntry.objects.get(action="pool.share").details == {"shared_with": ["b"]}
    assert choose_node(w.web, exclude=[a, c]).reason.endswith("a free address in pool a-net")  # b's only pool
    # A server of b takes an address of a-net: b cannot be taken off the pool while it holds it.
    actions.approve(w.web, w.operator, node=b)
    op = _token_client(w.operator)
    refused = op.patch(f"/api/v1/operator/pools/{a_net.pk}/", {"shared_with": ["c"]}, format="json")
    assert refused.status_code == 400
    assert refused.json()["fields"]["shared_with"] == ["servers on b hold addresses of this pool; the pool stays "
                                                       "shared with it"]
    added = op.patch(f"/api/v1/operator/pools/{a_net.pk}/", {"shared_with": ["b", "c"]}, format="json")
    assert added.status_code == 200 and added.json()["shared_with"] == ["b", "c"]
    own = op.patch(f"/api/v1/operator/pools/{a_net.pk}/", {"shared_with": ["a"]}, format="json")
    assert own.status_code == 400 and "own node" in own.json()["fields"]["shared_with"][0]
    assert sorted(n.name for n in IPPool.objects.get(pk=a_net.pk).shared_with.all()) == ["b", "c"]
