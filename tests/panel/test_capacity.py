"""A node's capacity: what its live servers' plans allocate against what it has, overcommit
shown uncapped, the ratios per node, and the approval row's warning (vservers.capacity).

Rows only (offline_world: node "local" with 2 CPUs, 4096 MB, 65536 MB disk; plans small
0.5 CPU / 256 MB / 1024 MB and medium 1 CPU / 512 MB / 4096 MB)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEntry, Tenant
from vservers.capacity import node_capacities
from vservers.models import Node, Plan, State, VirtualServer

# Run on SQLite and again on PostgreSQL (make test, scripts/with-postgres).
pytestmark = pytest.mark.both_databases


@pytest.fixture
def world(offline_world):
    w = offline_world
    w.big = Plan.objects.create(name="big", cpus="2", memory_mb=1024, disk_mb=8192)
    # The servers already running belong to a tenant of their own: approvals check the quota.
    w.initech = Tenant.objects.create(name="Initech", slug="initech", max_cpus=64, max_memory_mb=65536,
                                      max_disk_mb=2**20, max_servers=50)
    return w


@pytest.fixture
def op_client(client, world):
    client.force_login(world.operator)
    return client


def server(world, name, plan, state=State.RUNNING, tenant=None, **fields) -> VirtualServer:
    requested = state == State.REQUESTED
    return VirtualServer.objects.create(
        tenant=tenant or (world.acme if requested else world.initech), name=name, hostname=f"{name}.test",
        plan=plan, template=world.busybox, node=None if requested else world.node, state=state, **fields,
    )


def capacity(node):
    (found,) = node_capacities(Node.objects.filter(pk=node.pk))
    return found


def test_allocation_is_uncapped_and_overcommit_is_marked(world):
    server(world, "a", world.big)
    server(world, "b", world.big, state=State.STOPPED)
    server(world, "gone", world.big, state=State.DELETED)  # no longer counts
    server(world, "asked", world.big, state=State.REQUESTED)  # on no node yet
    cpu, memory, disk = capacity(world.node).allocations()
    assert (cpu.allocated, cpu.physical, cpu.percent) == (4, 2, 200)
    assert cpu.text == "4 / 2 CPUs · 200 %"
    assert cpu.bar == 100  # the meter is full, the figure says how far beyond
    assert cpu.overcommitted and not cpu.over_limit  # the default CPU ratio is 4
    assert cpu.level == "warn"
    assert memory.text == "2048 / 4096 MB memory · 50 %"
    assert not memory.overcommitted and memory.level == ""
    assert disk.percent == 25


def test_past_its_ratio_a_node_is_in_danger(world):
    Node.objects.filter(pk=world.node.pk).update(cpu_ratio=Decimal("1.25"))
    server(world, "a", world.big)
    server(world, "b", world.medium)
    cpu = capacity(world.node).cpu
    assert cpu.text == "3 / 2 CPUs · 150 %"
    assert cpu.over_limit and cpu.level == "danger"


def test_nodes_page_shows_200_percent_in_the_warning_colour(op_client, world):
    server(world, "a", world.big)
    server(world, "b", world.big)
    response = op_client.get(reverse("op_nodes"))
    html = response.content.decode()
    assert "4 / 2 CPUs · 200 %" in html
    assert "100%" not in html.replace("width: 100%", "")  # never capped in the text
    assert 'class="meter op-capacity meter-warn"' in html
    assert "overcommitted (limit 4×)" in html
    (node,) = response.context["nodes"]
    assert node.cpu_percent == 200


def test_approval_row_warns_when_a_ratio_would_be_passed(op_client, world):
    Node.objects.filter(pk=world.node.pk).update(cpu_ratio=Decimal("2"))
    server(world, "a", world.big)
    server(world, "b", world.big)  # 4 of 2 CPUs: at the 2x limit, not past it
    asked = server(world, "new", world.medium, state=State.REQUESTED)
    small = server(world, "tiny", world.small, state=State.REQUESTED, tenant=world.globex)
    Node.objects.filter(pk=world.node.pk).update(memory_mb=2560)  # 2048 used, +512 fits exactly
    response = op_client.get(reverse("op_approvals"))
    html = response.content.decode()
    assert "Approving puts local at 5 / 2 CPUs, above its 2× limit." in html
    assert "Approving puts local at 4.5 / 2 CPUs, above its 2× limit." in html
    assert "MB memory, above" not in html  # memory fits, so no warning for it
    rows = {row.name: row.capacity_warnings for row in response.context["requested"]}
    assert rows == {"new": ["Approving puts local at 5 / 2 CPUs, above its 2× limit"],
                    "tiny": ["Approving puts local at 4.5 / 2 CPUs, above its 2× limit"]}

    # It warns; it does not refuse: the operator decides.
    response = op_client.post(reverse("op_approve", args=[asked.uuid]), {"node": "local"})
    asked.refresh_from_db()
    assert asked.state == State.APPROVED
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert "This puts local at 5 / 2 CPUs, above its 2× limit." in said
    assert small.state == State.REQUESTED


def test_no_warning_within_the_ratios(op_client, world):
    asked = server(world, "new", world.medium, state=State.REQUESTED)
    response = op_client.get(reverse("op_approvals"))
    assert response.context["requested"][0].capacity_warnings == []
    assert b"Approving puts" not in response.content
    response = op_client.get(reverse("op_server_detail", args=[asked.uuid]))
    assert response.context["capacity_warnings"] == []


def test_plan_change_warns_with_what_it_adds(op_client, world):
    Node.objects.filter(pk=world.node.pk).update(memory_ratio=Decimal("1"), memory_mb=1024)
    growing = server(world, "a", world.medium, requested_plan=world.big)  # 512 -> 1024 MB
    server(world, "b", world.small)  # 256 MB: 768 of 1024 now, 1280 after the change
    response = op_client.get(reverse("op_approvals"))
    (row,) = response.context["plan_changes"]
    assert row.capacity_warnings == ["Approving puts local at 1280 / 1024 MB memory, above its 1× limit"]
    response = op_client.get(reverse("op_server_detail", args=[growing.uuid]))
    assert b"Approving puts local at 1280 / 1024 MB memory, above its 1" in response.content


def test_operator_edits_the_ratios_and_it_is_audited(op_client, world):
    url = reverse("op_node_edit", args=["local"])
    assert op_client.get(url).status_code == 200
    fields = {"cpus": 2, "memory_mb": 4096, "disk_mb": 65536, "cpu_ratio": "2.5", "memory_ratio": "1.2",
              "disk_ratio": "1", "is_active": "on"}
    response = op_client.post(url, fields)
    assert response.status_code == 302
    world.node.refresh_from_db()
    assert (world.node.cpu_ratio, world.node.memory_ratio) == (Decimal("2.5"), Decimal("1.2"))
    entry = AuditEntry.objects.get(action="node.update")
    assert entry.details["changes"] == {"cpu_ratio": "2.5", "memory_ratio": "1.2"}
    assert entry.actor == world.operator
    # Nonsense is a form error, and nothing changes.
    response = op_client.post(url, {**fields, "cpu_ratio": "0", "memory_mb": 0})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"cpu_ratio", "memory_mb"}
    world.node.refresh_from_db()
    assert world.node.cpu_ratio == Decimal("2.5")
    assert op_client.get(reverse("op_node_edit", args=["nowhere"])).status_code == 404


def test_tenants_cannot_edit_nodes(client, world):
    client.force_login(world.alice)
    url = reverse("op_node_edit", args=["local"])
    assert client.get(url).status_code == 403
    assert client.post(url, {"cpu_ratio": "100"}).status_code == 403
    world.node.refresh_from_db()
    assert world.node.cpu_ratio == Decimal("4")


def test_the_warnings_cost_no_query_per_row(op_client, world):
    """The nodes' figures are read once (one aggregate query) however many rows wait."""
    Node.objects.create(name="second", queue_name="second")

    def queries(n: int) -> int:
        for i in range(n):
            server(world, f"ask-{n}-{i}", world.small, state=State.REQUESTED, tenant=world.initech)
        with CaptureQueriesContext(connection) as captured:
            assert op_client.get(reverse("op_approvals")).status_code == 200
        return len(captured)

    few, many = queries(1), queries(30)
    assert many == few, (few, many)
