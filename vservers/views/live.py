"""How every page that shows moving state follows it: one mechanism for the tenant's and the
operator's pages alike.

A live page (a GET view wrapped in `live_page`) names its own URL and an ETag in <body>
(templates/base.html). static/js/panel.js asks for that URL again every POLL_SECONDS with
the header X-Live and If-None-Match. The view first computes the page's *fingerprint*, a
few aggregates of what the page shows, from one small query set; while it is unchanged the
answer is a bodiless 304 and nothing is built or rendered. When it has changed, the page is
rendered as usual with its new ETag, and the script morphs only the page's regions marked
`data-live` into place (keeping focus, scroll and what the user is typing), then reads the
changes marked `data-announce` aloud in the page's one polite live region.

Why a conditional poll and not server-sent events or a websocket (the console has one): the
pages' views are synchronous Django views, and pushing changes would take a channel layer
that every writer (the worker, the sampler) publishes to and a stream held open per page;
a poll is one short request, passes every proxy, needs no connection kept anywhere, and
while nothing moves costs a 304 after its one fingerprint query (plus the session's and the
user's). A few seconds of delay is what a person watching a server start can live with.

Not covered by a fingerprint (the next full load shows it): an operator renaming a plan,
a template, a node or a tenant.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, Max, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.cache import get_conditional_response

from ..models import GuestAccount, IPAddress, Operation, Service, TemplateBuild, VirtualServer
from ..models.guest import UnlistedEntries
from ..nodes.status import unknown_servers

# How often an open page asks for itself again (panel.js reads it from <body>).
POLL_SECONDS = 3
# The header panel.js's polls carry: only they may get a 304 (a browser's own request for a
# page it has no copy of must never get one).
POLL_HEADER = "X-Live"
# A poll for a page whose object is gone (a deleted server): the script goes here instead.
GONE_HEADER = "X-Live-Gone"


@dataclass(frozen=True)
class Live:
    """What base.html writes into <body> for the script: where to poll and the ETag of what
    the page shows; `polled` is true for the script's own requests."""

    url: str
    etag: str
    polled: bool
    seconds: int = POLL_SECONDS


@functools.cache
def markup_version() -> str:
    """Part of every ETag: a deployment that changes the templates changes every ETag, so
    an open page takes the new markup at its next poll. The same in every worker process
    (a per-process value would make pages flip between workers' ETags)."""
    digest = hashlib.sha256()
    directories: list[Path] = settings.TEMPLATES[0]["DIRS"]  # type: ignore[assignment]
    for directory in directories:
        for path in sorted(Path(directory).rglob("*.html")):
            digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def etag(request: HttpRequest, parts: Iterable) -> str:
    """A strong ETag of the page REQUEST asks for: the markup, the user (what they may do
    changes the page), the full path (page number, filters), and PARTS, the fingerprint."""
    user = request.user
    key = "|".join(
        str(part) for part in (markup_version(), user.pk, user.is_staff, request.get_full_path(), *parts)
    )
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def minute() -> int:
    """For pages that say how long ago something happened ("up for 5 min", "measured 1 min
    ago"): a fingerprint part that lets those words move on once a minute."""
    return int(time.time() // 60)


def live_page(fingerprint: Callable[..., Iterable], *, gone: Callable[[HttpRequest], str] | None = None):
    """Make a GET view a live page. FINGERPRINT(request, *args, **kwargs) returns what the
    page shows that can move (a tuple of aggregates), cheaply; it may raise Http404, as the
    view would. GONE(request) is where a poll for a page whose object went away sends the
    browser (a 404 with the GONE_HEADER); without it the script reloads into the 404.

    Put it below the login and permission decorators, so that no one learns anything from
    a fingerprint they may not see."""

    def decorate(view):
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in ("GET", "HEAD"):
                return view(request, *args, **kwargs)
            polled = request.headers.get(POLL_HEADER) == "1"
            try:
                tag = etag(request, fingerprint(request, *args, **kwargs))
            except Http404:
                if polled and gone is not None:
                    return HttpResponse(status=404, headers={GONE_HEADER: gone(request)})
                raise
            request.live = Live(request.get_full_path(), tag, polled)  # type: ignore[attr-defined]
            if polled:
                unchanged = get_conditional_response(request, etag=tag)
                if unchanged is not None:
                    unchanged["ETag"] = tag
                    return unchanged
            response = view(request, *args, **kwargs)
            if response.status_code == 200:
                response["ETag"] = tag
            return response

        return wrapper

    return decorate


# -- fingerprints: what changes whenever a page's state does -----------------------------


def _per_server(model, aggregate) -> Subquery:
    """AGGREGATE over MODEL's rows of the outer query's server, as a scalar subquery."""
    rows = model.objects.filter(server=OuterRef("pk")).order_by().values("server")
    return Subquery(rows.annotate(value=aggregate).values("value")[:1])


def server_changes(servers: QuerySet[VirtualServer]) -> tuple | None:
    """Everything a server's page shows that can move, for the one server in SERVERS, from
    one query (None when there is no such server): its row (every state and plan change
    bumps `updated`, every usage sample `sampled_at`), its addresses, its operations (each
    one queued, started or finished), and the accounts, services and unlisted entries the
    worker last read (each listing replaces the rows, so their highest id moves)."""
    found = (
        servers.order_by()
        .annotate(
            n_addresses=_per_server(IPAddress, Count("pk")),
            last_address=_per_server(IPAddress, Max("pk")),
            n_operations=_per_server(Operation, Count("pk")),
            last_operation=_per_server(Operation, Max("pk")),
            last_started=_per_server(Operation, Max("started")),
            last_finished=_per_server(Operation, Max("finished")),
            last_account=_per_server(GuestAccount, Max("pk")),
            last_service=_per_server(Service, Max("pk")),
            last_unlisted=_per_server(UnlistedEntries, Max("pk")),
            # Its node going silent or coming back (the state shows "unknown" or not).
            unknown=ExpressionWrapper(unknown_servers(), output_field=BooleanField()),
        )
        .values_list(
            "pk", "updated", "sampled_at", "n_addresses", "last_address", "n_operations", "last_operation",
            "last_started", "last_finished", "last_account", "last_service", "last_unlisted", "unknown",
        )
        .first()
    )
    return tuple(found) if found is not None else None


def operation_changes(operations: QuerySet[Operation] | QuerySet[TemplateBuild]) -> tuple:
    """What changes whenever a list of OPERATIONS (or of template builds, which move the same
    way) does, from one aggregate query: one is queued (the count and the highest id),
    started or finished."""
    totals = operations.order_by().aggregate(
        n_operations=Count("pk"), last_operation=Max("pk"), last_started=Max("started"),
        last_finished=Max("finished"), n_finished=Count("finished"),
    )
    return tuple(totals.values())
