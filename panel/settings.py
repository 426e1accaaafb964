"""Django settings for the panel, read from the environment.

Nothing here has a "development" flavour to forget about: the defaults are the ones a single
host runs with (`make run`), and every variable is checked strictly so that a typo fails at
start-up. See README.md for the list of variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from panel import env
from vservers.nodes.queues import node_queues

ENV = os.environ

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the panel writes at run time: database, secret key, static files, redis socket.
VAR_DIR = BASE_DIR / "var"

SECRET_KEY = env.secret_key(ENV, VAR_DIR / "secret_key")
DEBUG = env.env_bool(ENV, "DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.env_list(ENV, "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    # Two-factor sign-in (accounts.two_factor): TOTP devices and the recovery codes.
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files for the API's docs page, served as our own static files.
    "drf_spectacular_sidecar",
    "accounts",
    "vservers",
    "api",
    # Mail to operators and tenants' admins through an outbox (notifications/).
    "notifications",
    # A terminal into a server from the browser, through the node's console broker (consoles/).
    "consoles",
    # Per-server alert thresholds, one mail per episode through the outbox (alerts/).
    "alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response, no-store for signed-in users (panel.middleware).
    "panel.middleware.SecurityHeadersMiddleware",
    # gunicorn does not serve files; WhiteNoise serves the collected ones from STATIC_ROOT.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Django's, plus the session epoch check: signing out ends all of a user's sessions.
    "accounts.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): whether this session gave the second factor (django-otp).
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A session of a user with two-factor sign-in must have given the code; an operator who
    # must use it and has not set it up reaches only the set-up page (accounts.middleware).
    "accounts.middleware.SecondFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "panel.urls"
WSGI_APPLICATION = "panel.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The count on the operator's Approvals link (staff only, one query).
                "notifications.context_processors.approvals",
            ],
            # How numbers and times are written (cpus, duration, ago), in every template.
            "builtins": ["vservers.templatetags.panel_format"],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL names another (PostgreSQL, or a SQLite file).
if "DATABASE_URL" in ENV:
    DATABASES = {"default": env.parse_database_url(ENV["DATABASE_URL"])}
else:
    DATABASES = {"default": env.sqlite_database(VAR_DIR / "db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis for the job queues. Default: the private redis-server that scripts/run-panel starts.
REDIS_URL = env.check_redis_url(ENV.get("REDIS_URL", f"unix://{VAR_DIR}/run/redis.sock?db=0"))
# One queue per node: "default" (the one-host install's node) and "node-<name>" of every node
# made in the panel, all on this Redis (vservers.nodes.queues). JSON, not RQ's default pickle:
# whoever can write to Redis must not run code as root.
RQ_QUEUES = node_queues(REDIS_URL, timeout=3600)
RQ = {
    # Push jobs when asked: vservers.actions.enqueue already waits for the commit itself (a
    # second, nested deferral would lose the job's id inside test transactions).
    "COMMIT_MODE": "auto",
    # The allow-list (vservers.queues.PanelJob) also for django-rq's own commands, e.g. a
    # `manage.py rqworker` started by hand: it runs only the panel's functions, no callbacks.
    "JOB_CLASS": "vservers.queues.PanelJob",
}
# How often each node's worker compares the database with the kernel (vservers.reconcile).
PANEL_RECONCILE_SECONDS = env.env_int(ENV, "PANEL_RECONCILE_SECONDS", default=30, low=5, high=3600)
# How many worker processes `manage.py nodeworker` runs on a node (vservers.worker.WorkerGroup):
# each takes one job at a time, and a server's operations still run one at a time, in order
# (vservers.jobs.claim_next). While one waits on the kernel (a guest shutting down, a netns
# torn down) another uses the CPU: on 2 CPUs, lifecycle cycles per second through the panel
# rose with 1, 2, 3, 4 workers and no further with 8 (bench/results/SUMMARY.md, "Panel"), so
# the default is twice the CPUs, at most 8.
PANEL_NODE_WORKERS = env.env_int(ENV, "PANEL_NODE_WORKERS", default=min(2 * (os.cpu_count() or 1), 8), low=1,
                                 high=64)
# How often each node's worker writes its heartbeat (Node.last_seen), from a thread of its own
# (a long job must not make a node look gone), and after how long without one a node is
# "unreachable" and its servers' state "unknown".
PANEL_HEARTBEAT_SECONDS = env.env_int(ENV, "PANEL_HEARTBEAT_SECONDS", default=5, low=1, high=300)
PANEL_NODE_TIMEOUT_SECONDS = env.env_int(ENV, "PANEL_NODE_TIMEOUT_SECONDS", default=30, low=2, high=3600)
# Joining a node (vservers.nodes.join): how long the operator's one-time token is good for; what
# a joined node is told to connect to: the database host as the nodes reach it (empty: the
# panel's own DATABASES HOST) and the Redis URL (empty: REDIS_URL).
PANEL_JOIN_TOKEN_SECONDS = env.env_int(ENV, "PANEL_JOIN_TOKEN_SECONDS", default=3600, low=60, high=7 * 86400)
PANEL_NODE_DATABASE_HOST = ENV.get("PANEL_NODE_DATABASE_HOST", "")
PANEL_NODE_REDIS_URL = ENV.get("PANEL_NODE_REDIS_URL", "")
# How often each node's worker samples its servers' usage (vservers.usage.sampler).
PANEL_SAMPLE_SECONDS = env.env_int(ENV, "PANEL_SAMPLE_SECONDS", default=30, low=10, high=60)
# The browser console (consoles/): the node's broker listens on this Unix socket (root, group of
# the web process's user); a ticket is good for this many seconds, once; a session with no
# keystroke for PANEL_CONSOLE_IDLE_SECONDS ends.
PANEL_CONSOLE_SOCKET = Path(ENV.get("PANEL_CONSOLE_SOCKET", str(VAR_DIR / "run" / "console.sock")))
PANEL_CONSOLE_TICKET_SECONDS = env.env_int(ENV, "PANEL_CONSOLE_TICKET_SECONDS", default=30, low=5, high=300)
PANEL_CONSOLE_IDLE_SECONDS = env.env_int(ENV, "PANEL_CONSOLE_IDLE_SECONDS", default=900, low=10, high=86400)
# Backups (vservers.backups): the second destination every new backup is copied to, with rsync
# over SSH ("user@host:/path"; empty: none); how long a download link is good for (once).
PANEL_BACKUP_REMOTE = ENV.get("PANEL_BACKUP_REMOTE", "")
PANEL_BACKUP_TICKET_SECONDS = env.env_int(ENV, "PANEL_BACKUP_TICKET_SECONDS", default=30, low=5, high=300)
# How many operations a tenant's servers may have queued or running at once: each is a job for
# a root worker, so a tenant must not be able to flood a node's queue.
PANEL_MAX_PENDING_PER_TENANT = env.env_int(ENV, "PANEL_MAX_PENDING_PER_TENANT", default=20, low=1, high=10000)

# The REST API (api/, docs/api.md): bearer tokens made in the panel, or the browser's session
# (with its CSRF token) for the docs page; JSON only; errors as {"detail", "code", "fields"}.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First: its WWW-Authenticate header makes a missing or bad token a 401.
        "api.authentication.TokenAuthentication",
        "api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.SignedIn", "api.permissions.TokenScope"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.TokenRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "api.schema.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "vservers panel API",
    "DESCRIPTION": "Servers, their operations, accounts and services, requests and approvals. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["api.permissions.SignedIn"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Two choice sets share the field name "status" (an operation's, a node's): named here,
    # or drf-spectacular names one by a hash (and `check --deploy` warns).
    "ENUM_NAME_OVERRIDES": {
        "OperationStatusEnum": "vservers.models.operations.OperationStatus",
        "NodeStatusEnum": [("online", "online"), ("unreachable", "unreachable")],
    },
}
# API tokens (api.models.ApiToken): requests per token within "window" seconds (429 with
# Retry-After beyond), the longest lifetime a token may be given, and whether operators'
# tokens may write (False: an operator's token is read-only whatever scope was asked for).
PANEL_API_RATE = {"requests": env.env_int(ENV, "PANEL_API_RATE", default=600, low=1, high=1_000_000), "window": 60}
PANEL_API_TOKEN_MAX_DAYS = 366
PANEL_API_OPERATOR_WRITE = env.env_bool(ENV, "PANEL_API_OPERATOR_WRITE", default=True)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Django's ModelBackend, whose get_user also brings the user's session epoch (accounts.sessions).
AUTHENTICATION_BACKENDS = ["accounts.sessions.PanelBackend"]

# The login throttle (accounts.throttle): failed sign-ins within a sliding window of "window"
# seconds, per known device, per user name and address, per user name and per address; beyond
# the free ones, 2^n seconds of delay, capped at "max_delay" for one guesser and at
# "shared_max_delay" for the counts a stranger can run up for someone else.
PANEL_LOGIN_THROTTLE = {
    "per_user": 5,
    "per_address": 20,
    "window": 15 * 60,
    "max_delay": 15 * 60,
    "shared_max_delay": 60,
}
# Password reset mails (accounts.throttle.reset_allowed): at most this many requests per e-mail
# address and per client address within "window" seconds; the others are dropped silently.
PANEL_RESET_THROTTLE = {"per_email": 3, "per_address": 5, "window": 60 * 60}
# Reverse proxies whose X-Forwarded-For is believed (accounts.addresses): addresses or networks,
# comma-separated. Empty: the client is REMOTE_ADDR, and X-Forwarded-For is never read.
PANEL_TRUSTED_PROXIES = env.env_networks(ENV, "PANEL_TRUSTED_PROXIES")

# Two-factor sign-in (accounts.two_factor). Operators (staff users) must set it up before they
# can do anything when this is on; tenants may. Off here (the tests, a host's own `manage.py`
# shell); panel.production turns it on unless the panel is served to this host only
# (DJANGO_LOCAL_HTTP=1, what `make run` does until a host name is set). The variable wins.
PANEL_REQUIRE_2FA_OPERATORS = env.env_bool(ENV, "PANEL_REQUIRE_2FA_OPERATORS", default=False)
# The name authenticator apps show beside the user name.
OTP_TOTP_ISSUER = "vservers panel"
# django-otp's own throttle per device is off: its delays grow without a cap and are shared by
# whoever types codes for the user, so a thief of the password could lock the owner out of
# the second factor. Wrong codes count in the login throttle instead (PANEL_LOGIN_THROTTLE:
# per known device, per name and address, capped).
OTP_TOTP_THROTTLE_FACTOR = 0
OTP_STATIC_THROTTLE_FACTOR = 0

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# WhiteNoise warns on every request while STATIC_ROOT is missing (before collectstatic).
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # No manifest: templates render (and tests pass) before collectstatic has run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Cookies and sessions. Our own cookie names keep us apart from other Django sites that
# share the host name (127.0.0.1) in a browser.
SESSION_COOKIE_NAME = "vpanel_session"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# A working day; signing out (anywhere) ends every session of the user before that.
SESSION_COOKIE_AGE = 12 * 60 * 60
CSRF_COOKIE_NAME = "vpanel_csrftoken"
# Pages send the token in forms (and htmx headers), so scripts never need to read the cookie.
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# HTTPS (secure cookies, HSTS, the redirect to https://) is panel.production's: gunicorn and
# manage.py use that module; the tests use this one directly and speak plain HTTP.

# Mail: password resets, and the notifications' outbox (notifications/; sent by the worker).
# Without DJANGO_EMAIL_HOST the messages go to the log of the process that sends them (the web
# process for resets, the worker for notifications), where the operator can read them on a host
# without a mail server.
if "DJANGO_EMAIL_HOST" in ENV:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = ENV["DJANGO_EMAIL_HOST"]
    EMAIL_PORT = env.env_int(ENV, "DJANGO_EMAIL_PORT", default=25, low=1, high=65535)
    EMAIL_HOST_USER = ENV.get("DJANGO_EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = ENV.get("DJANGO_EMAIL_HOST_PASSWORD", "")
    # STARTTLS on the submission port; implicit TLS (port 465) is DJANGO_EMAIL_USE_SSL.
    EMAIL_USE_TLS = env.env_bool(ENV, "DJANGO_EMAIL_USE_TLS", default=False)
    EMAIL_USE_SSL = env.env_bool(ENV, "DJANGO_EMAIL_USE_SSL", default=False)
    if EMAIL_USE_TLS and EMAIL_USE_SSL:
        raise ImproperlyConfigured("DJANGO_EMAIL_USE_TLS and DJANGO_EMAIL_USE_SSL exclude each other: set one")
    EMAIL_TIMEOUT = 10
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = ENV.get("DJANGO_DEFAULT_FROM_EMAIL", "panel@localhost")
# How often the outbox tries to send one mail before it gives up (the error stays on the row,
# for operators in the admin); the waits between attempts double from a minute.
PANEL_MAIL_ATTEMPTS = env.env_int(ENV, "PANEL_MAIL_ATTEMPTS", default=5, low=1, high=20)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        # django.server repeats what gunicorn's access log says
        "django.server": {"level": "WARNING"},
    },
}
