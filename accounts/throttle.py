"""The login throttle: failed sign-ins earn growing delays (2, 4, 8 ... seconds, capped), never
a lock of the account, and the counts are kept so that nobody can aim them at someone else.

Failures inside the sliding window ("window" seconds) are counted four ways; each count that
has reached its free allowance asks for a wait of 2^(n - allowance) seconds after its newest
failure, up to its cap:

    the browser's own failures: with a valid known-device cookie of the user
        (accounts.devices), only the failures made with that cookie count: "per_user" free,
        capped at "max_delay". Nothing a stranger does touches this count.
    without the cookie:
      per (user name, address): "per_user" free, capped at "max_delay" (one guesser)
      per user name:            "per_user" free, capped at "shared_max_delay" (many addresses)
      per address:              "per_address" free, capped at "shared_max_delay" (many names)

The two shared counts are the ones a stranger can run up for the user's name or for the
user's network (a NAT, or everybody behind a proxy without PANEL_TRUSTED_PROXIES), so their
cap is short: the worst a stranger can do to a user without a known device is a wait of
"shared_max_delay" seconds. A guesser from one address meets the long cap of its own pair.
An address is accounts.addresses.throttle_key (an IPv6 address counts as its /64).

A refused attempt is not counted as a failure (hammering earns no tries and grows no delay);
the form audits it. A successful sign-in clears the failures of that user name, never those
of the address: an attacker who owns an account must not reset the count of his address.

Why our own and not django-axes: axes finds the client address through django-ipware, which
reads X-Forwarded-For and similar headers unless told otherwise, so a forged header could
reset its count; and it locks accounts. Why the database and not the cache: the counts must
be shared by all gunicorn workers and survive a restart, and Redis being down must neither
lock everybody out nor open the door.

Two requests racing through the check at the same moment can both be let through: a count can
overrun by the number of parallel requests (gunicorn's workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from .addresses import client_ip, throttle_key
from .devices import known_device
from .models import LoginFailure, PasswordResetRequest

DEFAULTS = {"per_user": 5, "per_address": 20, "window": 15 * 60, "max_delay": 15 * 60, "shared_max_delay": 60}


def _config() -> dict:
    return {**DEFAULTS, **getattr(settings, "PANEL_LOGIN_THROTTLE", {})}


def user_key(username: str) -> str:
    """Names are counted case-blind, so "Alice" and "alice" share one count."""
    return str(username).strip().lower()[:150]


def _address(request) -> str:
    return throttle_key(client_ip(request)) if request is not None else "unknown"


@dataclass(frozen=True)
class Refusal:
    reason: str  # "device", "user" or "address"
    retry_after: int  # seconds until the next attempt is allowed


def delay(failures: int, free: int, cap: int) -> int:
    """Seconds to wait after the newest of FAILURES when FREE of them cost nothing."""
    if failures < free or free <= 0:
        return 0
    return min(cap, 2 ** min(failures - free, 30))


def _wait(failures, free: int, cap: int, reason: str, now) -> Refusal | None:
    counted = failures.aggregate(n=Count("pk"), newest=Max("created"))
    seconds = delay(counted["n"], free, cap)
    if not seconds:
        return None
    remaining = (counted["newest"] + timedelta(seconds=seconds) - now).total_seconds()
    if remaining <= 0:
        return None
    return Refusal(reason, max(1, -int(-remaining // 1)))


def check(request, username: str) -> Refusal | None:
    """Whether a sign-in as USERNAME from REQUEST's client must wait now."""
    config = _config()
    now = timezone.now()
    recent = LoginFailure.objects.filter(created__gt=now - timedelta(seconds=config["window"]))
    name = recent.filter(username=user_key(username), user_cleared=False)
    device = known_device(request, username)
    if device is not None:
        return _wait(name.filter(device=device), config["per_user"], config["max_delay"], "device", now)
    address = _address(request)
    return (
        _wait(name.filter(address=address), config["per_user"], config["max_delay"], "user", now)
        or _wait(name, config["per_user"], config["shared_max_delay"], "user", now)
        or _wait(recent.filter(address=address), config["per_address"], config["shared_max_delay"], "address", now)
    )


def record_failure(request, username: str) -> None:
    """Count one failed sign-in; forget the failures that have left the window."""
    config = _config()
    now = timezone.now()
    LoginFailure.objects.filter(created__lte=now - timedelta(seconds=config["window"])).delete()
    LoginFailure.objects.create(
        username=user_key(username), address=_address(request), device=known_device(request, username) or ""
    )


def clear_user(username: str) -> None:
    """A successful sign-in: the user name starts afresh (the failures still count for their
    addresses)."""
    LoginFailure.objects.filter(username=user_key(username), user_cleared=False).update(user_cleared=True)


# -- password reset ----------------------------------------------------------------------------

RESET_DEFAULTS = {"per_address": 5, "per_email": 3, "window": 60 * 60}


def reset_allowed(request, email: str) -> bool:
    """Whether a reset mail may be sent for EMAIL to REQUEST's client now: at most
    PANEL_RESET_THROTTLE["per_email"] requests for one e-mail address and "per_address" from one
    client address in "window" seconds. Every request is counted, sent or not, so the answer
    does not depend on whether an account has that address."""
    config = {**RESET_DEFAULTS, **getattr(settings, "PANEL_RESET_THROTTLE", {})}
    now = timezone.now()
    PasswordResetRequest.objects.filter(created__lte=now - timedelta(seconds=config["window"])).delete()
    email, address = str(email).strip().lower()[:254], _address(request)
    recent = PasswordResetRequest.objects.filter(created__gt=now - timedelta(seconds=config["window"]))
    allowed = (
        recent.filter(email=email).count() < config["per_email"]
        and recent.filter(address=address).count() < config["per_address"]
    )
    PasswordResetRequest.objects.create(email=email, address=address)
    return allowed
