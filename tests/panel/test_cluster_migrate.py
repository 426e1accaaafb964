"""Moving a server between two nodes on this machine (issue 16), through the panel and two real
node workers (tests/cluster_world.py): the operator asks, the source's worker stops and ships,
the target's worker adopts and starts, and the source's copy goes.

 - a running busybox server with a file of its own moves: it answers HTTP at its new address
   on the target (route checked first), its file is there, the source has nothing left, and
   the operation says what happened;
 - a failure on the target (its pool has no free address) leaves the server running on the
   source, and nothing on the target.
"""

from __future__ import annotations

import pytest

from tests import cluster_world
from tests.engine.helpers import http_get, wait_for_http
from tests.panel import faults
from tests.panel.faults import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

# The shared fixtures (tests/cluster_world.py, tests/panel/faults.py).
file_database = faults.file_database
cluster_nodes = cluster_world.cluster_nodes
cluster = cluster_world.cluster


def running_server(w, name="web", node=None):
    """A server approved on NODE (default a) and provisioned by its worker; refreshed."""
    from vservers.actions import approve
    from vservers.models import OperationStatus, State, VirtualServer

    node = node or w.node_a
    server = VirtualServer.objects.create(tenant=w.acme, name=name, hostname=f"{name}.acme.example",
                                          plan=w.small, template=w.busybox)
    operation = cluster_world.wait_finished(approve(server, w.operator, node=node, check_quota=False))
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + operation.detail
    server.refresh_from_db()
    assert server.state == State.RUNNING
    return server


def page(node, address: str, path: str = "/") -> str:
    """The body of GET PATH at ADDRESS once it answers 200 (a fresh server's httpd needs a
    moment), only after `ip route get` names NODE's bridge."""
    wait_for_http(address, timeout=30, bridge=node.bridge)
    status, body = http_get(address, path=path, timeout=5, bridge=node.bridge)
    assert status == 200, body
    return body


def test_a_running_server_moves_with_its_files_and_answers_at_its_new_address(cluster):
    from vservers.migration.actions import request_migration
    from vservers.models import Migration, MigrationPhase, OperationStatus, State

    cluster.start("a")
    cluster.start("b")
    server = running_server(cluster)
    old = server.ip_list()
    name = server.engine_name
    cluster.a.engine.run(name, ["/bin/sh", "-c", "echo moved-with-me > /var/www/mine.txt"])
    assert page(cluster.a, old[0], "/mine.txt").strip() == "moved-with-me"

    cluster_world.keep_online(cluster.node_a, cluster.node_b)
    operation = request_migration(server, cluster.operator, target=cluster.node_b)
    cluster_world.wait_finished(operation, what="the move")
    assert operation.status == OperationStatus.SUCCEEDED, f"{operation.error}\n{operation.detail}"

    server.refresh_from_db()
    migration = Migration.objects.get(operation=operation)
    new = server.ip_list()
    assert (server.node, server.state, migration.phase) == (cluster.node_b, State.RUNNING, MigrationPhase.DONE)
    assert migration.readdress and migration.old_addresses == old and migration.new_addresses == new
    assert new[0].startswith("198.19.241.")  # node b's pool; the old address went back to a's
    assert migration.bytes_total > 0
    assert "Moved from node a to node b" in operation.output and new[0] in operation.output
    assert cluster.b.has(server) == "running"
    assert page(cluster.b, new[0], "/mine.txt").strip() == "moved-with-me"
    # The source's stopped copy goes with the cleanup job; nothing of it stays on node a.
    wait_until(lambda: cluster.a.has(server) == "missing", "the source's copy to be removed")
    assert cluster.a.leaks() == [] and cluster.b.incoming() == []


@pytest.fixture(scope="session")
def debian_on_a(cluster_nodes):
    """Debian bookworm with Apache on node a only: a move to b ships the template version
    along. The version the engine's tests built in this `make test` is lent (tests/template_cache.py);
    without one it is built here (debootstrap, about a minute)."""
    import shutil

    from tests import template_cache
    from vservers.engine import templates

    config = cluster_nodes["a"].config
    lent = template_cache.lend(config)
    if lent is not None:
        return lent
    assert shutil.which("debootstrap", path="/usr/sbin:/usr/bin"), "debootstrap is not installed (make install)"
    info = templates.build(config, "debian")
    template_cache.keep(config, info)
    return info


@pytest.mark.slow
def test_an_apache_server_moves_with_its_template_and_keeps_its_files(cluster, debian_on_a):
    from django.utils import timezone

    from vservers.actions import approve
    from vservers.engine import NotFound, templates
    from vservers.migration.actions import request_migration
    from vservers.models import BuiltTemplate, Migration, OperationStatus, State, Template, VirtualServer

    debian = Template.objects.create(name="debian", display_name="Debian")
    BuiltTemplate.objects.create(template=debian, node=cluster.node_a, version=debian_on_a.version,
                                 checked=timezone.now())
    with pytest.raises(NotFound):  # node b does not have it
        templates.get(cluster.b.config, "debian")
    cluster.start("a")
    cluster.start("b")
    server = VirtualServer.objects.create(tenant=cluster.acme, name="shop", hostname="shop.acme.example",
                                          plan=cluster.medium, template=debian)
    provisioned = cluster_world.wait_finished(approve(server, cluster.operator, node=cluster.node_a,
                                                      check_quota=False))
    assert provisioned.status == OperationStatus.SUCCEEDED, provisioned.error + provisioned.detail
    server.refresh_from_db()
    old = server.ip_list()[0]
    page(cluster.a, old)  # Apache answers on node a
    mine = "/var/www/html/order.txt"
    script = f"echo order-4711 > {mine} && chown www-data {mine}"
    result = cluster.a.engine.run(server.engine_name, ["/bin/sh", "-c", script])
    assert result.returncode == 0, result
    assert page(cluster.a, old, "/order.txt").strip() == "order-4711"

    cluster_world.keep_online(cluster.node_a, cluster.node_b)
    operation = cluster_world.wait_finished(request_migration(server, cluster.operator, target=cluster.node_b),
                                            timeout=600, what="the move of the Apache server")
    assert operation.status == OperationStatus.SUCCEEDED, f"{operation.error}\n{operation.detail}"
    server.refresh_from_db()
    new = server.ip_list()[0]
    assert (server.node, server.state) == (cluster.node_b, State.RUNNING)
    assert Migration.objects.get(operation=operation).bytes_total > debian_on_a.size_bytes // 2  # the template went too
    assert templates.get(cluster.b.config, "debian").version == debian_on_a.version
    assert page(cluster.b, new, "/order.txt").strip() == "order-4711"
    owner = cluster.b.engine.run(server.engine_name, ["stat", "-c", "%U", mine])
    assert owner.stdout.strip() == "www-data"  # its owner, shifted into node b's uid range and back
    wait_until(lambda: cluster.a.has(server) == "missing", "the source's copy to be removed")


def test_evacuate_drains_a_node_and_moves_every_server_off_it(cluster):
    """Through the operator's API: node a is marked draining and both its servers (one running,
    one stopped) move to b, placement choosing; they come back as they were. A tenant's admin
    is refused at the same URL (403, as at every operator endpoint of the API)."""
    from django.test import Client

    from vservers.actions import request_operation
    from vservers.models import FINISHED, Operation, OperationKind, OperationStatus, State

    cluster.start("a")
    cluster.start("b")
    web = running_server(cluster, "web")
    db = running_server(cluster, "db")
    stopped = cluster_world.wait_finished(request_operation(db, OperationKind.STOP, cluster.operator))
    assert stopped.status == OperationStatus.SUCCEEDED

    cluster_world.keep_online(cluster.node_a, cluster.node_b)
    tenant = Client()
    tenant.force_login(cluster.alice)
    assert tenant.post("/api/v1/operator/nodes/a/evacuate/").status_code == 403  # as every operator endpoint
    operator = Client()
    operator.force_login(cluster.operator)
    answer = operator.post("/api/v1/operator/nodes/a/evacuate/")
    assert answer.status_code == 202, answer.content
    assert answer.json()["refused"] == [] and len(answer.json()["queued"]) == 2
    cluster.node_a.refresh_from_db()
    assert cluster.node_a.draining

    moves = list(Operation.objects.filter(kind=OperationKind.MIGRATE))
    wait_until(lambda: all(m.refresh_from_db() or m.status in FINISHED for m in moves), "both moves to end",
               timeout=300)
    assert [m.status for m in moves] == [OperationStatus.SUCCEEDED] * 2, [m.detail for m in moves]
    for server, state in ((web, State.RUNNING), (db, State.STOPPED)):
        server.refresh_from_db()
        assert (server.node, server.state) == (cluster.node_b, state)
        assert cluster.b.has(server) == state
    page(cluster.b, web.ip_list()[0])
    wait_until(lambda: cluster.a.engine.names() == [], "node a to hold no server")
