"""The skeleton's pages: sign-in, the server list behind it, password reset and /healthz."""

from __future__ import annotations

import re
import socket
import time

import pytest

LOGIN = "/accounts/login/"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "correct horse battery")


def test_login_page_renders(client, db):
    response = client.get(LOGIN)
    assert response.status_code == 200
    assert b"<h1>Log in</h1>" in response.content
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert b"css/panel.css" in response.content


def test_home_redirects_anonymous_users_to_login(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/"


def test_logged_in_user_sees_home(client, alice):
    client.force_login(alice)
    response = client.get("/")
    assert response.status_code == 200
    assert b"Your servers" in response.content
    assert b"You have no servers yet." in response.content
    assert b"alice" in response.content


def test_user_logs_in_with_password_and_lands_on_home(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_wrong_password_is_refused(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert b"alert-error" in response.content
    assert "_auth_user_id" not in client.session


def test_logout_needs_post(client, alice):
    client.force_login(alice)
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert client.get("/").status_code == 302


def test_password_change_page_renders_for_a_logged_in_user(client, alice):
    client.force_login(alice)
    response = client.get("/accounts/password/")
    assert response.status_code == 200
    assert b"Change password" in response.content


def test_password_reset_mails_a_link_that_opens_the_form(client, alice, mailoutbox):
    response = client.post("/accounts/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mailoutbox[0].body).group(1)

    # The link redirects once to a URL without the token (Django keeps it in the session).
    response = client.get(link, follow=True)
    assert response.status_code == 200
    assert b"Choose a new password" in response.content


# /healthz uses no database: these tests have no `db` fixture, so any query would fail them.


def test_healthz_answers_json(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert data["ok"] is True
    assert isinstance(data["redis"], bool)


def test_healthz_reports_redis_down(client, settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path}/absent.sock?db=0"
    assert client.get("/healthz").json() == {"ok": True, "redis": False}


def test_healthz_gives_up_on_a_hanging_redis_after_a_second(client, settings):
    # A listening socket that never accepts: connect() succeeds, PING never gets a reply.
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen()
        settings.REDIS_URL = f"redis://127.0.0.1:{hang.getsockname()[1]}/0"
        started = time.monotonic()
        assert client.get("/healthz").json() == {"ok": True, "redis": False}
        assert time.monotonic() - started < 3


def test_healthz_reports_redis_up(client, settings, panel_redis):
    settings.REDIS_URL = panel_redis
    assert client.get("/healthz").json() == {"ok": True, "redis": True}
