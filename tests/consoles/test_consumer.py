"""The console's WebSocket (consoles.consumers) as production serves it: gunicorn with uvicorn's
worker as the unprivileged user vpanel (tests/consoles/web.py), on a file database, reached
with a real WebSocket client. No broker runs here (test_console_e2e.py has the real one): what
is checked is what the web process decides before it would talk to one.

Positive controls: the same session from the panel's own origin opens the socket; the user's
own valid ticket gets past every check and reaches the point where the broker is asked (and,
with none running, says so in a plain sentence).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from accounts.models import Membership
from consoles import consumers
from consoles.models import ConsoleSession, ticket_hash
from tests.panel.faults import wait_until
from vservers.models import State, VirtualServer

from .web import session_cookie

pytestmark = pytest.mark.slow


@pytest.fixture
def w(file_database, offline_world):
    w = offline_world
    for name in ("web", "web2"):
        setattr(w, name.replace("2", "_two"), VirtualServer.objects.create(
            tenant=w.acme, name=name, hostname=f"{name}.example.test", plan=w.small, template=w.busybox,
            node=w.node, state=State.RUNNING))
    return w


def socket_url(web, server) -> str:
    return f"ws://127.0.0.1:{web.port}/ws/servers/{server.uuid}/console/"


def open_socket(web, server, cookie: str | None, origin: str | None = None):
    headers = {"Cookie": f"vpanel_session={cookie}"} if cookie else {}
    return connect(socket_url(web, server), origin=origin or web.url, additional_headers=headers, open_timeout=20)


def ticket(user, server, area="servers") -> str:
    client = Client()
    client.force_login(user)
    prefix = "/operator/servers" if area == "operator" else "/servers"
    response = client.post(f"{prefix}/{server.uuid}/console/ticket/")
    assert response.status_code == 200, response.content
    return response.json()["ticket"]


def closing_sentence(sock, hello: dict | str) -> tuple[str | None, int | None]:
    """Send HELLO, read until the server closes; its {"closed": ...} sentence and close code."""
    sock.send(hello if isinstance(hello, str) else json.dumps(hello))
    sentence = None
    try:
        while True:
            message = sock.recv(timeout=30)
            if isinstance(message, str):
                sentence = json.loads(message).get("closed")
    except ConnectionClosed as closed:
        return sentence, closed.rcvd.code if closed.rcvd else None


def status_of_refusal(web, server, cookie, origin=None) -> int:
    with pytest.raises(InvalidStatus) as refused, open_socket(web, server, cookie, origin):
        pass
    return refused.value.response.status_code


def test_anonymous_users_foreign_origins_and_unverified_sessions_get_no_socket(w, web):
    alice = session_cookie(w.alice)
    # The positive control: alice's session from the panel's own origin opens it.
    with open_socket(web, w.web, alice):
        pass
    assert status_of_refusal(web, w.web, None) == 403
    assert status_of_refusal(web, w.web, "not-a-session") == 403
    # Another site's page in alice's browser sends her cookie, and its own origin.
    assert status_of_refusal(web, w.web, alice, origin="http://evil.example") == 403
    # A user with two-factor sign-in whose session did not give the code: nothing, as on a page.
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.create(user=w.alice, name="authenticator", confirmed=True)
    assert status_of_refusal(web, w.web, session_cookie(w.alice)) == 403
    # ... and the control: a session that gave the code (django-otp's mark in it) connects.
    with open_socket(web, w.web, session_cookie(w.alice, device)):
        pass
    assert "Traceback" not in web.log_tail(200)


def test_a_ticket_is_honoured_only_for_its_user_and_server_unspent_and_in_time(w, web):
    cookie = session_cookie(w.alice)

    def attempt(presented, server=None):
        with open_socket(web, server or w.web, cookie) as sock:
            return closing_sentence(sock, {"ticket": presented, "cols": 80, "rows": 24})

    # The control: alice's own ticket passes every check here and the broker is asked; none runs.
    own = ticket(w.alice, w.web)
    assert attempt(own) == (consumers.NO_BROKER, consumers.UNAVAILABLE)
    # ... and that attempt spent it: the web side ends a session the broker never recorded.
    # (after it told the browser: so wait for the row)
    row = wait_until(lambda: ConsoleSession.objects.filter(ticket_hash=ticket_hash(own), ended__isnull=False).first(),
                     "the session's end to be recorded", timeout=30)
    assert row.end_reason == consumers.NO_BROKER
    assert attempt(own) == (consumers.BAD_TICKET, consumers.POLICY)

    # Another user's ticket (an operator's, for the same server).
    assert attempt(ticket(w.operator, w.web, area="operator")) == (consumers.BAD_TICKET, consumers.POLICY)
    # Her own ticket for another of her servers.
    assert attempt(ticket(w.alice, w.web_two), server=w.web) == (consumers.BAD_TICKET, consumers.POLICY)
    # A ticket the broker redeemed already (a replay).
    replayed = ticket(w.alice, w.web)
    ConsoleSession.objects.filter(ticket_hash=ticket_hash(replayed)).update(started=timezone.now())
    assert attempt(replayed) == (consumers.BAD_TICKET, consumers.POLICY)
    # An expired one.
    late = ticket(w.alice, w.web)
    ConsoleSession.objects.filter(ticket_hash=ticket_hash(late)).update(expires=timezone.now() - timedelta(seconds=1))
    assert attempt(late) == (consumers.BAD_TICKET, consumers.POLICY)
    # A made-up one, and nonsense.
    assert attempt("A" * 43) == (consumers.BAD_TICKET, consumers.POLICY)
    with open_socket(web, w.web, cookie) as sock:
        assert closing_sentence(sock, "{not json") == (consumers.BAD_MESSAGE, consumers.BAD)
    with open_socket(web, w.web, cookie) as sock:
        assert closing_sentence(sock, {"ticket": ticket(w.alice, w.web), "cols": 10**6, "rows": 24}) == (
            consumers.BAD_MESSAGE, consumers.BAD)
    assert "Traceback" not in web.log_tail(400)


def test_a_right_taken_away_after_the_ticket_counts_at_once(w, web):
    issued = ticket(w.alice, w.web)
    Membership.objects.filter(user=w.alice).update(role=Membership.READONLY)
    with open_socket(web, w.web, session_cookie(w.alice)) as sock:
        assert closing_sentence(sock, {"ticket": issued, "cols": 80, "rows": 24}) == (
            consumers.NOT_ALLOWED, consumers.POLICY)
    # A server stopped since: the plain sentence of the ticket view.
    Membership.objects.filter(user=w.alice).update(role=Membership.ADMIN)
    issued = ticket(w.alice, w.web)
    VirtualServer.objects.filter(pk=w.web.pk).update(state=State.STOPPED)
    with open_socket(web, w.web, session_cookie(w.alice)) as sock:
        assert closing_sentence(sock, {"ticket": issued, "cols": 80, "rows": 24}) == (
            "The server is not running. Start it to open a console.", consumers.GONE)
