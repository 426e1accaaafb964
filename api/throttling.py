"""The rate limit per API token: PANEL_API_RATE["requests"] within a fixed window of "window"
seconds; beyond that 429 with Retry-After (the seconds until the window ends).

The count lives on the token's row and moves in one UPDATE (which also stamps `last_used`), so
every gunicorn worker counts in the same place, as the login throttle keeps its counts in the
database (accounts.throttle) rather than in a per-process cache; nor does Redis being down
lift the limit. A fixed window lets a client send up to twice the rate across a window's edge;
that is the price of one row write per request. Requests with the session are not limited
here: they are a person in a browser, as on the pages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Case, F, Value, When
from django.utils import timezone
from rest_framework.throttling import BaseThrottle

from .models import ApiToken


def rate() -> tuple[int, int]:
    config = settings.PANEL_API_RATE
    return int(config["requests"]), int(config["window"])


class TokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.wait_seconds: float | None = None

    def allow_request(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        limit, window = rate()
        now = timezone.now()
        start = datetime.fromtimestamp(now.timestamp() // window * window, tz=UTC)
        # Both assignments read the row as it was: a request in a new window starts at 1.
        ApiToken.objects.filter(pk=token.pk).update(
            window_count=Case(When(window_start=start, then=F("window_count") + 1), default=Value(1)),
            window_start=start,
            last_used=now,
        )
        count = ApiToken.objects.filter(pk=token.pk).values_list("window_count", flat=True).first() or 0
        if count <= limit:
            return True
        self.wait_seconds = max(1.0, (start + timedelta(seconds=window) - now).total_seconds())
        return False

    def wait(self) -> float | None:
        return self.wait_seconds
