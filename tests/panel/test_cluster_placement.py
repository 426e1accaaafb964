"""Placement with two real nodes (issue 16, point 5): approvals without a pinned node fill the
freer node first, the approval says where and why, and each server runs on the node chosen,
at an address of that node's pool (tests/cluster_world.py: two engines, bridges and workers)."""

from __future__ import annotations

import pytest

from tests import cluster_world
from tests.engine.helpers import wait_for_http
from tests.panel import faults

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

# The shared fixtures (tests/cluster_world.py, tests/panel/faults.py).

file_database = faults.file_database
cluster_nodes = cluster_world.cluster_nodes
cluster = cluster_world.cluster


def test_approvals_fill_the_freer_node_first(cluster):
    from vservers.actions import approve, approve_placed
    from vservers.models import OperationStatus, State, VirtualServer

    cluster.start("a")
    cluster.start("b")

    def request(name):
        return VirtualServer.objects.create(tenant=cluster.acme, name=name, hostname=f"{name}.acme.example",
                                            plan=cluster.medium, template=cluster.busybox)

    # Node a carries one server already (pinned there): b is the freer node.
    first = request("first")
    cluster_world.wait_finished(approve(first, cluster.operator, node=cluster.node_a, check_quota=False))
    cluster_world.keep_online(cluster.node_a, cluster.node_b)
    placed = []
    for name in ("one", "two", "three"):
        server = request(name)
        approval = approve_placed(server, cluster.operator, check_quota=False)
        placed.append((server, approval))
    # b (freer), then a and b even: a by name, then b.
    assert [approval.placement.node.name for _, approval in placed] == ["b", "a", "b"]
    assert placed[0][1].message.startswith("Placed on node b: ")
    assert "free" in placed[0][1].message
    for server, approval in placed:
        operation = cluster_world.wait_finished(approval.operation)
        assert operation.status == OperationStatus.SUCCEEDED, operation.error + operation.detail
        server.refresh_from_db()
        node = getattr(cluster, server.node.name)
        assert server.state == State.RUNNING and node.has(server) == "running"
        address = server.ip_list()[0]
        assert address.startswith(node.network.rsplit(".", 1)[0] + ".")
        wait_for_http(address, timeout=30, bridge=node.bridge)
