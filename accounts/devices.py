"""Known devices: a browser that has signed in as a user before carries a signed cookie that
says so, and the login throttle (accounts.throttle) holds it up only for failures made from
that same browser. A stranger's failures for the user's name, from any address, cannot keep
the user out of a browser they have used before.

The cookie holds the user's primary key and a random device id, signed with SECRET_KEY
(django.core.signing, its own salt) and valid for KNOWN_DEVICE_AGE; it is HttpOnly, and Secure
whenever the session cookie is. It proves nothing but "this browser signed in as this user
once": the password is still checked, and a failure made with it still counts (for the device).
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model

COOKIE = "vpanel_device"
SALT = "accounts.devices.known_device"
KNOWN_DEVICE_AGE = 180 * 24 * 60 * 60


def _cookie(request) -> tuple[str, str] | None:
    """(user pk, device id) from the request's valid cookie, or None."""
    if request is None or not hasattr(request, "COOKIES"):
        return None
    value = request.get_signed_cookie(COOKIE, default=None, salt=SALT, max_age=KNOWN_DEVICE_AGE)
    if not value or ":" not in value:
        return None
    pk, device = value.split(":", 1)
    return pk, device


def known_device(request, username: str) -> str | None:
    """The device id if REQUEST carries a valid known-device cookie of the user named
    USERNAME (exactly as the authentication backend looks it up), else None."""
    cookie = _cookie(request)
    if cookie is None:
        return None
    User = get_user_model()
    pk = User._default_manager.filter(**{User.USERNAME_FIELD: username}).values_list("pk", flat=True).first()
    if pk is None or str(pk) != cookie[0]:
        return None
    return cookie[1]


def remember(request, response, user) -> None:
    """After a successful sign-in: mark the browser as a known device of USER (keeping its id
    if it already was one)."""
    cookie = _cookie(request)
    device = cookie[1] if cookie is not None and cookie[0] == str(user.pk) else secrets.token_hex(16)
    response.set_signed_cookie(
        COOKIE,
        f"{user.pk}:{device}",
        salt=SALT,
        max_age=KNOWN_DEVICE_AGE,
        httponly=True,
        secure=settings.SESSION_COOKIE_SECURE,
        samesite="Lax",
    )
