"""The login throttle (accounts.throttle): per user name and per client address, where the
address is REMOTE_ADDR unless a trusted proxy forwarded the request, so a forged
X-Forwarded-For changes nothing. Refused attempts say why and when to try again, answer 429
and are audited, as every failed one is.

offline_world's passwords: alice "alice password 1", bob "bob password 1". The defaults are
5 failures per name and 20 per address in 15 minutes (panel/settings.py).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry, LoginFailure

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
PER_USER, PER_ADDRESS = 5, 20
THROTTLED = "Too many failed sign-ins"


@pytest.fixture
def world(offline_world, settings):
    settings.PANEL_LOGIN_THROTTLE = {"per_user": PER_USER, "per_address": PER_ADDRESS, "window": 900}
    settings.PANEL_TRUSTED_PROXIES = []
    return offline_world


def sign_in(username: str, password: str, address: str = "203.0.113.9", url: str = LOGIN, **headers):
    """One sign-in from a fresh browser; the response and whether it signed in."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(url, {"username": username, "password": password}, **headers)
    return response, SESSION_KEY in client.session


def fail(times: int, username: str = "alice", address: str = "203.0.113.9", **headers) -> None:
    for _ in range(times):
        response, signed_in = sign_in(username, "wrong guess", address, **headers)
        assert response.status_code == 200 and not signed_in


# -- per user name ---------------------------------------------------------------------------


def test_after_five_failures_even_the_right_password_is_refused(world):
    fail(PER_USER)
    response, signed_in = sign_in("alice", "alice password 1")
    assert not signed_in
    assert response.status_code == 429
    assert THROTTLED in response.content.decode()
    assert 1 <= int(response["Retry-After"]) <= 900
    entry = AuditEntry.objects.get(action="auth.login_throttled")
    assert (entry.actor, entry.remote_addr, entry.details["username"], entry.details["reason"]) == (
        None,
        "203.0.113.9",
        "alice",
        "user",
    )
    assert AuditEntry.objects.filter(action="auth.login_failed").count() == PER_USER


def test_four_failures_still_let_the_right_password_in(world):
    fail(PER_USER - 1)
    assert sign_in("alice", "alice password 1")[1]


def test_the_name_is_locked_from_every_address(world):
    fail(PER_USER, address="203.0.113.9")
    response, signed_in = sign_in("alice", "alice password 1", address="198.51.100.77")
    assert response.status_code == 429 and not signed_in


def test_refused_attempts_are_not_counted_nor_checked(world):
    fail(PER_USER)
    for _ in range(3):
        assert sign_in("alice", "wrong guess")[0].status_code == 429
    assert LoginFailure.objects.count() == PER_USER
    assert AuditEntry.objects.filter(action="auth.login_throttled").count() == 3
    assert AuditEntry.objects.filter(action="auth.login_failed").count() == PER_USER


def test_names_are_counted_case_blind(world):
    for name in ("Alice", "ALICE", "alice ", "aLiCe", "alice"):
        sign_in(name, "wrong guess")
    assert sign_in("alice", "alice password 1")[0].status_code == 429


def test_unknown_names_are_counted_and_answered_the_same(world):
    fail(PER_USER, username="nobody", address="198.51.100.1")
    fail(PER_USER, username="alice", address="198.51.100.2")
    unknown, known = sign_in("nobody", "x", address="198.51.100.3")[0], sign_in("alice", "x", "198.51.100.4")[0]
    assert unknown.status_code == known.status_code == 429
    errors = [r.context["form"].non_field_errors() for r in (unknown, known)]
    assert errors[0] == errors[1] and THROTTLED in errors[0][0]


def test_other_names_are_not_locked_by_alices_failures(world):
    fail(PER_USER)
    assert sign_in("bob", "bob password 1")[1]


def test_a_successful_sign_in_clears_the_names_count_but_not_the_addresses(world):
    fail(PER_USER - 1)
    assert sign_in("alice", "alice password 1")[1]
    assert LoginFailure.objects.filter(address="203.0.113.9").count() == PER_USER - 1
    fail(PER_USER - 1)
    assert sign_in("alice", "alice password 1")[1]


def test_the_lock_lifts_when_the_failures_leave_the_window(world):
    fail(PER_USER)
    assert sign_in("alice", "alice password 1")[0].status_code == 429
    LoginFailure.objects.update(created=timezone.now() - timedelta(seconds=901))
    assert sign_in("alice", "alice password 1")[1]


def test_old_failures_are_forgotten(world):
    fail(2)
    LoginFailure.objects.update(created=timezone.now() - timedelta(seconds=901))
    fail(1, username="bob")
    assert list(LoginFailure.objects.values_list("username", flat=True)) == ["bob"]


# -- per address -----------------------------------------------------------------------------


def spray(times: int, address: str = "203.0.113.9", **headers) -> None:
    """Failures for as many different names, so that no name reaches its own limit."""
    for i in range(times):
        response, _ = sign_in(f"guess{i}", "wrong guess", address, **headers)
        assert response.status_code == 200, i


def test_an_address_with_twenty_failures_is_refused_for_every_name(world):
    spray(PER_ADDRESS)
    response, signed_in = sign_in("bob", "bob password 1")
    assert response.status_code == 429 and not signed_in
    assert AuditEntry.objects.get(action="auth.login_throttled").details["reason"] == "address"
    assert sign_in("bob", "bob password 1", address="203.0.113.10")[1]


def test_a_forged_x_forwarded_for_neither_resets_nor_moves_the_count(world):
    """Without a trusted proxy the header is not read at all."""
    for i in range(PER_ADDRESS):
        sign_in(f"guess{i}", "wrong guess", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    response, signed_in = sign_in("bob", "bob password 1", HTTP_X_FORWARDED_FOR="192.0.2.200")
    assert response.status_code == 429 and not signed_in
    assert set(LoginFailure.objects.values_list("address", flat=True)) == {"203.0.113.9"}
    assert set(AuditEntry.objects.values_list("remote_addr", flat=True)) == {"203.0.113.9"}


def test_behind_a_trusted_proxy_the_client_it_names_counts(world, settings):
    settings.PANEL_TRUSTED_PROXIES = ["127.0.0.1"]
    proxy = "127.0.0.1"
    for i in range(PER_ADDRESS):
        # What the client wrote itself stands left of what the proxy appended.
        sign_in(f"guess{i}", "wrong guess", proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 198.51.100.20")
    forged = "198.51.100.21, 198.51.100.20"
    response, signed_in = sign_in("bob", "bob password 1", proxy, HTTP_X_FORWARDED_FOR=forged)
    assert response.status_code == 429 and not signed_in
    assert set(LoginFailure.objects.values_list("address", flat=True)) == {"198.51.100.20"}
    # Another client behind the same proxy is not affected.
    assert sign_in("bob", "bob password 1", proxy, HTTP_X_FORWARDED_FOR="198.51.100.21")[1]


def test_ipv6_clients_are_counted_per_64(world):
    for i in range(PER_ADDRESS):
        sign_in(f"guess{i}", "wrong guess", f"2001:db8:1:2::{i + 1:x}")
    assert sign_in("bob", "bob password 1", "2001:db8:1:2:ffff::1")[0].status_code == 429
    assert sign_in("bob", "bob password 1", "2001:db8:1:3::1")[1]


# -- the admin's login and the password change ----------------------------------------------


def test_the_admins_login_counts_and_is_refused_the_same(world):
    for _ in range(PER_USER):
        response, _ = sign_in("operator", "wrong guess", url=ADMIN_LOGIN)
        assert response.status_code == 200
    response, signed_in = sign_in("operator", "operator pw 1", url=ADMIN_LOGIN)
    assert not signed_in
    assert THROTTLED in response.content.decode()
    # ... and the panel's login page shares the count.
    assert sign_in("operator", "operator pw 1")[0].status_code == 429


def test_guessing_the_old_password_on_the_password_page_is_throttled(world):
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(world.alice)
    new = {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"}
    for _ in range(PER_USER):
        response = client.post("/accounts/password/", {"old_password": "wrong guess", **new})
        assert response.status_code == 200
    response = client.post("/accounts/password/", {"old_password": "alice password 1", **new})
    assert response.status_code == 429
    assert THROTTLED in response.content.decode()
    world.alice.refresh_from_db()
    assert world.alice.check_password("alice password 1")
    assert AuditEntry.objects.filter(action="auth.password_change_failed", actor=world.alice).count() == PER_USER
    assert AuditEntry.objects.filter(action="auth.password_change_throttled").count() == 1


def test_the_admins_password_page_is_throttled_too(world):
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(world.operator)
    new = {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"}
    for _ in range(PER_USER):
        assert client.post("/admin/password_change/", {"old_password": "wrong guess", **new}).status_code == 200
    response = client.post("/admin/password_change/", {"old_password": "operator pw 1", **new})
    assert response.status_code == 429
    world.operator.refresh_from_db()
    assert world.operator.check_password("operator pw 1")
