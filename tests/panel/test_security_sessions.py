"""Sessions: a new key at sign-in, and every session of a user ends when the user signs out
anywhere, changes the password, or is disabled (and stays ended when enabled again).

Two browsers of the same user are two Clients, each signed in through the login page.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.test import Client

LOGIN = "/accounts/login/"
PAGE = "/servers/"  # any page that needs a signed-in user
ALICE = {"username": "alice", "password": "alice password 1"}
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def world(offline_world):
    return offline_world


def browser(credentials=ALICE) -> Client:
    client = Client()
    response = client.post(LOGIN, credentials)
    assert response.status_code == 302, response.status_code
    assert client.get(PAGE).status_code == 200
    return client


def signed_out(client: Client) -> bool:
    response = client.get(PAGE)
    return response.status_code == 302 and response["Location"].startswith(f"{LOGIN}?next=")


# -- the key rotates --------------------------------------------------------------------------


def test_signing_in_gives_the_session_a_new_key(world):
    client = Client()
    client.get(LOGIN)
    session = client.session  # a session before signing in, as an attacker could plant one
    session["planted"] = "yes"
    session.save()
    before = session.session_key
    client.cookies["vpanel_session"] = before

    client.post(LOGIN, ALICE)
    after = client.cookies["vpanel_session"].value
    assert after != before
    assert not Session.objects.filter(session_key=before).exists()
    assert client.session[SESSION_KEY] == str(world.alice.pk)
    assert client.get(PAGE).status_code == 200


def test_the_old_key_does_not_sign_in(world):
    client = Client()
    client.get(LOGIN)
    session = client.session
    session.save()
    before = session.session_key
    client.cookies["vpanel_session"] = before
    client.post(LOGIN, ALICE)

    attacker = Client()
    attacker.cookies["vpanel_session"] = before
    assert signed_out(attacker)


# -- signing out ends every session -----------------------------------------------------------


def test_signing_out_ends_the_users_other_sessions(world):
    laptop, phone = browser(), browser()
    bob = browser({"username": "bob", "password": "bob password 1"})
    laptop.post("/accounts/logout/")
    assert signed_out(laptop)
    assert signed_out(phone)
    assert not signed_out(bob)  # another user's session is not touched


def test_signing_out_also_ends_sessions_opened_elsewhere(world):
    """force_login stands for any other way of signing in (the admin, a test)."""
    other = Client()
    other.force_login(world.alice)
    laptop = browser()
    laptop.post("/accounts/logout/")
    assert signed_out(other)


def test_signing_in_again_after_signing_out_works(world):
    laptop, phone = browser(), browser()
    laptop.post("/accounts/logout/")
    again = browser()
    assert not signed_out(again)
    assert signed_out(phone)


def test_the_admins_sign_out_ends_every_session_too(world):
    first = browser({"username": "operator", "password": "operator pw 1"})
    second = browser({"username": "operator", "password": "operator pw 1"})
    first.post("/admin/logout/")
    assert signed_out(second)


# -- a new password ends the other sessions --------------------------------------------------


def test_changing_the_password_ends_the_other_sessions_but_not_this_one(world):
    laptop, phone = browser(), browser()
    response = laptop.post(
        "/accounts/password/",
        {"old_password": ALICE["password"], "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert not signed_out(laptop)
    assert signed_out(phone)


def test_a_password_set_elsewhere_ends_every_session(world):
    laptop = browser()
    world.alice.set_password(NEW_PASSWORD)
    world.alice.save()
    assert signed_out(laptop)


# -- disabling ends every session, for good ---------------------------------------------------


def test_disabling_the_account_ends_every_session(world):
    laptop, phone = browser(), browser()
    world.alice.is_active = False
    world.alice.save()
    assert signed_out(laptop)
    assert signed_out(phone)
    assert Client().post(LOGIN, ALICE).status_code == 200  # and no new one


def test_enabling_the_account_again_does_not_revive_its_sessions(world):
    laptop = browser()
    world.alice.is_active = False
    world.alice.save()
    world.alice.is_active = True
    world.alice.save()
    assert signed_out(laptop)
    assert not signed_out(browser())


def test_disabling_through_the_admin_ends_the_sessions(world, django_user_model):
    laptop = browser()
    root = django_user_model.objects.create_superuser("root", "root@example.test", "root pw 1")
    admin = Client()
    admin.force_login(root)
    response = admin.post(
        f"/admin/auth/user/{world.alice.pk}/change/",
        {
            "username": "alice",
            "email": "alice@acme.test",
            "date_joined_0": "2024-01-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2024-01-01",
            "initial-date_joined_1": "00:00:00",
            # is_active left out: the checkbox is cleared
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    world.alice.refresh_from_db()
    assert not world.alice.is_active
    assert signed_out(laptop)


def test_saving_the_user_for_other_reasons_keeps_the_sessions(world):
    laptop = browser()
    world.alice.first_name = "Alice"
    world.alice.save()
    world.alice.save(update_fields=["last_login"])
    assert not signed_out(laptop)
