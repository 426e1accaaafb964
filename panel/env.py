"""Strict readers for the panel's settings from the environment.

Every reader raises ImproperlyConfigured with the variable's name on a bad value, so a typo
stops the process at start-up instead of running with a silently different configuration.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

MIN_SECRET_KEY_LENGTH = 32


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Only "0" and "1": "false", "no" or "" are refused rather than guessed at."""
    value = env.get(name)
    if value is None:
        return default
    if value not in ("0", "1"):
        raise ImproperlyConfigured(f'{name} must be "0" or "1", not {value!r}')
    return value == "1"


def env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    value = env.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise ImproperlyConfigured(f"{name} must be between {low} and {high}, not {number}")
    return number


def env_list(env: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    """A comma-separated list; empty items ("a,,b", a trailing comma) are refused."""
    value = env.get(name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        raise ImproperlyConfigured(f"{name} must be a comma-separated list without empty items, not {value!r}")
    return items


def env_networks(env: Mapping[str, str], name: str) -> list[str]:
    """A comma-separated list of IP addresses or networks ("127.0.0.1,10.0.0.0/8"); empty
    when the variable is not set."""
    if name not in env:
        return []
    items = env_list(env, name, default=[])
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must list IP addresses or networks, not {item!r}") from None
    return items


def load_or_create_secret_key(path: Path) -> str:
    """Read the key from `path`, creating it (mode 0600) on first use.

    Several processes may start at once on a fresh installation (gunicorn workers, the RQ
    worker, manage.py). Each writes its candidate to a private temporary file and link()s it
    into place: link() fails if the name exists, so exactly one candidate wins and everybody
    reads the winner instead of overwriting each other's key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ImproperlyConfigured(f"{path} holds no usable secret key; delete it to have a new one made")
    return key


def secret_key(env: Mapping[str, str], path: Path) -> str:
    value = env.get("DJANGO_SECRET_KEY")
    if value is None:
        return load_or_create_secret_key(path)
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise ImproperlyConfigured(f"DJANGO_SECRET_KEY must have at least {MIN_SECRET_KEY_LENGTH} characters")
    return value


def sqlite_database(path: str | Path) -> dict:
    """Django's DATABASES entry for the SQLite file at PATH, as the panel runs it: Django's own
    backend with a write gate (panel/sqlite/base.py), so that writers wait for each other on
    an flock that wakes them at once, not in SQLite's busy handler's sleeps of up to 100 ms."""
    return {
        "ENGINE": "panel.sqlite",
        "NAME": path,
        "OPTIONS": {
            # The web server and the worker write concurrently: WAL lets readers go on
            # while one writes, and IMMEDIATE takes the write lock when a transaction
            # begins, so two writers queue up (timeout) instead of failing with
            # "database is locked" when one tries to upgrade a read lock.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # Keep the connection between requests and the worker's jobs: opening it and
        # running the PRAGMAs again each time costs several milliseconds per job.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def _parse_sqlite_url(url: str) -> dict:
    """sqlite:///relative/path (to the current directory) or sqlite:////absolute/path, as
    dj-database-url reads them. An in-memory database (sqlite://, sqlite://:memory:) is
    refused: the web server and the worker are separate processes and would not share it."""
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            "DATABASE_URL for SQLite names a file, without host or options: "
            f"sqlite:///relative/path or sqlite:////absolute/path, not {url!r}"
        )
    path = unquote(parts.path.removeprefix("/"))
    if not path or path.endswith("/") or path == ":memory:":
        raise ImproperlyConfigured(
            f"DATABASE_URL must name a SQLite file: sqlite:///relative/path or sqlite:////absolute/path, not {url!r}"
        )
    return sqlite_database(path)


def parse_database_url(url: str) -> dict:
    """Django's DATABASES entry for postgres://user:pass@host:port/dbname[?option=value...]
    or a SQLite file (sqlite:///relative/path, sqlite:////absolute/path).

    User and password may be percent-encoded. A host that starts with %2F is a Unix socket
    directory (postgres://user@%2Frun%2Fpostgresql/db). Query parameters become libpq options
    (sslmode=require, connect_timeout=5).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return _parse_sqlite_url(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(
            "DATABASE_URL must start with postgres://, postgresql:// or sqlite:///, "
            f"not {parts.scheme or url!r}://"
        )
    name = unquote(parts.path.removeprefix("/"))
    if not name or "/" in name:
        raise ImproperlyConfigured("DATABASE_URL must name one database: postgres://user:pass@host:port/dbname")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured("DATABASE_URL has an invalid port") from None

    host_port = parts.netloc.rpartition("@")[2]
    if host_port.lower().startswith("%2f"):
        # hostname would lowercase the socket path; take it verbatim instead
        host = unquote(host_port)
    else:
        host = parts.hostname or ""

    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


def check_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(f"REDIS_URL must start with redis://, rediss:// or unix://, not {url!r}")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ImproperlyConfigured(f"REDIS_URL must name an absolute socket path: unix:///path?db=0, not {url!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"REDIS_URL must name a host, not {url!r}")
    return url
