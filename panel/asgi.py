"""ASGI entry point, unused for now (gunicorn serves WSGI); kept for an async server later."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

application = get_asgi_application()
