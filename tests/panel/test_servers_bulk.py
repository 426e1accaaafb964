"""The operator's bulk actions on the server list (vservers.actions.bulk, views.operator.
servers_bulk): one confirmation naming the count, then each server through the same action
as a click on its own page: its own operation, audit entry, or refusal with the reason."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry
from vservers import actions
from vservers.models import Operation, OperationKind, OperationStatus, State, VirtualServer

BULK = "/operator/servers/bulk/"


@pytest.fixture
def w(offline_world):
    """acme's web1..web3 running, web4 stopped, globex's db running."""
    w = offline_world

    def server(tenant, name, state):
        return VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=state)

    w.running = [server(w.acme, f"web{i}", State.RUNNING) for i in (1, 2, 3)]
    w.stopped = server(w.acme, "web4", State.STOPPED)
    w.db = server(w.globex, "db", State.RUNNING)
    return w


def uuids(*servers) -> list[str]:
    return [str(s.uuid) for s in servers]


def test_the_list_has_a_box_per_server_and_one_for_all_that_match(client, w):
    client.force_login(w.operator)
    page = client.get("/operator/servers/?tenant=acme").content.decode()
    assert page.count('name="server"') == 4
    assert 'data-count="4"' in page and "all 4 servers matching the filter" in page
    assert '<input type="hidden" name="tenant" value="acme">' in page  # the filter goes along
    assert 'data-bulk' in page and 'name="confirmed" value=""' in page


def test_without_a_confirmed_count_the_panel_asks_once_naming_it(client, w):
    client.force_login(w.operator)
    response = client.post(BULK, {"action": "stop", "server": uuids(*w.running, w.stopped)})
    body = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Stop 4 servers?</h1>" in body
    assert body.count('<input type="hidden" name="server"') == 4 and 'name="confirmed" value="yes"' in body
    assert not Operation.objects.exists() and w.queued == []
    delete = client.post(BULK, {"action": "delete", "server": uuids(w.stopped)}).content.decode()
    assert "<h1>Delete 1 server and everything in it?</h1>" in delete


def test_a_confirmed_stop_queues_each_server_and_lists_the_refused(client, w):
    client.force_login(w.operator)
    response = client.post(BULK, {"action": "stop", "server": uuids(*w.running, w.stopped), "confirmed": "yes",
                                  "tenant": "acme"}, follow=True)
    assert response.redirect_chain == [("/operator/servers/?tenant=acme", 302)]
    body = response.content.decode()
    assert "Stop: 3 servers queued." in body
    assert "1 refused: acme/web4 (cannot stop while the server is stopped)." in body
    stops = Operation.objects.filter(kind=OperationKind.STOP)
    assert sorted(op.server.name for op in stops) == ["web1", "web2", "web3"]
    assert w.queued == list(stops.order_by("pk"))
    # One audit entry per server, each as a click of its own button.
    entries = AuditEntry.objects.filter(action="server.stop", actor=w.operator)
    assert sorted(e.object_repr for e in entries) == ["acme/web1", "acme/web2", "acme/web3"]


def test_all_that_match_the_filter(client, w):
    client.force_login(w.operator)
    client.post(BULK, {"action": "restart", "all": "on", "state": "running", "confirmed": "yes"})
    restarted = Operation.objects.filter(kind=OperationKind.RESTART).values_list("server__name", flat=True)
    assert sorted(restarted) == ["db", "web1", "web2", "web3"]
    # The page asks with the number that matches now.
    asked = client.post(BULK, {"action": "start", "all": "on", "tenant": "acme", "state": "stopped"})
    assert "<h1>Start 1 server?</h1>" in asked.content.decode()


def test_bulk_retry_retries_the_failed_latest_operations(w):
    failed = Operation.objects.create(server=w.stopped, kind=OperationKind.START, status=OperationStatus.FAILED)
    result = actions.bulk([w.stopped, w.running[0]], "retry", w.operator)
    assert [(op.kind, op.retry_of) for op in result.queued] == [(OperationKind.START, failed)]
    assert result.refused == [(w.running[0], "its latest operation did not fail")]


def test_nothing_chosen_or_a_bad_action_is_a_message(client, w):
    client.force_login(w.operator)
    response = client.post(BULK, {"action": "stop", "confirmed": "yes"}, follow=True)
    assert "Choose the servers first" in response.content.decode()
    response = client.post(BULK, {"action": "reboot-all", "server": uuids(w.db), "confirmed": "yes"}, follow=True)
    assert "Choose one of the actions." in response.content.decode()
    assert not Operation.objects.exists()


def test_tenants_get_403(client, w):
    client.force_login(w.alice)
    assert client.post(BULK, {"action": "stop", "all": "on", "confirmed": "yes"}).status_code == 403
    assert not Operation.objects.exists()
