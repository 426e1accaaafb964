"""The console's ticket views (consoles.views): who gets a ticket for which server, as whom,
and what a ticket is (random, stored only as its hash, short-lived, audited). Database rows
only (offline_world): no engine, no broker.

The matrix: a tenant admin on their own running server gets one; a read-only member 403;
another tenant's server 404 (as every other view); an operator, any server, from the operator's
area only; a stopped server and an unknown or system account get a plain sentence and no
ticket; a session whose user has two-factor sign-in but did not give the code gets nothing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry, Membership
from consoles.models import ConsoleSession, ticket_hash
from vservers.models import GuestAccount, State, VirtualServer


@pytest.fixture
def w(offline_world, django_user_model):
    w = offline_world

    def server(tenant, name, state=State.RUNNING):
        made = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.example.test",
                                            plan=w.small, template=w.busybox, node=w.node, state=state)
        GuestAccount.objects.create(server=made, name="www", uid=1000, home="/home/www", shell="/bin/sh")  # noqa: S604
        GuestAccount.objects.create(server=made, name="daemon", uid=1, home="/", shell="/bin/false",  # noqa: S604
                                    is_system=True)
        return made

    w.web = server(w.acme, "web")
    w.stopped = server(w.acme, "cold", State.STOPPED)
    w.theirs = server(w.globex, "theirs")
    w.viewer = django_user_model.objects.create_user("carol", "carol@acme.test", "carol password 1")
    Membership.objects.create(user=w.viewer, tenant=w.acme, role=Membership.READONLY)
    return w


def client_for(user) -> Client:
    client = Client(REMOTE_ADDR="198.51.100.4")
    client.force_login(user)
    return client


def tenant_ticket(server):
    return f"/servers/{server.uuid}/console/ticket/"


def operator_ticket(server):
    return f"/operator/servers/{server.uuid}/console/ticket/"


def test_an_owner_admin_gets_a_ticket_bound_to_user_server_and_account(w, settings):
    before = timezone.now()
    response = client_for(w.alice).post(tenant_ticket(w.web), {"account": "www"})
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["websocket"] == f"/ws/servers/{w.web.uuid}/console/"
    ticket = answer["ticket"]
    assert len(ticket) >= 43  # token_urlsafe(32): 256 bits
    row = ConsoleSession.objects.get()
    # Only the hash is kept: the database opens no console.
    assert row.ticket_hash == ticket_hash(ticket) != ticket
    assert not ConsoleSession.objects.filter(ticket_hash=ticket).exists()
    assert (row.user, row.server, row.account, row.client_address) == (w.alice, w.web, "www", "198.51.100.4")
    assert row.started is None and row.ended is None
    lifetime = row.expires - before
    assert timedelta(seconds=settings.PANEL_CONSOLE_TICKET_SECONDS - 5) < lifetime
    assert lifetime <= timedelta(seconds=settings.PANEL_CONSOLE_TICKET_SECONDS + 5)
    entry = AuditEntry.objects.get(action="console.ticket")
    assert (entry.actor, entry.object_id, entry.details["account"]) == (w.alice, str(w.web.uuid), "www")
    # Each ticket is new.
    again = client_for(w.alice).post(tenant_ticket(w.web)).json()
    assert again["ticket"] != ticket
    assert ConsoleSession.objects.get(ticket_hash=ticket_hash(again["ticket"])).account == "root"


def test_a_read_only_member_gets_403_and_no_ticket(w):
    client = client_for(w.viewer)
    assert client.get(f"/servers/{w.web.uuid}/console/").status_code == 403
    assert client.post(tenant_ticket(w.web)).status_code == 403
    assert not ConsoleSession.objects.exists()


def test_another_tenants_server_is_not_found(w):
    client = client_for(w.alice)
    assert client.get(f"/servers/{w.theirs.uuid}/console/").status_code == 404
    assert client.post(tenant_ticket(w.theirs)).status_code == 404
    # Nor does the operator's area open for a tenant.
    assert client.post(operator_ticket(w.theirs)).status_code == 403
    assert not ConsoleSession.objects.exists()


def test_an_operator_opens_any_server_from_the_operators_area(w):
    client = client_for(w.operator)
    assert client.get(f"/operator/servers/{w.theirs.uuid}/console/").status_code == 200
    response = client.post(operator_ticket(w.theirs))
    assert response.status_code == 200
    row = ConsoleSession.objects.get(ticket_hash=ticket_hash(response.json()["ticket"]))
    assert (row.user, row.server, row.account) == (w.operator, w.theirs, "root")


def test_a_stopped_server_gets_a_plain_sentence_and_no_ticket(w):
    response = client_for(w.alice).post(tenant_ticket(w.stopped))
    assert response.status_code == 409
    assert response.json() == {"error": "The server is not running. Start it to open a console."}
    page = client_for(w.alice).get(f"/servers/{w.stopped.uuid}/console/")
    assert page.status_code == 200
    assert b"The server is not running" in page.content and b"data-console" not in page.content
    assert not ConsoleSession.objects.exists()


@pytest.mark.parametrize("account", ["nosuchuser", "daemon", "", "../etc", "x" * 40])
def test_an_unknown_or_system_account_gets_a_plain_sentence_and_no_ticket(w, account):
    response = client_for(w.alice).post(tenant_ticket(w.web), {"account": account})
    assert response.status_code == 400
    assert response.json() == {"error": "There is no such account in this server."}
    assert not ConsoleSession.objects.exists()


def test_the_page_offers_root_and_the_servers_own_accounts(w):
    page = client_for(w.alice).get(f"/servers/{w.web.uuid}/console/").content.decode()
    assert '<option value="root">root</option>' in page and '<option value="www">www</option>' in page
    assert 'value="daemon"' not in page
    # The server's page links to it; the operator's server page too.
    tenant_page = client_for(w.alice).get(f"/servers/{w.web.uuid}/").content.decode()
    assert f'href="/servers/{w.web.uuid}/console/"' in tenant_page
    operator_page = client_for(w.operator).get(f"/operator/servers/{w.web.uuid}/").content.decode()
    assert f'href="/operator/servers/{w.web.uuid}/console/"' in operator_page


def test_a_session_without_its_second_factor_gets_nothing(w):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    # alice has an authenticator; this session signed in without the code (force_login).
    TOTPDevice.objects.create(user=w.alice, name="authenticator", confirmed=True)
    client = client_for(w.alice)
    response = client.post(tenant_ticket(w.web))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert not ConsoleSession.objects.exists()


def test_anonymous_visitors_are_sent_to_sign_in(w):
    response = Client().post(tenant_ticket(w.web))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert not ConsoleSession.objects.exists()
