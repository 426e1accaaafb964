"""WSGI entry point for gunicorn: `gunicorn panel.wsgi:application`, with the production settings
(panel.production: HTTPS unless DJANGO_LOCAL_HTTP=1)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.production")

application = get_wsgi_application()
