"""The user's mail settings page (a checkbox per kind of mail they can get; the link in the
user menu) and the count on the operator's Approvals link."""

from __future__ import annotations

import re

import pytest
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import Membership
from notifications.context_processors import approvals
from notifications.models import Event, OptOut
from vservers import actions
from vservers.models import State, VirtualServer

URL = "/accounts/notifications/"


def server(w, name, state=State.RUNNING, **fields):
    node = None if state == State.REQUESTED else w.node
    return VirtualServer.objects.create(tenant=w.acme, name=name, hostname=f"{name}.example.test", plan=w.small,
                                        template=w.busybox, state=state, node=node, **fields)


def checkboxes(response) -> dict[str, bool]:
    """name -> checked, of the page's checkboxes."""
    found = {}
    for tag in re.findall(r"<input[^>]*type=\"checkbox\"[^>]*>", response.content.decode()):
        found[re.search(r'name="([^"]+)"', tag)[1]] = " checked" in tag
    return found


def test_the_user_menu_links_to_the_mail_settings(client, offline_world):
    client.force_login(offline_world.alice)
    page = client.get(reverse("server_list")).content.decode()
    assert f'<a href="{URL}">Mail</a>' in page


def test_a_tenant_admin_chooses_among_the_tenant_kinds_and_opting_out_stops_the_rows(client, offline_world):
    w = offline_world
    client.force_login(w.alice)

    page = client.get(URL)
    assert page.status_code == 200
    assert checkboxes(page) == {"approved": True, "rejected": True, "ready": True, "stopped": True, "alert": True}

    response = client.post(URL, {"approved": "on", "ready": "on", "alert": "on"})  # rejected and stopped off
    assert response.status_code == 302 and response["Location"] == URL
    assert set(OptOut.objects.filter(user=w.alice).values_list("event", flat=True)) == {"rejected", "stopped"}
    assert checkboxes(client.get(URL)) == {"approved": True, "rejected": False, "ready": True, "stopped": False,
                                           "alert": True}

    request = actions.request_server(w.acme, w.alice, name="web", hostname="web.example.test", plan=w.small,
                                     template=w.busybox)
    actions.reject(request, "no")
    from notifications.models import OutboxMail

    assert not OutboxMail.objects.filter(event=Event.REJECTED).exists()

    client.post(URL, {"approved": "on", "ready": "on", "rejected": "on", "stopped": "on", "alert": "on"})
    assert not OptOut.objects.filter(user=w.alice).exists()


def test_operators_choose_among_the_operator_kinds_read_only_members_have_none(client, offline_world,
                                                                              django_user_model):
    w = offline_world
    client.force_login(w.operator)
    assert checkboxes(client.get(URL)) == {"request": True, "plan_change": True}
    client.post(URL, {"request": "on", "approved": ""})  # a kind it does not offer is ignored
    assert list(OptOut.objects.filter(user=w.operator).values_list("event", flat=True)) == ["plan_change"]

    reader = django_user_model.objects.create_user("reader", "reader@acme.test")
    Membership.objects.create(user=reader, tenant=w.acme, role=Membership.READONLY)
    client.force_login(reader)
    page = client.get(URL)
    assert checkboxes(page) == {}
    assert "There is no mail for your account" in page.content.decode()


def test_the_approvals_link_counts_requests_and_plan_changes_waiting(client, offline_world):
    w = offline_world
    server(w, "r1", state=State.REQUESTED)
    server(w, "r2", state=State.REQUESTED)
    server(w, "p1", requested_plan=w.medium)
    server(w, "old", state=State.DELETED, requested_plan=w.medium)  # not waiting: deleted
    server(w, "gone", state=State.REJECTED)
    client.force_login(w.operator)

    page = client.get(reverse("op_servers")).content.decode()

    link = re.search(r'<a [^>]*id="op-nav-approvals"[^>]*>(.*?)</a>', page, re.S)[1]
    assert link == 'Approvals <span class="nav-count">3<span class="visually-hidden"> waiting</span></span>'


def test_the_count_is_one_query_and_only_for_staff(offline_world, django_assert_num_queries):
    w = offline_world
    server(w, "r1", state=State.REQUESTED)
    factory = RequestFactory()

    request = factory.get("/")
    request.user = w.operator
    waiting = approvals(request)["approvals_waiting"]
    with django_assert_num_queries(1):
        assert (waiting.total, waiting.requests, waiting.plan_changes) == (1, 1, 0)

    request.user = w.alice
    with django_assert_num_queries(0):
        assert approvals(request) == {}


def test_nothing_waiting_shows_no_count(client, offline_world):
    client.force_login(offline_world.operator)
    page = client.get(reverse("op_servers")).content.decode()
    assert re.search(r'id="op-nav-approvals"[^>]*>Approvals</a>', page)


@pytest.mark.parametrize("user", ["alice", "operator"])
def test_the_settings_page_needs_a_signed_in_user(client, offline_world, user):
    assert client.get(URL)["Location"].startswith("/accounts/login/")
    client.force_login(getattr(offline_world, user))
    assert client.get(URL).status_code == 200
