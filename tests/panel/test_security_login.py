"""The login throttle (accounts.throttle): growing delays per user name and address, per user
name and per client address, where the address is REMOTE_ADDR unless a trusted proxy
forwarded the request, so a forged X-Forwarded-For changes nothing; a browser that signed in
as the user before (accounts.devices) counts only its own failures. Refused attempts say why
and how long to wait, answer 429 and are audited, as every failed one is.

offline_world's passwords: alice "alice password 1", bob "bob password 1", operator "operator
pw 1". The defaults: 5 free failures per name, 20 per address, then 2^n seconds, capped at
15 minutes for one guesser and at 60 seconds for the counts a stranger shares with the user.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.utils import timezone

from accounts import devices
from accounts.models import AuditEntry, LoginFailure

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
PER_USER, PER_ADDRESS = 5, 20
MAX_DELAY, SHARED_MAX_DELAY = 900, 60
THROTTLED = "Too many failed sign-ins"


@pytest.fixture
def world(offline_world, settings):
    settings.PANEL_LOGIN_THROTTLE = {
        "per_user": PER_USER,
        "per_address": PER_ADDRESS,
        "window": 900,
        "max_delay": MAX_DELAY,
        "shared_max_delay": SHARED_MAX_DELAY,
    }
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


def age(seconds: float) -> None:
    """Time passes: every counted failure is SECONDS older."""
    for failure in LoginFailure.objects.all():
        LoginFailure.objects.filter(pk=failure.pk).update(created=failure.created - timedelta(seconds=seconds))


def test_after_five_failures_even_the_right_password_is_refused(world):
    fail(PER_USER)
    response, signed_in = sign_in("alice", "alice password 1")
    assert not signed_in
    assert response.status_code == 429
    assert THROTTLED in response.content.decode()
    assert int(response["Retry-After"]) == 1
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


def test_failures_earn_growing_delays_not_a_lock(world, settings):
    settings.PANEL_LOGIN_THROTTLE = {**settings.PANEL_LOGIN_THROTTLE, "window": 24 * 3600}
    fail(PER_USER)
    for extra, wait in enumerate([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]):
        response, signed_in = sign_in("alice", "alice password 1")
        assert (response.status_code, int(response["Retry-After"]), signed_in) == (429, wait, False), extra
        assert f"wait {wait} second" in response.content.decode() or "minute" in response.content.decode()
        age(wait)
        if extra < 11:
            fail(1)  # the guesser's next try, as soon as it is allowed
    response, signed_in = sign_in("alice", "alice password 1")
    assert signed_in


def test_the_name_waits_from_every_address_but_briefly(world):
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


def test_the_delay_ends_when_the_failures_leave_the_window(world):
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


def test_an_address_with_twenty_failures_makes_every_name_wait(world):
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
    assert response.status_code == 429 and response["Retry-After"] == "1"
    assert THROTTLED in response.content.decode()
    # ... and the panel's login page shares the count.
    assert sign_in("operator", "operator pw 1")[0].status_code == 429
    age(1)
    response, signed_in = sign_in("operator", "operator pw 1", url=ADMIN_LOGIN)
    assert signed_in and response.status_code == 302


def test_the_admins_login_marks_the_browser_as_known_too(world):
    client = Client(REMOTE_ADDR="198.51.100.5")
    assert client.post(ADMIN_LOGIN, {"username": "operator", "password": "operator pw 1"}).status_code == 302
    assert devices.COOKIE in client.cookies


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


# -- attacks aimed at someone else: the victim still gets in ---------------------------------


def known_browser(username: str, password: str, address: str) -> Client:
    """The victim's own browser: it has signed in (and out) before, so it has the cookie."""
    client = Client(REMOTE_ADDR=address)
    assert client.post(LOGIN, {"username": username, "password": password}).status_code == 302
    cookie = client.cookies[devices.COOKIE]
    assert cookie["httponly"] and cookie["max-age"] == devices.KNOWN_DEVICE_AGE
    client.post("/accounts/logout/")
    return client


def signs_in(client: Client, username: str, password: str):
    response = client.post(LOGIN, {"username": username, "password": password})
    return response, SESSION_KEY in client.session


def test_a_strangers_fifty_failures_for_the_operators_name_do_not_keep_the_operator_out(world):
    operator = known_browser("operator", "operator pw 1", "198.51.100.5")
    answers = [sign_in("operator", "wrong guess", f"192.0.2.{i + 1}")[0].status_code for i in range(50)]
    assert answers.count(200) == PER_USER and answers.count(429) == 50 - PER_USER
    # A patient attacker, who waits out every delay, gets no further: fifty counted failures.
    LoginFailure.objects.bulk_create(
        LoginFailure(username="operator", address=f"192.0.2.{i + 1}") for i in range(50 - PER_USER)
    )
    # The operator's own browser gets in at once, from its usual address or any other.
    assert signs_in(operator, "operator", "operator pw 1")[1]
    operator.post("/accounts/logout/")
    operator.defaults["REMOTE_ADDR"] = "203.0.113.200"
    assert signs_in(operator, "operator", "operator pw 1")[1]
    # A fresh browser waits at most the short cap, then gets in (the stranger's count is 50).
    LoginFailure.objects.bulk_create(
        LoginFailure(username="operator", address=f"192.0.2.{i + 1}") for i in range(50)
    )
    response, signed_in = sign_in("operator", "operator pw 1", "198.51.100.99")
    assert response.status_code == 429 and not signed_in
    assert int(response["Retry-After"]) <= SHARED_MAX_DELAY
    age(SHARED_MAX_DELAY)
    assert sign_in("operator", "operator pw 1", "198.51.100.99")[1]


def test_a_guesser_at_the_users_own_address_does_not_hold_up_the_users_browser(world):
    alice = known_browser("alice", "alice password 1", "203.0.113.9")
    answers = [sign_in("alice", "wrong guess")[0].status_code for _ in range(30)]
    assert answers.count(200) == PER_USER  # hammering: 5 counted, then 429s
    LoginFailure.objects.bulk_create(LoginFailure(username="alice", address="203.0.113.9") for _ in range(20))
    assert sign_in("alice", "alice password 1")[0].status_code == 429  # a stranger's browser waits
    assert signs_in(alice, "alice", "alice password 1")[1]


def test_twenty_failures_from_one_address_hold_up_its_other_users_only_briefly(world):
    bob = known_browser("bob", "bob password 1", "203.0.113.9")
    spray(PER_ADDRESS)
    LoginFailure.objects.bulk_create(LoginFailure(username=f"more{i}", address="203.0.113.9") for i in range(80))
    # bob's known browser: at once; alice, new at that address: after at most the short cap.
    assert signs_in(bob, "bob", "bob password 1")[1]
    response, signed_in = sign_in("alice", "alice password 1")
    assert response.status_code == 429 and int(response["Retry-After"]) <= SHARED_MAX_DELAY
    assert "from your network" in response.content.decode()
    age(SHARED_MAX_DELAY)
    assert sign_in("alice", "alice password 1")[1]


def test_a_known_browser_counts_its_own_failures(world):
    alice = known_browser("alice", "alice password 1", "203.0.113.9")
    for _ in range(PER_USER):
        assert signs_in(alice, "alice", "wrong guess")[0].status_code == 200
    response, signed_in = signs_in(alice, "alice", "alice password 1")
    assert response.status_code == 429 and not signed_in
    assert "in this browser" in response.content.decode()
    assert set(LoginFailure.objects.values_list("device", flat=True)) != {""}


def test_the_cookie_counts_only_for_its_own_user_and_only_signed(world):
    alice = known_browser("alice", "alice password 1", "203.0.113.9")
    fail(PER_USER, username="bob", address="192.0.2.1")
    # alice's cookie does not make the browser a known one for bob ...
    assert signs_in(alice, "bob", "bob password 1")[0].status_code == 429
    # ... and a cookie made up by hand is no cookie.
    forged = Client(REMOTE_ADDR="203.0.113.9")
    forged.cookies[devices.COOKIE] = f"{world.bob.pk}:0123456789abcdef0123456789abcdef"
    assert signs_in(forged, "bob", "bob password 1")[0].status_code == 429


def test_a_password_change_voids_the_known_devices_but_the_browser_that_made_it(world):
    elsewhere = known_browser("alice", "alice password 1", "198.51.100.7")
    changer = known_browser("alice", "alice password 1", "203.0.113.9")
    # Positive control: before the change, the other browser gets past a held-up name.
    fail(PER_USER, username="alice", address="192.0.2.1")
    assert signs_in(elsewhere, "alice", "alice password 1")[1]
    elsewhere.post("/accounts/logout/")
    LoginFailure.objects.all().delete()

    assert signs_in(changer, "alice", "alice password 1")[1]
    new = "a brand new passphrase"
    response = changer.post(
        "/accounts/password/", {"old_password": "alice password 1", "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    changer.post("/accounts/logout/")

    fail(PER_USER, username="alice", address="192.0.2.1")
    # The other browser is a stranger's now; the one that made the change is still known.
    response, signed_in = signs_in(elsewhere, "alice", new)
    assert response.status_code == 429 and not signed_in
    assert signs_in(changer, "alice", new)[1]
