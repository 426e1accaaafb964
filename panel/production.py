"""The settings gunicorn and manage.py use (panel.wsgi, manage.py): panel.settings plus HTTPS.

gunicorn listens on 127.0.0.1 only. In front of it, a TLS-terminating reverse proxy on this
host (nginx, Caddy, ...) serves the panel's host name; it must set X-Forwarded-Proto (and
X-Forwarded-For, see PANEL_TRUSTED_PROXIES). Then cookies travel over HTTPS only, plain HTTP is
redirected to HTTPS, browsers are told to stay on HTTPS (HSTS), and `manage.py check --deploy`
has nothing to report.

DJANGO_LOCAL_HTTP=1 is the one exception: the panel used over plain HTTP from this host only
(http://127.0.0.1:8000, or through an SSH tunnel), which is what `make run` does until the
operator names a host in DJANGO_ALLOWED_HOSTS. Cookies are then sent without the Secure flag
(browsers would not store them from http://); that is only allowed while ALLOWED_HOSTS names
nothing but this host, so the panel cannot be served that way to the network.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from panel import env
from panel.settings import *  # noqa: F403 - this module is panel.settings plus the lines below
from panel.settings import ALLOWED_HOSTS, DEBUG, ENV, SECRET_KEY

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}

if "DJANGO_HTTPS" in ENV:
    raise ImproperlyConfigured(
        "DJANGO_HTTPS is gone: HTTPS is the default now. Unset it; DJANGO_LOCAL_HTTP=1 is for plain "
        "HTTP on this host only"
    )

# Django's own rule for a key that is not guessable (check --deploy's security.W009).
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-"):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be at least 50 random characters; unset it to have one generated in var/"
    )

PANEL_LOCAL_HTTP = env.env_bool(ENV, "DJANGO_LOCAL_HTTP", default=False)

if PANEL_LOCAL_HTTP:
    remote = [host for host in ALLOWED_HOSTS if host not in LOOPBACK_HOSTS]
    if remote:
        raise ImproperlyConfigured(
            "DJANGO_LOCAL_HTTP=1 serves plain HTTP to this host only: DJANGO_ALLOWED_HOSTS may name only "
            f"{', '.join(sorted(LOOPBACK_HOSTS))}, not {', '.join(remote)}. Put a TLS proxy in front and "
            "unset DJANGO_LOCAL_HTTP to serve the panel to the network"
        )
else:
    # Served to the network: operators sign in with a second factor unless told otherwise.
    PANEL_REQUIRE_2FA_OPERATORS = env.env_bool(ENV, "PANEL_REQUIRE_2FA_OPERATORS", default=True)

    if DEBUG:
        raise ImproperlyConfigured("DJANGO_DEBUG=1 shows settings and code to anyone: only with DJANGO_LOCAL_HTTP=1")

    # The proxy says which scheme the browser used; gunicorn only ever sees plain HTTP.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Monitors ask gunicorn directly (http://127.0.0.1:8000/healthz), not through the proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # __Host-: browsers take the cookie only with Secure, for the whole site, and from this
    # host itself (no Domain), so a sibling host cannot plant a session or a CSRF cookie.
    SESSION_COOKIE_NAME = "__Host-vpanel_session"
    CSRF_COOKIE_NAME = "__Host-vpanel_csrftoken"

    # A year, as browsers and check --deploy expect. A panel that once spoke HTTPS keeps doing
    # it; DJANGO_HSTS_SECONDS=300 while trying a new proxy out.
    YEAR = 365 * 24 * 3600
    SECURE_HSTS_SECONDS = env.env_int(ENV, "DJANGO_HSTS_SECONDS", default=YEAR, low=60, high=2 * YEAR)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # "preload" asks browsers' makers to hard-code the domain, which only the owner of the whole
    # domain may decide; it is off unless asked for, and check --deploy's reminder with it.
    SECURE_HSTS_PRELOAD = env.env_bool(ENV, "DJANGO_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
