"""The node's heartbeat (vservers.nodes.heartbeat) and what the panel shows of a silent node
(vservers.nodes.status): a real `manage.py nodeworker` process writes Node.last_seen from its
heartbeat thread; stopped with SIGSTOP it falls silent, and after PANEL_NODE_TIMEOUT_SECONDS
the node shows "unreachable" and its server "unknown" (never "stopped") on the pages and in
the API, while the database keeps the server's state; SIGCONT, and it comes back by itself."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone

from tests.panel import faults
from tests.panel.faults import process_state, wait_until
from vservers.models import Node, State, VirtualServer
from vservers.nodes import status
from vservers.nodes.heartbeat import Heartbeat

pytestmark = pytest.mark.django_db(transaction=True)

file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers

HEARTBEAT = 1  # seconds, the worker's PANEL_HEARTBEAT_SECONDS in this test
TIMEOUT = 3  # seconds, PANEL_NODE_TIMEOUT_SECONDS of the worker and of the pages here


def last_seen(node):
    return Node.objects.get(pk=node.pk).last_seen


def shown(client, api, server) -> dict:
    """What the pages and the API show of SERVER and its node now."""
    client.force_login(api.operator)
    dashboard = client.get(reverse("op_dashboard")).content.decode()
    nodes = client.get(reverse("op_nodes")).content.decode()
    op_detail = client.get(reverse("op_server_detail", args=[server.uuid])).content.decode()
    op_list = client.get(reverse("op_servers")).content.decode()
    api_node = api.operator_client.get(f"/api/v1/operator/nodes/{server.node.name}/").json()
    client.force_login(api.alice)
    tenant_list = client.get(reverse("server_list")).content.decode()
    tenant_detail = client.get(reverse("server_detail", args=[server.uuid])).content.decode()
    api_server = api.alice_client.get(f"/api/v1/servers/{server.uuid}/").json()
    api_list = api.alice_client.get("/api/v1/servers/").json()
    return {
        "dashboard": dashboard, "nodes": nodes, "op_detail": op_detail, "op_list": op_list,
        "tenant_list": tenant_list, "tenant_detail": tenant_detail,
        "api_node": api_node["status"], "api_server": api_server["state"],
        "api_list": [row["state"] for row in api_list["results"]],
    }


@pytest.fixture
def api_clients(fault_world):
    from rest_framework.test import APIClient

    from api import actions

    def client(user):
        made = APIClient()
        made.credentials(HTTP_AUTHORIZATION=f"Bearer {actions.create(user, name='hb', scope='read', days=1)[1]}")
        return made

    fault_world.operator_client = client(fault_world.operator)
    fault_world.alice_client = client(fault_world.alice)
    return fault_world


def test_a_stopped_worker_makes_its_node_unreachable_and_its_server_unknown_until_it_is_back(
    fault_world, api_clients, provision, workers, client, settings
):
    world = fault_world
    server = provision("web")
    node = world.node
    Node.objects.filter(pk=node.pk).update(last_seen=None)
    settings.PANEL_NODE_TIMEOUT_SECONDS = TIMEOUT
    env = {"PANEL_HEARTBEAT_SECONDS": str(HEARTBEAT), "PANEL_NODE_TIMEOUT_SECONDS": str(TIMEOUT)}
    worker = workers(env=env)

    # The heartbeat: beats keep coming, a second apart.
    first = wait_until(lambda: last_seen(node), "the worker's first heartbeat")
    wait_until(lambda: last_seen(node) > first, "a second heartbeat")
    assert Node.objects.get(pk=node.pk).is_online
    seen = shown(client, api_clients, server)
    assert 'id="node-status-local">online' in seen["nodes"] and 'id="node-status-local">online' in seen["dashboard"]
    assert seen["api_node"] == "online"
    assert (seen["api_server"], seen["api_list"]) == ("running", ["running"])
    for page in ("op_detail", "op_list", "tenant_list", "tenant_detail"):
        assert "state-running" in seen[page] and "state-unknown" not in seen[page], page

    # Silent: SIGSTOP stops every thread of the worker, the heartbeat's too.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(worker.pid) == "T", "the worker to stop")
        stopped_at = timezone.now()
        wait_until(lambda: not Node.objects.get(pk=node.pk).is_online, "the node to go unreachable")
        # It went unreachable from the last beat before the stop: within the timeout of it.
        assert last_seen(node) <= stopped_at
        seen = shown(client, api_clients, server)
        assert 'id="node-status-local">unreachable' in seen["nodes"]
        assert 'id="node-status-local">unreachable' in seen["dashboard"]
        assert "unknown: node unreachable" in seen["dashboard"]
        assert seen["api_node"] == "unreachable"
        assert (seen["api_server"], seen["api_list"]) == ("unknown", ["unknown"])
        for page in ("op_detail", "op_list", "tenant_list", "tenant_detail"):
            assert "state-unknown" in seen[page] and "Unknown (node unreachable)" in seen[page], page
            assert "state-running" not in seen[page] and "state-stopped" not in seen[page], page
        # Only shown so: the database keeps what the worker last saw.
        assert VirtualServer.objects.get(pk=server.pk).state == State.RUNNING
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    # Back by itself.
    wait_until(lambda: Node.objects.get(pk=node.pk).is_online, "the node to come back")
    seen = shown(client, api_clients, server)
    assert 'id="node-status-local">online' in seen["nodes"]
    assert (seen["api_node"], seen["api_server"]) == ("online", "running")
    for page in ("op_detail", "op_list", "tenant_list", "tenant_detail"):
        assert "state-running" in seen[page] and "state-unknown" not in seen[page], page


def test_a_live_page_polled_with_its_etag_changes_when_the_node_goes_silent(fault_world, make_server, client,
                                                                             settings):
    """The pages poll with ETags (views/live.py): a heartbeat that stops changes no row, so
    the fingerprints must see the clock pass the timeout."""
    world = fault_world
    server = make_server("web", state=State.RUNNING, node=world.node)
    Node.objects.filter(pk=world.node.pk).update(last_seen=timezone.now())
    settings.PANEL_NODE_TIMEOUT_SECONDS = TIMEOUT
    client.force_login(world.alice)
    pages = [reverse("server_list"), reverse("server_detail", args=[server.uuid])]
    etags = {url: client.get(url)["ETag"] for url in pages}
    client.force_login(world.operator)
    op_pages = [reverse("op_dashboard"), reverse("op_server_detail", args=[server.uuid]), reverse("op_servers")]
    etags.update({url: client.get(url)["ETag"] for url in op_pages})
    for url in op_pages:
        assert client.get(url, HTTP_IF_NONE_MATCH=etags[url], HTTP_X_LIVE="1").status_code == 304, url
    Node.objects.filter(pk=world.node.pk).update(last_seen=timezone.now() - timedelta(seconds=TIMEOUT + 1))
    for url in op_pages:
        assert client.get(url, HTTP_IF_NONE_MATCH=etags[url], HTTP_X_LIVE="1").status_code == 200, url
    client.force_login(world.alice)
    for url in pages:
        assert client.get(url, HTTP_IF_NONE_MATCH=etags[url], HTTP_X_LIVE="1").status_code == 200, url


def test_the_heartbeat_outlives_a_database_outage(fault_world):
    """The thread's own connection fails (its database cannot be opened: the settings it
    connects with for each beat name a file in a directory that does not exist) and comes
    back; the thread keeps beating and does not end."""
    from django.db import connections

    world = fault_world
    if connections["default"].vendor != "sqlite":
        pytest.skip("the outage is made with the SQLite file's name")
    Node.objects.filter(pk=world.node.pk).update(last_seen=None)
    beat = Heartbeat(["default"], period=0.2)
    beat.start()
    try:
        wait_until(lambda: last_seen(world.node), "the first beat")
        # The dict every new connection is made from (this thread's is open already).
        connect_with = connections.settings["default"]
        name = connect_with["NAME"]
        connect_with["NAME"] = "/nonexistent/panel.sqlite3"
        try:
            wait_until(lambda: beat.failing, "the heartbeat to see the outage")
            assert beat.is_alive()
        finally:
            connect_with["NAME"] = name
        before = beat.beats
        wait_until(lambda: beat.beats > before and not beat.failing, "a beat after the outage")
        assert beat.is_alive()
    finally:
        beat.stop()
    assert not beat.is_alive()


def test_status_is_node_is_online():
    now = timezone.now()
    assert status.is_online(now) and not status.is_online(None)
    old = now - timedelta(seconds=django_settings.PANEL_NODE_TIMEOUT_SECONDS + 1)
    assert not status.is_online(old) and not Node(last_seen=old).is_online
    assert status.shown_state("stopped", False) == "unknown"
    assert status.shown_state("requested", False) == "requested"
    assert status.shown_state("running", True) == "running"
