"""A rejected request stays in its tenant's server list with the operator's reason until a
tenant admin dismisses it (POST, audited); another tenant can neither see nor dismiss it."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry, Membership
from vservers.models import State, VirtualServer

LIST = "/servers/"
REASON = "Plan not available in your region"


@pytest.fixture
def rejected(offline_world):
    w = offline_world
    server = VirtualServer.objects.create(
        tenant=w.acme, name="acme-big", hostname="big.acme.test", plan=w.small, template=w.busybox,
        state=State.REQUESTED,
    )
    assert server.reject(REASON)
    return server


def dismiss_url(server) -> str:
    return f"/servers/{server.uuid}/dismiss/"


def test_the_tenant_sees_the_rejected_request_and_the_reason(client, offline_world, rejected):
    client.force_login(offline_world.alice)
    page = client.get(LIST).content.decode()
    assert "acme-big" in page and REASON in page and dismiss_url(rejected) in page
    # ... on every visit, until dismissed.
    assert REASON in client.get(LIST).content.decode()


def test_dismissing_hides_it_and_is_audited(client, offline_world, rejected):
    client.force_login(offline_world.alice)
    response = client.post(dismiss_url(rejected))
    assert response.status_code == 302 and response["Location"] == LIST
    assert REASON not in client.get(LIST).content.decode()
    rejected.refresh_from_db()
    assert rejected.dismissed and rejected.state == State.REJECTED
    entry = AuditEntry.objects.get(action="server.dismiss")
    assert (entry.actor, entry.tenant, entry.object_id) == (offline_world.alice, offline_world.acme, str(rejected.uuid))
    # A second dismissal finds nothing.
    assert client.post(dismiss_url(rejected)).status_code == 404
    assert AuditEntry.objects.filter(action="server.dismiss").count() == 1


def test_dismissing_takes_a_post(client, offline_world, rejected):
    client.force_login(offline_world.alice)
    assert client.get(dismiss_url(rejected)).status_code == 405
    rejected.refresh_from_db()
    assert not rejected.dismissed


def test_another_tenant_can_neither_see_nor_dismiss_it(client, offline_world, rejected):
    client.force_login(offline_world.bob)
    page = client.get(LIST).content.decode()
    assert "acme-big" not in page and REASON not in page
    assert client.post(dismiss_url(rejected)).status_code == 404
    rejected.refresh_from_db()
    assert not rejected.dismissed


def test_a_read_only_member_sees_it_but_cannot_dismiss_it(client, offline_world, rejected, django_user_model):
    carol = django_user_model.objects.create_user("carol", "carol@acme.test", "x")
    Membership.objects.create(user=carol, tenant=offline_world.acme, role=Membership.READONLY)
    client.force_login(carol)
    page = client.get(LIST).content.decode()
    assert REASON in page and dismiss_url(rejected) not in page
    assert client.post(dismiss_url(rejected)).status_code == 403
    rejected.refresh_from_db()
    assert not rejected.dismissed


def test_live_servers_cannot_be_dismissed(client, offline_world, rejected):
    rejected.dismiss()
    live = VirtualServer.objects.create(
        tenant=offline_world.acme, name="acme-big", hostname="big.acme.test", plan=offline_world.small,
        template=offline_world.busybox, state=State.REQUESTED,
    )
    client.force_login(offline_world.alice)
    assert client.post(dismiss_url(live)).status_code == 404
