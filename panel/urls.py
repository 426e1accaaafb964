from __future__ import annotations

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from api.nodes_join import node_join

# The API answers in JSON even where no URL pattern matched (a malformed UUID in the path) or a
# view crashed; the panel's pages keep Django's own pages.
handler404 = "api.errors.not_found"
handler500 = "api.errors.server_error"

urlpatterns = [
    # Browsers ask for /favicon.ico whatever the page links; the icon is an SVG in static/.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), http_method_names=["get", "head"]),
         name="favicon"),
    path("", include("vservers.urls")),
    # A server's Alerts form, tenant's and operator's (alerts/), beside the server pages.
    path("", include("alerts.urls")),
    # The browser console's pages and tickets (consoles/); its WebSocket is in panel/asgi.py.
    path("", include("consoles.urls")),
    # API tokens: the user's own page (api.pages), beside the password change.
    path("accounts/tokens/", include("api.urls_pages")),
    # The user's own mail settings (notifications.views), beside the password and tokens.
    path("accounts/notifications/", include("notifications.urls")),
    path("accounts/", include("accounts.urls")),
    # The REST API (api/; docs/api.md): /api/v1/..., the schema and its docs page.
    path("api/", include("api.urls")),
    # A new node's one-time token (api/nodes_join.py, `manage.py node join`): no user, no session.
    path("nodes/join/", node_join, name="node_join"),
    # The RQ dashboard of django-rq hangs itself into the admin (/admin/django_rq/).
    path("admin/", admin.site.urls),
]
