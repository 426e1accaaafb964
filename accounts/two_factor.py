"""Two-factor sign-in: a TOTP authenticator (django-otp's TOTPDevice) and ten recovery codes
(its StaticDevice), what they mean for a session, and every change to them, audited.

A user "has two-factor sign-in" once a TOTP device of theirs is confirmed: set up with the
secret (QR code or text), then confirmed with a code the app computed from it. Until then
the device is a draft that signs nobody in. From then on:

1. the password alone does not sign in: the login page (accounts.views.LoginView) keeps the
   user "pending" in the anonymous session, and only a code from the app or an unused
   recovery code (accounts.views.LoginCodeView) signs in; the session is then *verified*
   (django_otp.login: request.user.is_verified());
2. a session of the user that is not verified (opened before the device was confirmed, or
   forced by other means) is signed out on its next request (accounts.middleware);
3. wrong codes count as failed sign-ins in the login throttle (accounts.throttle), with the
   same per-device, per-(name, address) counts and capped delays as wrong passwords.

Operators (staff users) must have it when settings.PANEL_REQUIRE_2FA_OPERATORS is on; until
they set it up they reach only the set-up page (accounts.middleware), and the admin lets them
in only with a verified session (accounts.admin).

Recovery codes are stored hashed. django-otp's StaticToken keeps the token as given, in a
16-character field, and looks it up by equality; we give it SHA-256 of the code (80 bits, in
base32: 16 characters) and look the typed code up by the same digest, so its one-use logic
(the token row is deleted under the device's row lock) stays the library's. A code has 80
random bits, so an unsalted fast hash cannot be reversed by trying. This keeps the codes out
of database dumps and the admin; it does not make a database reader harmless: the TOTP secret
must be readable for the server to compute codes (RFC 6238), and is stored as it is.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

import django_otp
import segno
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from .models import AuditEntry, Membership

RECOVERY_CODES = 10
DEVICE_NAME = "authenticator"
_TOTP = re.compile(r"^\d{6}$")


# -- who has it, who must ------------------------------------------------------------------


def is_enabled(user) -> bool:
    """Whether USER has a confirmed authenticator (one indexed query)."""
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists()


def is_required(user) -> bool:
    """Whether USER must use two-factor sign-in: operators, when the setting says so."""
    return bool(user.is_staff and getattr(settings, "PANEL_REQUIRE_2FA_OPERATORS", False))


def is_verified(request) -> bool:
    """Whether the request's session gave the second factor (django_otp's OTPMiddleware)."""
    check = getattr(request.user, "is_verified", None)
    return bool(check is not None and check())


# -- recovery codes --------------------------------------------------------------------------


def _normalize(code: str) -> str:
    """What the user typed, as a code is compared: letters and digits only, lower case."""
    return re.sub(r"[^0-9a-z]", "", str(code).lower())


def _digest(code: str) -> str:
    """The stored form of a recovery code (see the module's docstring)."""
    return base64.b32encode(hashlib.sha256(_normalize(code).encode()).digest()[:10]).decode().lower()


def _new_code() -> str:
    """80 random bits as 16 base32 characters, shown in four groups: abcd-efgh-ijkl-mnop."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _replace_codes(user) -> list[str]:
    """New recovery codes for USER (the old ones stop working); the codes, to be shown once."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name="recovery codes", defaults={"confirmed": True})
    device.token_set.all().delete()
    codes = [_new_code() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=_digest(code)) for code in codes)
    return codes


def recovery_codes_left(user) -> int:
    return StaticToken.objects.filter(device__user_id=user.pk, device__confirmed=True).count()


# -- enrolment -------------------------------------------------------------------------------


def draft(user) -> TOTPDevice | None:
    """USER's authenticator being set up (not confirmed yet), if any."""
    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).order_by("-pk").first()


def start(request, user) -> TOTPDevice:
    """A new secret for USER to put into an app; replaces an earlier draft. Refused (ValueError)
    while a confirmed authenticator exists: that one is turned off first, with the password."""
    with transaction.atomic():
        if is_enabled(user):
            raise ValueError("two-factor sign-in is already on")
        TOTPDevice.objects.filter(user_id=user.pk, confirmed=False).delete()
        device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
        _audit(request, "2fa.start", user)
    return device


def secret_text(device: TOTPDevice) -> str:
    """The secret as authenticator apps take it when typed (base32, in groups of four)."""
    text = base64.b32encode(device.bin_key).decode()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def qr_svg_data_uri(device: TOTPDevice) -> str:
    """The otpauth:// URL as a QR code: an SVG data: URI for an <img> (no script, allowed by
    the CSP's img-src data:)."""
    # Black on white whatever the page's colour scheme: scanners want the contrast.
    return segno.make(device.config_url, error="m").svg_data_uri(scale=5, border=2, dark="#000", light="#fff")


def confirm(request, user, code: str) -> list[str] | None:
    """Confirm USER's draft with CODE from the app: the authenticator counts from now on, the
    request's session is verified with it, and ten recovery codes are made. The codes (shown
    once), or None if CODE is not the draft's current code."""
    device = draft(user)
    if device is None or not _TOTP.match(code.strip()):
        return None
    with transaction.atomic():
        if django_otp.verify_token(user, device.persistent_id, code.strip()) is None:
            return None
        TOTPDevice.objects.filter(user_id=user.pk).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = _replace_codes(user)
        _audit(request, "2fa.confirm", user)
    # A new level of trust, a new session key; other sessions of the user are not verified
    # and are signed out on their next request (accounts.middleware).
    request.session.cycle_key()
    django_otp.login(request, device)
    return codes


# -- signing in ------------------------------------------------------------------------------


def verify(request, user, code: str):
    """The device that accepts CODE for USER: a current code from the authenticator, or one
    unused recovery code, which is spent (its use audited, with how many are left). None if
    none does. The caller counts the failure."""
    code = str(code).strip()
    if _TOTP.match(code):
        device = TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first()
        return django_otp.verify_token(user, device.persistent_id, code) if device else None
    if len(_normalize(code)) != 16:
        return None
    static = StaticDevice.objects.filter(user_id=user.pk, confirmed=True).first()
    if static is None or django_otp.verify_token(user, static.persistent_id, _digest(code)) is None:
        return None
    _audit(request, "auth.recovery_code_used", user, actor=user, left=recovery_codes_left(user))
    return static


# -- changes once it is on -------------------------------------------------------------------


def regenerate(request, user) -> list[str]:
    with transaction.atomic():
        codes = _replace_codes(user)
        _audit(request, "2fa.recovery_codes", user)
    return codes


def _remove(user) -> int:
    removed = TOTPDevice.objects.filter(user_id=user.pk).delete()[0]
    return removed + StaticDevice.objects.filter(user_id=user.pk).delete()[0]


def disable(request, user) -> None:
    """The user turns it off (after giving the password or a code: the view checks)."""
    with transaction.atomic():
        _remove(user)
        _audit(request, "2fa.disable", user)


def reset(request, user, **details) -> bool:
    """An operator (REQUEST's user, or manage.py two_factor_reset without a request) removes
    USER's authenticator and codes (a lost phone): the user signs in with the password alone
    and may set it up again. USER's sessions end. Whether there was anything to remove;
    audited either way."""
    from .sessions import end_all_sessions

    with transaction.atomic():
        had = bool(_remove(user))
        end_all_sessions(user)
        _audit(request, "2fa.reset", user, had_two_factor=had, **details)
    return had


def _audit(request, action: str, user, actor=None, **details) -> None:
    membership = Membership.objects.filter(user_id=user.pk).select_related("tenant").first()
    # request.user comes wrapped (SimpleLazyObject); the entry names the model and its key.
    model = get_user_model()
    subject = user if type(user) is model else model(pk=user.pk, **{model.USERNAME_FIELD: user.get_username()})
    AuditEntry.record(
        request, action, subject, tenant=membership.tenant if membership else None, actor=actor, **details
    )
