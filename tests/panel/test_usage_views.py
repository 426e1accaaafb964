"""The usage views (vservers/views/usage.py): who may read a server's and a node's series,
what a bad window gets, what the JSON holds besides the series (the limits the plots draw),
and the sparklines of the server list (gaps break the line; no sample, no line)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Membership
from vservers.models import State, VirtualServer
from vservers.usage import queries
from vservers.views.sparklines import SPARK_HEIGHT, SPARK_WIDTH, sparkline

MIB = 1024 * 1024


@pytest.fixture
def w(offline_world, django_user_model):
    w = offline_world
    w.server = VirtualServer.objects.create(tenant=w.globex, name="web", hostname="web.globex.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.STOPPED)
    w.carol = django_user_model.objects.create_user("carol", "carol@globex.test", "carol password 1")
    Membership.objects.create(user=w.carol, tenant=w.globex, role=Membership.READONLY)
    w.url = reverse("server_usage", args=[w.server.uuid])
    return w


def _series_ok(body: dict, window: str) -> None:
    assert {"window", "step", "t", "metrics", "limits"} <= set(body), body.keys()
    assert body["window"] == window and body["step"] > 0
    assert all(len(values) == len(body["t"]) for values in body["metrics"].values())
    assert {"cpu", "memory", "disk", "pids", "net_in", "net_out"} <= set(body["metrics"])


@pytest.mark.parametrize("who", ["bob", "carol", "operator"])
@pytest.mark.parametrize("window", queries.WINDOWS)
def test_the_owner_a_read_only_member_and_an_operator_read_a_servers_usage(client, w, who, window):
    client.force_login(getattr(w, who))
    response = client.get(w.url, {"window": window})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    body = response.json()
    _series_ok(body, window)
    assert body["limits"] == {"cpu": 0.5, "memory": 256 * MIB, "disk": 1024 * MIB, "pids": w.small.pids}


def test_the_window_defaults_to_24_hours(client, w):
    client.force_login(w.bob)
    assert client.get(w.url).json()["window"] == "24h"


def test_another_tenants_server_is_not_found(client, w):
    client.force_login(w.alice)
    assert client.get(w.url).status_code == 404
    assert client.get(w.url, {"window": "nonsense"}).status_code == 404  # the server is checked first


def test_a_deleted_or_unknown_server_is_not_found(client, w):
    client.force_login(w.bob)
    assert client.get(reverse("server_usage", args=["00000000-0000-4000-8000-000000000000"])).status_code == 404
    VirtualServer.objects.filter(pk=w.server.pk).update(state=State.DELETED)
    assert client.get(w.url).status_code == 404


def test_a_stranger_signs_in_first_and_a_post_is_refused(client, w):
    response = client.get(w.url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    client.force_login(w.bob)
    assert client.post(w.url).status_code == 405


@pytest.mark.parametrize("window", ["", "2h", "24H", "1h ", "x" * 500, "30d;drop"])
def test_a_bad_window_is_a_clear_400(client, w, window):
    client.force_login(w.bob)
    response = client.get(w.url, {"window": window})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and "1h, 24h, 7d, 30d" in body["detail"]
    assert list(body["fields"]) == ["window"] and len(body["detail"]) < 120


def test_node_totals_are_the_operators(client, w):
    url = reverse("op_node_usage_json", args=[w.node.name])
    client.force_login(w.operator)
    response = client.get(url, {"window": "7d"})
    assert response.status_code == 200
    body = response.json()
    _series_ok(body, "7d")
    assert body["limits"] == {"cpu": w.node.cpus, "memory": w.node.memory_mb * MIB, "disk": w.node.disk_mb * MIB}
    assert client.get(url, {"window": "1y"}).status_code == 400
    assert client.get(reverse("op_node_usage_json", args=["nowhere"])).status_code == 404
    page = client.get(reverse("op_node_usage", args=[w.node.name]))
    assert page.status_code == 200 and f'data-usage-url="{url}"'.encode() in page.content
    for tenant_user in (w.bob, w.carol):
        client.force_login(tenant_user)
        assert client.get(url).status_code == 403
        assert client.get(reverse("op_node_usage", args=[w.node.name])).status_code == 403


def test_the_server_pages_carry_the_plots_and_the_nodes_page_links_the_totals(client, w):
    client.force_login(w.carol)
    page = client.get(reverse("server_detail", args=[w.server.uuid])).content.decode()
    assert f'data-usage-url="{w.url}"' in page and page.count("<figure") == 5
    assert 'aria-pressed="true"' in page and '<script src="/static/vendor/uPlot.iife.min.js" defer>' in page
    client.force_login(w.operator)
    page = client.get(reverse("op_server_detail", args=[w.server.uuid])).content.decode()
    assert f'data-usage-url="{w.url}"' in page
    nodes = client.get(reverse("op_nodes")).content.decode()
    assert reverse("op_node_usage", args=[w.node.name]) in nodes


def test_a_server_without_a_node_has_no_plots(client, w):
    VirtualServer.objects.filter(pk=w.server.pk).update(state=State.REQUESTED, node=None)
    client.force_login(w.bob)
    assert b"data-usage-url" not in client.get(reverse("server_detail", args=[w.server.uuid])).content


# -- sparklines --------------------------------------------------------------------------------


def _points(line: str) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in line.split()]  # type: ignore[misc]


def test_a_sparkline_breaks_at_a_gap_and_is_scaled_to_the_plan():
    drawn = sparkline([0.25, 0.5, None, None, 0.0, 0.25], limit=0.5)
    assert drawn is not None and len(drawn.lines) == 2
    first, second = (_points(line) for line in drawn.lines)
    assert first == [(0.0, SPARK_HEIGHT / 2), (SPARK_WIDTH / 5, 0.0)]  # 0.5 of 0.5 cores: the top
    assert second == [(SPARK_WIDTH * 4 / 5, SPARK_HEIGHT), (SPARK_WIDTH, SPARK_HEIGHT / 2)]
    assert drawn.label == "CPU over the last 24 hours: now 0.25, peak 0.5 of 0.5 cores"


def test_a_sparkline_above_the_limit_fits_and_a_lone_sample_is_a_dot():
    drawn = sparkline([None, 2.0, None, 1.0], limit=0.5)
    assert drawn is not None
    assert [_points(line) for line in drawn.lines] == [
        [(33.3, 0.0)] * 2, [(SPARK_WIDTH, SPARK_HEIGHT / 2)] * 2,  # one decimal is enough for 100 units
    ]


def test_no_sample_no_sparkline():
    assert sparkline([], limit=1) is None
    assert sparkline([None] * 48, limit=1) is None
