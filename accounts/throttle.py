"""The login throttle: too many failed sign-ins for one user name, or from one client address,
within a sliding window, and further attempts are refused without looking at the password.

    per user name: PANEL_LOGIN_THROTTLE["per_user"] failures (default 5) in "window" seconds
    per address:   PANEL_LOGIN_THROTTLE["per_address"] failures (default 20), where an address
                   is accounts.addresses.client_ip (REMOTE_ADDR unless a trusted proxy
                   forwarded the request) and an IPv6 address counts as its /64

A refused attempt is not counted as a failure (a patient attacker gets no more tries by
hammering, and the victim's lock does not grow either); it is written to the audit log. A
successful sign-in clears the failures of that user name, never those of the address: an
attacker who owns an account must not be able to reset the count of his address with it.

Why our own and not django-axes: axes finds the client address through django-ipware, which
reads X-Forwarded-For and similar headers unless told otherwise, so a forged header could
reset its count; it also brings its own lockout tables, admin and signals. What we need is
one table, two counts and one rule for the address (accounts.addresses), all tested here.
Why the database and not the cache: the count must be shared by all gunicorn workers and
survive a restart; the default cache is per process, and Redis being down (the job queue's
failure mode) must neither lock everybody out nor open the door.

Two requests racing through the check at the same moment can both be let through: the
window can overrun its limit by the number of parallel requests (gunicorn's workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .addresses import client_ip, throttle_key
from .models import LoginFailure

DEFAULTS = {"per_user": 5, "per_address": 20, "window": 15 * 60}


def _config() -> dict:
    return {**DEFAULTS, **getattr(settings, "PANEL_LOGIN_THROTTLE", {})}


def user_key(username: str) -> str:
    """Names are counted case-blind, so "Alice" and "alice" share one count."""
    return str(username).strip().lower()[:150]


@dataclass(frozen=True)
class Refusal:
    reason: str  # "user" or "address"
    retry_after: int  # seconds until the oldest counted failure leaves the window


def _refusal(failures, limit: int, window: timedelta, reason: str, now) -> Refusal | None:
    # The LIMIT-th newest failure inside the window: once it is older than the window, fewer
    # than LIMIT remain and the next attempt is allowed.
    if limit <= 0:
        return None
    nth = list(failures.filter(created__gt=now - window).order_by("-created").values_list("created", flat=True)
               [limit - 1 : limit])
    if not nth:
        return None
    seconds = int((nth[0] + window - now).total_seconds()) + 1
    return Refusal(reason, max(1, seconds))


def check(request, username: str) -> Refusal | None:
    """Whether a sign-in as USERNAME from REQUEST's client must be refused now."""
    config = _config()
    window = timedelta(seconds=config["window"])
    now = timezone.now()
    return _refusal(
        LoginFailure.objects.filter(username=user_key(username), user_cleared=False),
        config["per_user"],
        window,
        "user",
        now,
    ) or _refusal(
        LoginFailure.objects.filter(address=throttle_key(client_ip(request))),
        config["per_address"],
        window,
        "address",
        now,
    )


def record_failure(request, username: str) -> None:
    """Count one failed sign-in; forget the failures that have left the window."""
    config = _config()
    now = timezone.now()
    LoginFailure.objects.filter(created__lte=now - timedelta(seconds=config["window"])).delete()
    address = throttle_key(client_ip(request)) if request is not None else "unknown"
    LoginFailure.objects.create(username=user_key(username), address=address)


def clear_user(username: str) -> None:
    """A successful sign-in: the user name starts afresh (the failures still count for their
    addresses)."""
    LoginFailure.objects.filter(username=user_key(username), user_cleared=False).update(user_cleared=True)
