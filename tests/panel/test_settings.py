"""The settings read the environment strictly: a bad value stops the process at start-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from panel import env

REPO = Path(__file__).resolve().parents[2]


def load_settings(**overrides: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with the given environment."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    environ.update(DJANGO_SETTINGS_MODULE="panel.settings", **overrides)
    code = "from django.conf import settings; print(settings.DEBUG, settings.DATABASES['default']['ENGINE'])"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )


def test_it_rejects_a_bad_debug_value():
    result = load_settings(DJANGO_DEBUG="yes")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_DEBUG" in result.stderr


@pytest.mark.parametrize(("value", "expected"), [("0", "False"), ("1", "True")])
def test_it_accepts_zero_and_one_for_debug(value, expected):
    result = load_settings(DJANGO_DEBUG=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == expected


def test_it_defaults_to_sqlite():
    result = load_settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "panel.sqlite"


def test_it_rejects_a_database_url_it_does_not_understand():
    result = load_settings(DATABASE_URL="mysql://user:pass@db.example/panel")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_it_rejects_a_short_secret_key():
    result = load_settings(DJANGO_SECRET_KEY="tooshort")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_it_rejects_a_redis_url_without_scheme():
    result = load_settings(REDIS_URL="localhost:6379")
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr


def test_it_parses_a_postgres_url():
    db = env.parse_database_url("postgres://panel:p%40ss%3Aword@db.example:5433/vpanel?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "panel",
        "p@ss:word",
        "db.example",
        "5433",
        "vpanel",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_it_parses_a_postgres_url_with_a_socket_directory():
    db = env.parse_database_url("postgresql://panel@%2Frun%2FPostgreSQL/vpanel")
    assert db["HOST"] == "/run/PostgreSQL"
    assert db["PORT"] == ""
    assert db["PASSWORD"] == ""


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:///var/panel.sqlite3", "var/panel.sqlite3"),  # relative to the current directory
        ("sqlite:////srv/panel/db.sqlite3", "/srv/panel/db.sqlite3"),
        ("sqlite:////srv/my%20panel/db.sqlite3", "/srv/my panel/db.sqlite3"),
    ],
)
def test_it_parses_sqlite_urls_as_dj_database_url_does(url, name):
    db = env.parse_database_url(url)
    assert db["ENGINE"] == "panel.sqlite"
    assert db["NAME"] == name
    # the same WAL and locking options as the default database under var/
    assert db["OPTIONS"] == env.sqlite_database("x")["OPTIONS"]


def test_the_settings_take_a_sqlite_url(tmp_path):
    path = tmp_path / "panel.sqlite3"
    result = load_settings(DATABASE_URL=f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "panel.sqlite"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://panel@db.example:5432/",  # no database name
        "postgres://panel@db.example:5432/a/b",  # a path, not a name
        "postgres://panel@db.example:99999/vpanel",  # port out of range
        "sqlite://",  # in memory: the web server and the worker would not share it
        "sqlite://:memory:",
        "sqlite:///:memory:",
        "sqlite://db.example/panel.sqlite3",  # a host
        "sqlite:///var/?timeout=5",  # a directory, and options
        "sqlite:///var/panel.sqlite3?timeout=5",
        "sqlite:///",
    ],
)
def test_it_rejects_bad_database_urls(url):
    with pytest.raises(ImproperlyConfigured):
        env.parse_database_url(url)


@pytest.mark.parametrize("value", ["", "a,,b", "a,"])
def test_it_rejects_empty_allowed_hosts(value):
    with pytest.raises(ImproperlyConfigured):
        env.env_list({"DJANGO_ALLOWED_HOSTS": value}, "DJANGO_ALLOWED_HOSTS", ["localhost"])


def test_it_creates_the_secret_key_once_and_keeps_it_private(tmp_path):
    path = tmp_path / "var" / "secret_key"
    first = env.load_or_create_secret_key(path)
    assert len(first) >= env.MIN_SECRET_KEY_LENGTH
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert env.load_or_create_secret_key(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary files left


def test_it_prefers_the_secret_key_from_the_environment(tmp_path):
    key = "k" * 50
    assert env.secret_key({"DJANGO_SECRET_KEY": key}, tmp_path / "secret_key") == key
    assert not (tmp_path / "secret_key").exists()


def email_settings(**overrides: str) -> subprocess.CompletedProcess[str]:
    """The mail settings (notifications' outbox, password resets) of a fresh interpreter."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    environ.update(DJANGO_SETTINGS_MODULE="panel.settings", **overrides)
    code = (
        "from django.conf import settings as s; print(s.EMAIL_BACKEND.rsplit('.', 2)[1], s.EMAIL_HOST, s.EMAIL_PORT,"
        " s.EMAIL_HOST_USER or '-', s.EMAIL_HOST_PASSWORD or '-', s.EMAIL_USE_TLS, s.EMAIL_USE_SSL,"
        " s.DEFAULT_FROM_EMAIL, s.PANEL_MAIL_ATTEMPTS)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=60)


def test_mail_goes_to_the_console_unless_an_smtp_host_is_set():
    result = email_settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["console", "localhost", "25", "-", "-", "False", "False", "panel@localhost", "5"]

    result = email_settings(
        DJANGO_EMAIL_HOST="smtp.example.test", DJANGO_EMAIL_PORT="587", DJANGO_EMAIL_HOST_USER="panel",
        DJANGO_EMAIL_HOST_PASSWORD="secret", DJANGO_EMAIL_USE_TLS="1", DJANGO_DEFAULT_FROM_EMAIL="panel@example.test",
        PANEL_MAIL_ATTEMPTS="3",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "smtp", "smtp.example.test", "587", "panel", "secret", "True", "False", "panel@example.test", "3"
    ]


@pytest.mark.parametrize(("overrides", "named"), [
    ({"DJANGO_EMAIL_USE_TLS": "yes"}, "DJANGO_EMAIL_USE_TLS"),
    ({"DJANGO_EMAIL_USE_TLS": "1", "DJANGO_EMAIL_USE_SSL": "1"}, "DJANGO_EMAIL_USE_SSL"),
    ({"DJANGO_EMAIL_PORT": "0"}, "DJANGO_EMAIL_PORT"),
    ({"PANEL_MAIL_ATTEMPTS": "0"}, "PANEL_MAIL_ATTEMPTS"),
])
def test_it_rejects_bad_mail_settings(overrides, named):
    result = email_settings(DJANGO_EMAIL_HOST="smtp.example.test", **overrides)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr
