"""GET /api/v1/servers/{uuid}/usage/?window=: the series the server page plots, for programs,
under the page's access rules (vservers.access): the owner's tokens, read-only ones too, and
operators read it; another tenant gets 404; a bad window is a 400 in the API's error shape."""

from __future__ import annotations

import pytest

from accounts.models import Membership
from vservers.models import State, VirtualServer
from vservers.usage import queries


@pytest.fixture
def w(offline_world, api, django_user_model):
    w = offline_world
    w.server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.RUNNING)
    w.url = f"/api/v1/servers/{w.server.uuid}/usage/"
    carol = django_user_model.objects.create_user("carol", "carol@acme.test", "carol password 1")
    Membership.objects.create(user=carol, tenant=w.acme, role=Membership.READONLY)
    w.readers = {"alice": api(w.alice), "alice-read": api(w.alice, "read"), "carol": api(carol, "read"),
                 "operator": api(w.operator, "read")}
    w.bob_api = api(w.bob)
    return w


@pytest.mark.parametrize("window", queries.WINDOWS)
def test_readers_get_the_series_and_the_plans_limits(w, window):
    for who, client in w.readers.items():
        response = client.get(w.url, {"window": window})
        assert response.status_code == 200, (who, response.content)
        body = response.json()
        assert body["window"] == window and len(body["t"]) == len(body["metrics"]["cpu"]) > 0
        assert body["limits"] == {"cpu": 0.5, "memory": 256 << 20, "disk": 1024 << 20, "pids": w.small.pids}


def test_another_tenant_gets_404_and_a_bad_window_400(w):
    response = w.bob_api.get(w.url)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    response = w.readers["alice"].get(w.url, {"window": "1y"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and list(body["fields"]) == ["window"], body
    assert w.readers["alice"].post(w.url).status_code == 405


def test_the_schema_names_the_endpoint_and_its_window(w):
    schema = w.readers["alice"].get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/servers/{uuid}/usage/"]["get"]
    window = next(p for p in operation["parameters"] if p["name"] == "window")
    assert window["schema"]["enum"] == list(queries.WINDOWS)
    assert {"200", "400", "404"} <= set(operation["responses"])
