"""The join endpoint: POST /nodes/join/ with the operator's one-time token and what the new host
has (vservers.nodes.join); `manage.py node join URL TOKEN` is its client.

The token is the only credential (no session, no API token, no CSRF: a command posts it), so
the endpoint is throttled like the sign-in (accounts.throttle): every refused token counts as
a failed sign-in of the name "(node join)" from the client's address, and growing delays
follow. The answer holds the node's database and Redis credentials: serve the panel over TLS
(docs/cluster.md).
"""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from accounts import throttle
from accounts.models import AuditEntry
from vservers.nodes import join

THROTTLE_NAME = "(node join)"
FIELDS = {"token": str, "cpus": int, "memory_mb": int, "disk_mb": int, "ssh_host_key": str,
          "ssh_public_key": str, "ssh_address": str, "vserver_root": str}
REQUIRED = ("token", "cpus", "memory_mb", "disk_mb", "ssh_host_key", "ssh_public_key")
MAX_BODY = 64 * 1024


def _error(detail: str, status: int, **headers) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status, headers=headers)


def _offer(body: bytes) -> join.Offer:
    if len(body) > MAX_BODY:
        raise join.JoinRefused("The join request is too large.")
    try:
        data = json.loads(body)
    except ValueError:
        raise join.JoinRefused("The join request must be a JSON object.") from None
    if not isinstance(data, dict):
        raise join.JoinRefused("The join request must be a JSON object.")
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        raise join.JoinRefused(f"The join request lacks {', '.join(missing)}.")
    values: dict = {}
    for name, kind in FIELDS.items():
        if name in data:
            value = data[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise join.JoinRefused(f"The join request's {name} must be a {'number' if kind is int else 'text'}.")
            values[name] = value
    return join.Offer(**values)


@csrf_exempt
@require_http_methods(["POST"])
def node_join(request: HttpRequest) -> JsonResponse:
    waiting = throttle.check(request, THROTTLE_NAME)
    if waiting is not None:
        return _error(f"Too many refused join tokens from this address; try again in {waiting.retry_after} s.",
                      429, **{"Retry-After": str(waiting.retry_after)})
    try:
        offer = _offer(request.body)
        joined = join.accept(offer)
    except join.JoinRefused as exc:
        throttle.record_failure(request, THROTTLE_NAME)
        return _error(str(exc), 400)
    AuditEntry.record(request, "node.joined", None, node=joined.name, queue=joined.queue)
    return JsonResponse(joined.as_dict())
