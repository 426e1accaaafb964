"""Known devices: a browser that has signed in as a user before carries a signed cookie that
says so, and the login throttle (accounts.throttle) holds it up only for failures made from
that same browser. A stranger's failures for the user's name, from any address, cannot keep
the user out of a browser they have used before.

The cookie holds the user's primary key, a random device id and a tag of the user's password
hash, signed with SECRET_KEY (django.core.signing, its own salt) and valid for KNOWN_DEVICE_AGE;
it is HttpOnly, and Secure whenever the session cookie is. It proves nothing but "this browser
signed in as this user once, with the password they have now": the password is still checked,
and a failure made with it still counts (for the device). Changing or resetting the password
voids every known device (a user who fears someone else signed in changes it); the browser
that changed it on the password page is marked again.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.crypto import constant_time_compare, salted_hmac

COOKIE = "vpanel_device"
SALT = "accounts.devices.known_device"
KNOWN_DEVICE_AGE = 180 * 24 * 60 * 60


def password_tag(password_hash: str) -> str:
    """A short keyed digest of the user's password hash: it changes with the password and
    tells the browser nothing about the hash."""
    return salted_hmac(SALT + ".password", password_hash).hexdigest()[:20]


def _cookie(request) -> tuple[str, str, str] | None:
    """(user pk, device id, password tag) from the request's valid cookie, or None."""
    if request is None or not hasattr(request, "COOKIES"):
        return None
    value = request.get_signed_cookie(COOKIE, default=None, salt=SALT, max_age=KNOWN_DEVICE_AGE)
    parts = value.split(":") if value else []
    if len(parts) != 3:
        return None  # also a cookie of the earlier two-part form: it is void, as after a change
    pk, device, tag = parts
    return pk, device, tag


def known_device(request, username: str) -> str | None:
    """The device id if REQUEST carries a valid known-device cookie of the user named
    USERNAME (exactly as the authentication backend looks it up), made since the user's
    password was last set, else None."""
    cookie = _cookie(request)
    if cookie is None:
        return None
    User = get_user_model()
    row = User._default_manager.filter(**{User.USERNAME_FIELD: username}).values_list("pk", "password").first()
    if row is None or str(row[0]) != cookie[0]:
        return None
    if not constant_time_compare(password_tag(row[1]), cookie[2]):
        return None
    return cookie[1]


def remember(request, response, user) -> None:
    """After a successful sign-in or password change: mark the browser as a known device of
    USER with the password they have now (keeping its id if it already was one)."""
    cookie = _cookie(request)
    device = cookie[1] if cookie is not None and cookie[0] == str(user.pk) else secrets.token_hex(16)
    response.set_signed_cookie(
        COOKIE,
        f"{user.pk}:{device}:{password_tag(user.password)}",
        salt=SALT,
        max_age=KNOWN_DEVICE_AGE,
        httponly=True,
        secure=settings.SESSION_COOKIE_SECURE,
        samesite="Lax",
    )
