"""Two-factor sign-in (accounts.two_factor): enrolment with a real TOTP secret, the code step
after the password, recovery codes spent once, wrong codes in the login throttle, operators
held to it when PANEL_REQUIRE_2FA_OPERATORS is on, the admin behind it, and the audit log.

Codes are computed here from the device's secret with django-otp's own TOTP (RFC 6238), as
an authenticator app would. offline_world's passwords: alice "alice password 1", bob "bob
password 1", operator "operator pw 1".
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP, totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import devices, two_factor
from accounts.models import AuditEntry, LoginFailure
from accounts.views import PENDING_KEY

LOGIN, CODE, TWO_FACTOR = "/accounts/login/", "/accounts/login/code/", "/accounts/two-factor/"
PASSWORDS = {"alice": "alice password 1", "bob": "bob password 1", "operator": "operator pw 1", "root": "root pw 1"}
PER_USER = 5
ADDRESS = "203.0.113.9"


@pytest.fixture
def world(offline_world, settings, django_user_model):
    settings.PANEL_LOGIN_THROTTLE = {
        "per_user": PER_USER, "per_address": 20, "window": 900, "max_delay": 900, "shared_max_delay": 60,
    }
    settings.PANEL_TRUSTED_PROXIES = []
    settings.PANEL_REQUIRE_2FA_OPERATORS = False
    root = django_user_model.objects.create_superuser("root", "root@example.test", PASSWORDS["root"])
    return SimpleNamespace(**vars(offline_world), root=root)


# -- an authenticator app, and a person using the pages -----------------------------------------


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """What the app shows now (or STEPS_AHEAD periods of 30 s from now)."""
    device.refresh_from_db()
    if steps_ahead == 0:
        value = totp(device.bin_key, device.step, device.t0, device.digits, device.drift)
    else:
        maker = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        maker.time = time.time() + steps_ahead * device.step
        value = maker.token()
    return f"{value:0{device.digits}d}"


def time_passes(device: TOTPDevice) -> None:
    """The codes used so far are minutes old: the app's next code is new to the server."""
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)


def enrol(client: Client, user) -> tuple[TOTPDevice, list[str]]:
    """USER, signed in with CLIENT, sets up an authenticator; the device and recovery codes."""
    assert client.post(f"{TWO_FACTOR}start/").status_code == 302
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    response = client.post(f"{TWO_FACTOR}confirm/", {"code": code(device), "password": PASSWORDS[user.username]})
    assert response.status_code == 200, response.content.decode()[:2000]
    codes = re.findall(r"<li>([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})</li>", response.content.decode())
    device.refresh_from_db()
    return device, codes


def enrolled(user) -> tuple[TOTPDevice, list[str]]:
    client = Client(REMOTE_ADDR=ADDRESS)
    client.force_login(user)
    device, codes = enrol(client, user)
    time_passes(device)
    return device, codes


def password_step(username: str, address: str = ADDRESS, client: Client | None = None, url: str = LOGIN, **data):
    client = client or Client(REMOTE_ADDR=address)
    response = client.post(url, {"username": username, "password": PASSWORDS[username], **data})
    return client, response


def signed_in(client: Client) -> bool:
    return SESSION_KEY in client.session


# -- enrolment ---------------------------------------------------------------------------------


def test_enrolment_shows_a_qr_code_and_the_secret_and_confirms_only_with_a_right_code(world, client):
    client.force_login(world.alice)
    page = client.get(TWO_FACTOR)
    assert page.status_code == 200 and b"Set up two-factor sign-in" in page.content
    assert not TOTPDevice.objects.exists()  # a GET changes nothing

    assert client.post(f"{TWO_FACTOR}start/").status_code == 302
    device = TOTPDevice.objects.get(user=world.alice)
    assert not device.confirmed
    page = client.get(TWO_FACTOR).content.decode()
    assert 'src="data:image/svg+xml;' in page
    assert two_factor.secret_text(device) in page
    assert "otpauth://" not in page.replace("otpauth%3A", "")  # only inside the image

    wrong = f"{(int(code(device)) + 1) % 1_000_000:06d}"
    password = PASSWORDS["alice"]
    assert client.post(f"{TWO_FACTOR}confirm/", {"code": wrong, "password": password}).status_code == 400
    # The right code with a wrong password: a session left open is not enough.
    assert client.post(f"{TWO_FACTOR}confirm/", {"code": code(device), "password": "guess"}).status_code == 400
    device.refresh_from_db()
    assert not device.confirmed and not two_factor.is_enabled(world.alice)
    assert AuditEntry.objects.filter(action="auth.2fa_check_failed").count() == 1
    assert LoginFailure.objects.filter(username="alice").count() == 1

    response = client.post(f"{TWO_FACTOR}confirm/", {"code": code(device), "password": password})
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    codes = re.findall(r"<li>([a-z2-7-]{19})</li>", response.content.decode())
    device.refresh_from_db()
    assert device.confirmed and two_factor.is_enabled(world.alice)
    assert len(set(codes)) == 10
    # Stored hashed: no stored token is a code, in any spelling.
    stored = set(StaticToken.objects.filter(device__user=world.alice).values_list("token", flat=True))
    assert len(stored) == 10 and not stored & {c for code_ in codes for c in (code_, code_.replace("-", ""))}
    # This session gave the code: it is verified and goes on.
    assert client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert client.get("/servers/").status_code == 200
    actions = list(AuditEntry.objects.filter(actor=world.alice).values_list("action", flat=True))
    assert actions[:3] == ["2fa.confirm", "auth.2fa_check_failed", "2fa.start"]
    entry = AuditEntry.objects.get(action="2fa.confirm")
    assert (entry.object_type, entry.object_id, entry.tenant) == ("User", str(world.alice.pk), world.acme)


def test_a_second_authenticator_needs_the_first_turned_off(world, client):
    client.force_login(world.alice)
    device, _ = enrol(client, world.alice)
    client.post(f"{TWO_FACTOR}start/")
    assert list(TOTPDevice.objects.filter(user=world.alice)) == [device]


# -- signing in --------------------------------------------------------------------------------


def test_the_password_alone_does_not_sign_in_a_user_with_two_factor(world):
    device, _ = enrolled(world.alice)
    logins = AuditEntry.objects.filter(action="auth.login", actor=world.alice)
    before = logins.count()
    client, response = password_step("alice")
    assert response.status_code == 302 and response["Location"] == CODE
    assert not signed_in(client) and logins.count() == before
    assert devices.COOKIE not in response.cookies  # no known-device cookie before the code
    assert client.get("/servers/")["Location"].startswith(f"{LOGIN}?next=")

    response = client.post(CODE, {"code": code(device)})
    assert response.status_code == 302 and response["Location"] == "/"
    assert signed_in(client) and client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert devices.COOKIE in response.cookies
    assert client.get("/servers/").status_code == 200
    assert logins.count() == before + 1 and logins.first().remote_addr == ADDRESS


def test_the_code_step_goes_where_the_login_was_asked_to(world):
    device, _ = enrolled(world.alice)
    client, response = password_step("alice", next="/servers/new/")
    assert client.post(CODE, {"code": code(device)})["Location"] == "/servers/new/"


def test_a_code_is_taken_once(world):
    device, _ = enrolled(world.alice)
    used = code(device)
    client, _ = password_step("alice")
    client.post(CODE, {"code": used})
    assert signed_in(client)
    again, _ = password_step("alice", address="198.51.100.3")
    response = again.post(CODE, {"code": used})
    assert response.status_code == 200 and not signed_in(again)
    assert "not right" in response.content.decode()


def test_a_recovery_code_signs_in_once(world):
    _device, codes = enrolled(world.alice)
    client, _ = password_step("alice")
    response = client.post(CODE, {"code": codes[3].upper().replace("-", " ")})  # as a person may type it
    assert response.status_code == 302 and signed_in(client)
    entry = AuditEntry.objects.get(action="auth.recovery_code_used")
    assert (entry.actor, entry.details["left"], entry.remote_addr) == (world.alice, 9, ADDRESS)
    assert two_factor.recovery_codes_left(world.alice) == 9

    again, _ = password_step("alice")
    response = again.post(CODE, {"code": codes[3]})
    assert response.status_code == 200 and not signed_in(again)
    assert AuditEntry.objects.filter(action="auth.otp_failed", actor=world.alice).count() == 1
    assert again.post(CODE, {"code": codes[4]}).status_code == 302 and signed_in(again)


def test_the_code_step_needs_a_password_given_in_this_browser_recently(world):
    device, _ = enrolled(world.alice)
    stranger = Client(REMOTE_ADDR=ADDRESS)
    page = stranger.post(CODE, {"code": code(device)})
    assert page.status_code == 200 and b"No sign-in is waiting" in page.content and not signed_in(stranger)

    client, _ = password_step("alice")
    session = client.session
    session[PENDING_KEY] = {**session[PENDING_KEY], "at": int(time.time()) - 11 * 60}
    session.save()
    page = client.post(CODE, {"code": code(device)})
    assert b"No sign-in is waiting" in page.content and not signed_in(client)


def test_a_session_that_skipped_the_code_is_signed_out(world, client):
    enrolled(world.alice)
    client.force_login(world.alice)  # any way around the login page
    response = client.get("/servers/")
    assert response.status_code == 302 and response["Location"].startswith(f"{LOGIN}?next=")
    assert not signed_in(client)


def test_enrolment_elsewhere_signs_out_the_sessions_without_the_code(world):
    other = Client(REMOTE_ADDR=ADDRESS)
    password_step("alice", client=other)
    assert other.get("/servers/").status_code == 200
    enrolled(world.alice)
    assert other.get("/servers/").status_code == 302 and not signed_in(other)


def test_requests_without_a_session_user_pass_untouched(world, rf):
    """A user put on the request by something else than the session (an API token's
    authentication) is not held to the session's second factor."""
    from django.contrib.sessions.backends.db import SessionStore

    from accounts.middleware import SecondFactorMiddleware

    enrolled(world.alice)
    request = rf.get("/servers/")
    request.session = SessionStore()
    request.user = world.alice
    world.alice.is_verified = lambda: False
    assert SecondFactorMiddleware(lambda r: None).process_view(request, None, (), {}) is None
    assert request.user == world.alice


# -- wrong codes: the login throttle ------------------------------------------------------------


def wrong(device: TOTPDevice) -> str:
    right = {code(device, n) for n in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in right)


def test_wrong_codes_are_throttled_like_passwords(world):
    device, _ = enrolled(world.alice)
    thief, _ = password_step("alice")  # he has the password
    for _ in range(PER_USER):
        assert thief.post(CODE, {"code": wrong(device)}).status_code == 200
    response = thief.post(CODE, {"code": code(device)})  # even the right code must wait now
    assert response.status_code == 429 and int(response["Retry-After"]) == 1 and not signed_in(thief)
    assert "Too many failed sign-ins" in response.content.decode()
    assert LoginFailure.objects.filter(username="alice", address=ADDRESS).count() == PER_USER
    assert AuditEntry.objects.filter(action="auth.otp_failed").count() == PER_USER
    assert AuditEntry.objects.filter(action="auth.otp_throttled").count() == 1
    # The same counts as passwords: his password step waits too, and typing the password
    # again does not clear them.
    assert password_step("alice")[1].status_code == 429


def test_without_the_throttle_the_same_guesser_gets_in(world, settings):
    """The control for the test above: the defence off (no failure is ever held up), the
    same sequence signs the thief in."""
    settings.PANEL_LOGIN_THROTTLE = {**settings.PANEL_LOGIN_THROTTLE, "per_user": 10_000, "per_address": 10_000}
    device, _ = enrolled(world.alice)
    thief, _ = password_step("alice")
    for _ in range(PER_USER):
        thief.post(CODE, {"code": wrong(device)})
    assert thief.post(CODE, {"code": code(device)}).status_code == 302 and signed_in(thief)


def test_the_owners_known_browser_is_not_held_up_by_the_thiefs_codes(world):
    device, _ = enrolled(world.alice)
    owner, _ = password_step("alice")
    owner.post(CODE, {"code": code(device)})
    owner.post("/accounts/logout/")
    time_passes(device)
    thief, _ = password_step("alice", address="198.51.100.66")
    for _ in range(PER_USER + 3):
        thief.post(CODE, {"code": wrong(device)})
    _, response = password_step("alice", client=owner)
    assert response.status_code == 302 and response["Location"] == CODE
    assert owner.post(CODE, {"code": code(device)}).status_code == 302 and signed_in(owner)


def test_django_otps_own_device_lock_is_off(world):
    """django-otp's per-device throttle would hold the owner up for 2^n seconds after a
    thief's n wrong codes, from any browser; ours counts per browser and address instead."""
    device, _ = enrolled(world.alice)
    thief, _ = password_step("alice", address="198.51.100.66")
    for _ in range(3):
        thief.post(CODE, {"code": wrong(device)})
    owner, _ = password_step("alice", address="198.51.100.77")
    assert owner.post(CODE, {"code": code(device)}).status_code == 302


# -- turning it off, new recovery codes ---------------------------------------------------------


def verified_client(user) -> tuple[Client, TOTPDevice, list[str]]:
    device, codes = enrolled(user)
    client, _ = password_step(user.username)
    client.post(CODE, {"code": code(device)})
    assert signed_in(client)
    time_passes(device)
    return client, device, codes


def test_wrong_passwords_when_turning_it_on_are_throttled(world, client):
    client.force_login(world.alice)
    client.post(f"{TWO_FACTOR}start/")
    device = TOTPDevice.objects.get(user=world.alice)
    for _ in range(PER_USER):
        client.post(f"{TWO_FACTOR}confirm/", {"code": code(device), "password": "guess"})
    response = client.post(f"{TWO_FACTOR}confirm/", {"code": code(device), "password": PASSWORDS["alice"]})
    assert response.status_code == 429 and int(response["Retry-After"]) == 1
    assert not two_factor.is_enabled(world.alice)


def test_turning_it_off_needs_the_password_or_a_code(world):
    client, device, _ = verified_client(world.alice)
    response = client.post(f"{TWO_FACTOR}disable/", {"password": "not it"})
    assert response.status_code == 400 and two_factor.is_enabled(world.alice)
    assert client.post(f"{TWO_FACTOR}disable/", {}).status_code == 400
    assert AuditEntry.objects.filter(action="auth.2fa_check_failed").count() == 1
    assert LoginFailure.objects.filter(username="alice").count() == 1

    response = client.post(f"{TWO_FACTOR}disable/", {"code": code(device)})
    assert response.status_code == 302 and not two_factor.is_enabled(world.alice)
    assert not StaticToken.objects.filter(device__user=world.alice).exists()
    assert AuditEntry.objects.filter(action="2fa.disable", actor=world.alice).count() == 1
    assert client.get("/servers/").status_code == 200  # still signed in, now by password alone
    assert signed_in(password_step("alice")[0])


def test_new_recovery_codes_replace_the_old_ones(world):
    client, _device, old = verified_client(world.alice)
    response = client.post(f"{TWO_FACTOR}recovery-codes/", {"password": PASSWORDS["alice"]})
    assert response.status_code == 200
    new = re.findall(r"<li>([a-z2-7-]{19})</li>", response.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    assert AuditEntry.objects.filter(action="2fa.recovery_codes", actor=world.alice).count() == 1
    stale, _ = password_step("alice")
    assert stale.post(CODE, {"code": old[0]}).status_code == 200 and not signed_in(stale)
    fresh, _ = password_step("alice")
    assert fresh.post(CODE, {"code": new[0]}).status_code == 302 and signed_in(fresh)


# -- operators ----------------------------------------------------------------------------------


def test_an_operator_must_set_it_up_first_when_the_setting_says_so(world, settings):
    settings.PANEL_REQUIRE_2FA_OPERATORS = True
    client, response = password_step("operator")
    assert signed_in(client)  # no authenticator yet: the password signs in, to the set-up page
    for url in ("/", "/operator/", "/operator/tenants/", "/servers/", "/admin/", "/accounts/password/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"] == TWO_FACTOR, url
    assert client.post("/operator/tenants/", {"name": "X", "slug": "x"}).status_code == 403
    assert client.get(TWO_FACTOR).status_code == 200

    device, _ = enrol(client, world.operator)
    assert client.get("/operator/").status_code == 200
    assert client.get("/admin/").status_code == 200

    # Tenants are not held to it.
    tenant, _ = password_step("alice")
    assert tenant.get("/servers/").status_code == 200


def test_operators_are_not_held_to_it_when_the_setting_is_off(world):
    client, _ = password_step("operator")
    assert client.get("/operator/").status_code == 200


def test_operators_reset_a_members_lost_authenticator(world):
    bob, _device, _codes = verified_client(world.bob)
    operator = Client(REMOTE_ADDR="198.51.100.5")
    operator.force_login(world.operator)
    url = f"/operator/tenants/{world.globex.uuid}/members/{world.bob.pk}/two-factor-reset/"
    assert operator.get(url).status_code == 405
    elsewhere = url.replace(str(world.globex.uuid), str(world.acme.uuid))  # bob is not acme's
    assert operator.post(elsewhere).status_code == 404
    page = operator.get(f"/operator/tenants/{world.globex.uuid}/")
    assert url.encode() in page.content

    response = operator.post(url)
    assert response.status_code == 302 and not two_factor.is_enabled(world.bob)
    assert not StaticToken.objects.filter(device__user=world.bob).exists()
    entry = AuditEntry.objects.get(action="2fa.reset")
    assert (entry.actor, entry.object_id, entry.tenant, entry.remote_addr, entry.details["had_two_factor"]) == (
        world.operator, str(world.bob.pk), world.globex, "198.51.100.5", True,
    )
    assert bob.get("/servers/").status_code == 302  # his sessions ended
    assert signed_in(password_step("bob")[0])  # the password alone, until he sets it up again

    alice = Client()
    alice.force_login(world.alice)
    assert alice.post(url).status_code == 403


def test_an_operators_lost_phone_is_reset_from_the_shell(world):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    enrolled(world.operator)
    out = StringIO()
    call_command("two_factor_reset", "operator", stdout=out)
    assert "removed" in out.getvalue() and not two_factor.is_enabled(world.operator)
    entry = AuditEntry.objects.get(action="2fa.reset")
    assert (entry.actor, entry.object_id, entry.details) == (
        None, str(world.operator.pk), {"had_two_factor": True, "command": True},
    )
    with pytest.raises(CommandError):
        call_command("two_factor_reset", "nobody")


# -- the admin ----------------------------------------------------------------------------------


def test_the_admin_login_goes_through_the_code_step(world):
    device, _ = enrolled(world.root)
    client, response = password_step("root", url="/admin/login/?next=/admin/", next="/admin/")
    assert response.status_code == 302 and response["Location"] == CODE and not signed_in(client)
    assert client.get("/admin/").status_code == 302
    response = client.post(CODE, {"code": code(device)})
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_the_admin_wants_a_verified_session_of_an_operator_who_must_have_one(world, settings, rf):
    from django.contrib import admin
    from django.contrib.auth.models import AnonymousUser

    settings.PANEL_REQUIRE_2FA_OPERATORS = True
    request = rf.get("/admin/")
    request.user = world.root
    world.root.is_verified = lambda: False
    assert not admin.site.has_permission(request)
    world.root.is_verified = lambda: True
    assert admin.site.has_permission(request)
    settings.PANEL_REQUIRE_2FA_OPERATORS = False
    world.root.is_verified = lambda: False
    assert admin.site.has_permission(request)  # no authenticator, not required: the password
    request.user = AnonymousUser()
    assert not admin.site.has_permission(request)


def test_the_admin_shows_no_totp_secrets(world):
    client = Client()
    client.force_login(world.root)
    assert client.get("/admin/otp_totp/totpdevice/").status_code == 404
    assert client.get("/admin/otp_static/staticdevice/").status_code == 404
