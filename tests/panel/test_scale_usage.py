"""The pages that show usage over time make a bounded number of queries with 1,000 servers and
a year of history each (and the node's total): the history is read in ONE query per page or
JSON answer, whatever the number of servers or the length of the history. Counting queries,
not timing them. The history comes from the usage storage's own generator
(vservers.usage.synthetic: the rows the sampler and the rollups would leave)."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.panel.test_scale import crowd  # noqa: F401 - the fixture: 1,000 servers, 10,000 operations
from vservers.models import Node, State, UsageDaily, UsageFiveMin, UsageRaw, VirtualServer
from vservers.usage import queries, synthetic

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
USAGE_TABLES = ("vservers_usageraw", "vservers_usagefivemin", "vservers_usagedaily")
# The most queries each may make, session, user and role included. Pages: the list pages' bound
# of test_scale.py (the other parts of a page, alerts for one, have their own); the answers with
# the series: their own access check and the one query of the history. Measured: the printout.
PAGE_BOUND = 20
# The server pages carry the keep-and-restore cards (issue 15), each with its own few rows
# whatever the number of servers or the history's length: snapshots, backups, the backup
# schedule, a backup running, the templates a reinstall may choose.
BOUNDS = {"usage JSON": 5, "API usage": 6, "node JSON": 5, "tenant server page": 24, "operator server page": 24}


def _count(client, url: str, **params) -> tuple[int, int, object]:
    """(queries, of them on the usage tables, the response) of a GET of URL."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params)
    assert response.status_code == 200, (url, response.status_code)
    sql = [q["sql"] for q in captured.captured_queries]
    return len(sql), sum(any(table in s for table in USAGE_TABLES) for s in sql), response


def test_usage_pages_stay_bounded_with_a_year_of_history_at_1000_servers(client, crowd, capsys):  # noqa: F811
    from api import actions

    alice, operator = crowd
    node = Node.objects.get()
    ids = list(VirtualServer.objects.order_by("pk").values_list("pk", flat=True))
    began = time.monotonic()
    rows = synthetic.fill(node.pk, [*ids, None], int(time.time()))
    filled = time.monotonic() - began
    assert UsageRaw.objects.count() == rows["raw"] and rows["5min"] >= 1001 * 30 and rows["daily"] >= 1001 * 12
    assert UsageDaily.objects.filter(server_id=ids[0]).count() >= 12  # a year: a row a month

    server = VirtualServer.objects.filter(tenant__memberships__user=alice, state=State.RUNNING).order_by("pk")[0]
    measured: dict[str, tuple[int, int]] = {}

    client.force_login(alice)
    count, usage, response = _count(client, reverse("server_list"))
    measured["tenant list"] = (count, usage)
    assert response.content.count(b'<svg class="sparkline"') == 50  # every row of the page has its line
    count, usage, response = _count(client, reverse("server_detail", args=[server.uuid]))
    measured["tenant server page"] = (count, usage)
    assert b"data-usage-url" in response.content
    for window in queries.WINDOWS:
        count, usage, response = _count(client, reverse("server_usage", args=[server.uuid]), window=window)
        body = response.json()
        assert sum(v is not None for v in body["metrics"]["cpu"]) > len(body["t"]) // 2, window  # the history
        measured["usage JSON"] = max(measured.get("usage JSON", (0, 0)), (count, usage))

    token = actions.create(alice, name="scale", scope="read", days=1)[1]
    api = Client(headers={"Authorization": f"Bearer {token}"})
    for window in queries.WINDOWS:
        count, usage, _ = _count(api, f"/api/v1/servers/{server.uuid}/usage/", window=window)
        measured["API usage"] = max(measured.get("API usage", (0, 0)), (count, usage))

    client.force_login(operator)
    count, usage, response = _count(client, reverse("op_servers"))
    measured["operator server list"] = (count, usage)
    assert response.content.count(b'<svg class="sparkline"') == 50
    count, usage, _ = _count(client, reverse("op_server_detail", args=[server.uuid]))
    measured["operator server page"] = (count, usage)
    count, usage, _ = _count(client, reverse("op_node_usage", args=[node.name]))
    measured["node page"] = (count, usage)
    for window in queries.WINDOWS:
        count, usage, response = _count(client, reverse("op_node_usage_json", args=[node.name]), window=window)
        assert any(v is not None for v in response.json()["metrics"]["cpu"]), window
        measured["node JSON"] = max(measured.get("node JSON", (0, 0)), (count, usage))

    with capsys.disabled():
        print(f"\nhistory: {rows} rows for 1,000 servers and the node, written in {filled:.1f} s")
        for name, (count, usage) in measured.items():
            print(f"{name}: {count} queries, {usage} of them on the usage history")
    for name, (count, usage) in measured.items():
        assert count <= BOUNDS.get(name, PAGE_BOUND), (name, count)
        # The lists read their sparklines and the JSON its series in one query; the pages
        # themselves none (the plots load their JSON afterwards).
        assert usage == (1 if name in ("tenant list", "operator server list", "usage JSON", "API usage",
                                       "node JSON") else 0), (name, usage)
    assert UsageFiveMin.objects.count() == rows["5min"]
