from __future__ import annotations

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import tenant

# A health probe must answer quickly even when Redis hangs: connecting and the reply each get
# this many seconds, and there is no retry (redis-py retries by default).
REDIS_TIMEOUT = 1.0


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The server list itself (not a redirect), so "/" after login is one request."""
    return tenant.server_list(request)


def redis_is_up() -> bool:
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for monitors: the web process answers; "redis" tells whether jobs can be queued.

    No login and no database access, so it stays cheap and leaks nothing.
    """
    return JsonResponse({"ok": True, "redis": redis_is_up()})
