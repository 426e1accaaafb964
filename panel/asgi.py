"""ASGI entry point: what gunicorn's uvicorn workers serve (scripts/run-panel).

HTTP goes to Django as it would under WSGI (panel/wsgi.py stays for who prefers it: everything
but the browser console works there). WebSockets go through Django Channels: the origin must be
one of ALLOWED_HOSTS (a page of another site cannot open a console in the user's name), the
session cookie gives the user, and the URL router picks the consumer (consoles/routing.py).
No channel layer: a console talks to its broker, not to other consumers.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

# Django is set up here, before anything imports models (the consumers do).
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from consoles.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
