"""API tokens: made on the user's page and shown once, stored as a digest, bound to the user's
tenant, scoped, expiring, revocable, rate-limited per token, and every write with one audited."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEntry, Membership
from api import actions
from api.models import ApiToken
from vservers.models import Operation, State, VirtualServer

TOKEN = re.compile(r"vps_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def bearer(text: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {text}")
    return client


@pytest.fixture
def server(offline_world):
    w = offline_world
    made = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                        template=w.busybox, node=w.node, state=State.RUNNING)
    w.pool.allocate(made)
    return made


# -- the page ---------------------------------------------------------------------------------


def test_a_token_made_on_the_page_is_shown_once_and_stored_as_a_digest(offline_world):
    page = Client()
    page.force_login(offline_world.alice)
    response = page.post("/accounts/tokens/", {"name": "billing", "scope": "write", "days": 30})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = TOKEN.search(response.content.decode())[0]
    token = ApiToken.objects.get(user=offline_world.alice)
    assert (token.name, token.scope, token.tenant) == ("billing", "write", offline_world.acme)
    assert timedelta(days=29) < token.expires - timezone.now() <= timedelta(days=30)
    secret = text.split("_", 2)[2]
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    stored = " ".join(str(v) for v in ApiToken.objects.values_list().get())
    assert secret not in stored and text not in stored
    # Listed afterwards by its prefix only; the secret is never shown again.
    listing = page.get("/accounts/tokens/").content.decode()
    assert token.prefix in listing and secret not in listing
    assert bearer(text).get("/api/v1/me/").json()["username"] == "alice"
    entry = AuditEntry.objects.get(action="api.token_create")
    assert (entry.actor, entry.tenant, entry.object_id) == (offline_world.alice, offline_world.acme, token.prefix)


def test_tokens_are_revoked_on_the_page_by_their_owner_only(offline_world):
    text = actions.create(offline_world.alice, name="t", scope="read", days=7)[1]
    token = ApiToken.objects.get()
    bob = Client()
    bob.force_login(offline_world.bob)
    assert bob.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 404
    assert bob.get("/accounts/tokens/").content.decode().count(token.prefix) == 0
    assert bearer(text).get("/api/v1/me/").status_code == 200

    alice = Client()
    alice.force_login(offline_world.alice)
    assert alice.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 302
    response = bearer(text).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json() == {"detail": "this token was revoked", "code": "authentication_failed", "fields": {}}
    assert AuditEntry.objects.filter(action="api.token_revoke", actor=offline_world.alice).count() == 1


def test_read_only_members_and_restricted_operators_are_offered_read_only_tokens(offline_world, settings):
    carol = type(offline_world.alice).objects.create_user("carol")
    Membership.objects.create(user=carol, tenant=offline_world.acme, role=Membership.READONLY)
    settings.PANEL_API_OPERATOR_WRITE = False
    for user in (carol, offline_world.operator):
        page = Client()
        page.force_login(user)
        response = page.post("/accounts/tokens/", {"name": "x", "scope": "write", "days": 30})
        assert b"Select a valid choice" in response.content
        assert not ApiToken.objects.filter(user=user).exists()


# -- authentication ---------------------------------------------------------------------------


def test_a_wrong_malformed_expired_or_revoked_token_is_refused_with_401(offline_world):
    text = actions.create(offline_world.alice, name="t", scope="read", days=7)[1]
    token = ApiToken.objects.get()
    wrong_secret = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    cases = {
        wrong_secret: "invalid token",
        "vps_000000000000_" + "A" * 43: "invalid token",
        "not-a-token": "invalid token",
        text + " extra": "give the token as: Authorization: Bearer <token>",
    }
    for given, detail in cases.items():
        response = bearer(given).get("/api/v1/me/")
        assert response.status_code == 401 and response.json()["detail"] == detail, given
        assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert bearer(text).get("/api/v1/me/").status_code == 200  # the control

    ApiToken.objects.filter(pk=token.pk).update(expires=timezone.now() - timedelta(seconds=1))
    assert bearer(text).get("/api/v1/me/").json()["detail"] == "this token has expired"


def test_a_token_is_bound_to_its_tenant_and_its_user(offline_world, server):
    text = actions.create(offline_world.alice, name="t", scope="write", days=7)[1]
    client = bearer(text)
    assert client.get(f"/api/v1/servers/{server.uuid}/").status_code == 200

    # alice moves to globex: her token, made for acme, stops working (it does not follow her).
    Membership.objects.filter(user=offline_world.alice).update(tenant=offline_world.globex)
    response = client.get(f"/api/v1/servers/{server.uuid}/")
    assert response.status_code == 401
    assert response.json()["detail"] == "this token was made for another tenant than its user's"
    Membership.objects.filter(user=offline_world.alice).update(tenant=offline_world.acme)
    assert client.get(f"/api/v1/servers/{server.uuid}/").status_code == 200

    offline_world.alice.is_active = False
    offline_world.alice.save()
    assert client.get("/api/v1/me/").status_code == 401


def test_last_used_is_stamped(offline_world):
    text = actions.create(offline_world.alice, name="t", scope="read", days=7)[1]
    assert ApiToken.objects.get().last_used is None
    before = timezone.now()
    bearer(text).get("/api/v1/me/")
    assert ApiToken.objects.get().last_used >= before


# -- scope ------------------------------------------------------------------------------------


def test_a_read_only_token_reads_but_never_writes(offline_world, server):
    client = bearer(actions.create(offline_world.alice, name="t", scope="read", days=7)[1])
    assert client.get(f"/api/v1/servers/{server.uuid}/").status_code == 200
    response = client.post(f"/api/v1/servers/{server.uuid}/stop/")
    assert response.status_code == 403
    assert response.json() == {"detail": "this token is read-only", "code": "permission_denied", "fields": {}}
    assert not Operation.objects.exists() and offline_world.queued == []

    # The control: her read-write token stops it.
    writer = bearer(actions.create(offline_world.alice, name="w", scope="write", days=7)[1])
    assert writer.post(f"/api/v1/servers/{server.uuid}/stop/").status_code == 202
    assert len(offline_world.queued) == 1


def test_operators_tokens_can_be_limited_to_reading(offline_world, server, settings):
    client = bearer(actions.create(offline_world.operator, name="t", scope="write", days=7)[1])
    settings.PANEL_API_OPERATOR_WRITE = False
    assert client.post(f"/api/v1/servers/{server.uuid}/stop/").status_code == 403
    assert client.get("/api/v1/me/").json()["can_act"] is False
    settings.PANEL_API_OPERATOR_WRITE = True
    assert client.post(f"/api/v1/servers/{server.uuid}/stop/").status_code == 202


# -- audit ------------------------------------------------------------------------------------


def test_every_write_with_a_token_is_audited_and_reads_are_not(offline_world, server):
    text = actions.create(offline_world.alice, name="t", scope="write", days=7)[1]
    prefix = ApiToken.objects.get().prefix
    client = bearer(text)
    client.get(f"/api/v1/servers/{server.uuid}/")
    client.post(f"/api/v1/servers/{server.uuid}/stop/", REMOTE_ADDR="198.51.100.7")
    client.post(f"/api/v1/servers/{server.uuid}/start/")  # refused (409): audited as well
    entries = list(AuditEntry.objects.filter(action="api.write").order_by("pk"))
    assert [(e.details["method"], e.details["status"]) for e in entries] == [("POST", 202), ("POST", 409)]
    first = entries[0]
    assert (first.actor, first.tenant, first.object_id, first.remote_addr) == (
        offline_world.alice, offline_world.acme, prefix, "198.51.100.7")
    assert first.details["path"] == f"/api/v1/servers/{server.uuid}/stop/"
    # ... besides the action's own entry, by the same user from the same address.
    stop = AuditEntry.objects.get(action="server.stop")
    assert (stop.actor, stop.remote_addr) == (offline_world.alice, "198.51.100.7")


# -- rate limit -------------------------------------------------------------------------------


def test_each_token_has_its_own_rate_limit_with_429_and_retry_after(offline_world, settings):
    settings.PANEL_API_RATE = {"requests": 3, "window": 60}
    first = bearer(actions.create(offline_world.alice, name="a", scope="read", days=7)[1])
    second = bearer(actions.create(offline_world.alice, name="b", scope="read", days=7)[1])
    assert [first.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 200]
    refused = first.get("/api/v1/me/")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    body = refused.json()
    assert (body["code"], body["fields"]) == ("throttled", {}) and "available in" in body["detail"]
    assert second.get("/api/v1/me/").status_code == 200  # the other token counts on its own
    # The count is on the token's row, where every worker process sees it.
    assert ApiToken.objects.get(name="a").window_count == 4


def test_a_new_window_starts_afresh(offline_world, settings):
    settings.PANEL_API_RATE = {"requests": 1, "window": 60}
    client = bearer(actions.create(offline_world.alice, name="a", scope="read", days=7)[1])
    assert client.get("/api/v1/me/").status_code == 200
    assert client.get("/api/v1/me/").status_code == 429
    token = ApiToken.objects.get()
    ApiToken.objects.filter(pk=token.pk).update(window_start=token.window_start - timedelta(seconds=60))
    assert client.get("/api/v1/me/").status_code == 200


# -- the session ------------------------------------------------------------------------------


def test_a_browser_session_writes_only_with_its_csrf_token(offline_world, server):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(offline_world.alice)
    assert browser.get(f"/api/v1/servers/{server.uuid}/").status_code == 200
    response = browser.post(f"/api/v1/servers/{server.uuid}/stop/")
    assert response.status_code == 403 and response.json()["detail"].startswith("CSRF Failed")
    assert offline_world.queued == []
    page = Client()
    page.force_login(offline_world.alice)
    token = str(page.get("/accounts/tokens/").context["csrf_token"])
    browser.cookies.update(page.cookies)
    assert browser.post(f"/api/v1/servers/{server.uuid}/stop/", HTTP_X_CSRFTOKEN=token).status_code == 202
