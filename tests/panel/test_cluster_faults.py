"""A move between two nodes with a worker killed (SIGKILL) on either side, or refused by the
target (issue 16), with two real node workers (tests/cluster_world.py). Every time the server
ends up on exactly one node, startable (here: running again, as it was), and nothing of it is
left on the other: no server directory, nothing under incoming/, no loop device or mount.

The middle is hit exactly, without timing: the worker stops itself at a named point (the
engine's "migrate-send:shipped-image", between the image and the config; the panel's
"migrate:received" and "migrate:started" on the target) and the test kills it there.
"""

from __future__ import annotations

import pytest

from tests import cluster_world
from tests.engine.helpers import http_get, wait_for_http
from tests.panel import faults
from tests.panel.faults import wait_gone, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

# The shared fixtures (tests/cluster_world.py, tests/panel/faults.py).
file_database = faults.file_database
cluster_nodes = cluster_world.cluster_nodes
cluster = cluster_world.cluster


def running_server(w):
    from vservers.actions import approve
    from vservers.models import OperationStatus, State, VirtualServer

    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.example", plan=w.small,
                                          template=w.busybox)
    operation = cluster_world.wait_finished(approve(server, w.operator, node=w.node_a, check_quota=False))
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + operation.detail
    server.refresh_from_db()
    assert server.state == State.RUNNING
    return server


def move(w, server):
    from vservers.migration.actions import request_migration

    cluster_world.keep_online(w.node_a, w.node_b)
    return request_migration(server, w.operator, target=w.node_b)


def assert_back_on_a(w, server, operation, old: list[str]) -> None:
    """The move failed; the server is on node a only, running again at its old address; node b
    holds nothing of it."""
    from vservers.models import Migration, MigrationPhase, OperationStatus, State

    cluster_world.wait_finished(operation, what="the failed move to be settled")
    assert operation.status == OperationStatus.FAILED
    assert "could not be moved" in operation.error or "interrupted" in operation.error
    assert Migration.objects.get(operation=operation).phase == MigrationPhase.FAILED

    def running_on_a():
        server.refresh_from_db()
        return server.state == State.RUNNING and w.a.has(server) == "running"

    wait_until(running_on_a, lambda: f"the server to run on node a again (it is {server.state}, "
                                     f"the kernel of a says {w.a.has(server)})")
    assert server.node == w.node_a and server.ip_list() == old
    wait_for_http(old[0], timeout=30, bridge=w.a.bridge)
    assert http_get(old[0], bridge=w.a.bridge)[0] == 200
    wait_until(lambda: w.b.incoming() == [], "node b to discard what arrived")
    assert w.b.has(server) == "missing"
    assert w.b.leaks() == []


def test_the_source_killed_mid_ship_leaves_the_server_on_the_source(cluster):
    first = cluster.start("a", engine_fault="migrate-send:shipped-image")
    cluster.start("b")
    server = running_server(cluster)
    old = server.ip_list()
    operation = move(cluster, server)
    first.wait_paused()
    assert cluster.b.incoming() == [server.engine_name]  # half a copy: the image, not the config
    assert cluster.a.has(server) == "stopped"
    first.kill()
    cluster.start("a")  # its recovery fails the move and starts the server again
    assert_back_on_a(cluster, server, operation, old)
    operation.refresh_from_db()
    assert operation.error.startswith("interrupted")


@pytest.mark.parametrize("phase", ["received", "started"])
def test_the_target_killed_mid_receive_leaves_the_server_on_the_source(cluster, phase):
    cluster.start("a")
    first = cluster.start("b", fault=f"migrate:{phase}")
    server = running_server(cluster)
    old = server.ip_list()
    operation = move(cluster, server)
    first.wait_paused()
    # Node b has adopted it (and started it): the database still places it on node a.
    expected = "stopped" if phase == "received" else "running"
    assert cluster.b.has(server) == expected
    init = cluster.b.engine.status(server.engine_name, with_addresses=False).init_pid if phase == "started" else None
    server.refresh_from_db()
    assert server.node == cluster.node_a and len(server.ip_list()) == 2  # old and new rows until the commit
    first.kill()
    cluster.start("b")  # its recovery removes its copy and hands the server back
    assert_back_on_a(cluster, server, operation, old)
    if init:
        assert wait_gone(init)  # the guest's init that the killed worker had adopted (reaped here)


def test_a_target_without_a_free_address_leaves_the_server_running_on_the_source(cluster):
    from vservers.models import IPAddress, IPPool

    cluster.start("a")
    cluster.start("b")
    server = running_server(cluster)
    old = server.ip_list()
    # Node b's one pool has a single address, and it is taken.
    IPPool.objects.filter(pk=cluster.pool_b.pk).update(network="198.19.241.0/30")
    IPAddress.objects.create(pool=cluster.pool_b, address="198.19.241.2")
    operation = move(cluster, server)
    assert_back_on_a(cluster, server, operation, old)
    operation.refresh_from_db()
    assert operation.error == ("The server could not be moved to another node; it stays where it was; "
                               "the operator has been told.")
    assert "no free address" in operation.detail and "node b" in operation.detail
