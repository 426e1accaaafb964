"""The OpenAPI schema and the docs page (Swagger UI, its files from drf-spectacular-sidecar,
served as our own static files: no CDN).

The docs page works under the panel's Content-Security-Policy unchanged (no inline script):
drf-spectacular's "split" view loads its start-up script from a URL of its own (?script) instead
of inline, and that script carries the session's CSRF token for "Try it out" (the CSRF cookie
is HttpOnly, so no script could read it). The page is a panel page for signed-in users (a
stranger is sent to the login page); the schema is for signed-in users and tokens.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerSplitView

from .. import schema  # noqa: F401 - the token's and the session's security schemes, the error answers
from ..permissions import SignedIn


class SchemaView(SpectacularJSONAPIView):
    """The schema as JSON (its errors too, in the API's shape)."""

    permission_classes = [SignedIn]


class SwaggerView(SpectacularSwaggerSplitView):
    permission_classes = [SignedIn]


_swagger = SwaggerView.as_view(url_name="api-schema")


@login_required
@require_GET
def docs(request: HttpRequest) -> HttpResponse:
    """The page and, with ?script, its start-up script. A plain panel view around DRF's (which
    is CSRF-exempt and would answer a stranger with 401): the login redirect and Django's CSRF
    check apply as on every page."""
    return _swagger(request)
