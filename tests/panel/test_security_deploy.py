"""The production settings (panel.production, what gunicorn and manage.py use): `manage.py
check --deploy` has nothing to say about them, and the one way to plain HTTP is explicit and
for this host only."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# How an operator runs it: the panel's host name, a TLS proxy on this host that sets
# X-Forwarded-Proto and X-Forwarded-For.
PRODUCTION = {"DJANGO_ALLOWED_HOSTS": "panel.example.test", "PANEL_TRUSTED_PROXIES": "127.0.0.1"}


def run(args: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    """ARGS in a fresh interpreter, with the production settings and only VARIABLES set."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PANEL_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    # A key of our own: the tests must not create var/secret_key, nor depend on it.
    environ.update({"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), **variables})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def check_deploy(**variables: str) -> subprocess.CompletedProcess[str]:
    return run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **variables)


def setting(name: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """NAME's value as panel.production makes it from VARIABLES. Reading a setting imports the
    settings module, which refuses bad variables itself; the apps are not needed for it (a
    django.setup() took about a second of each of these processes)."""
    code = f"from django.conf import settings; print(repr(settings.{name}))"
    return run(["-c", code], DJANGO_SETTINGS_MODULE="panel.production", **variables)


def test_manage_py_uses_the_production_settings():
    result = run(["-c", "import runpy, sys; sys.argv = ['manage.py', 'diffsettings']; "
                  "runpy.run_path('manage.py', run_name='__main__')"], **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "SECURE_SSL_REDIRECT = True" in result.stdout
    assert "SESSION_COOKIE_SECURE = True" in result.stdout


def test_check_deploy_finds_nothing_in_production():
    result = check_deploy(**PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout


def test_check_deploy_asks_for_the_proxy_address_behind_a_proxy():
    result = check_deploy(DJANGO_ALLOWED_HOSTS="panel.example.test")
    assert result.returncode != 0
    assert "accounts.W001" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SESSION_COOKIE_SECURE", "True"),
        ("CSRF_COOKIE_SECURE", "True"),
        ("SESSION_COOKIE_HTTPONLY", "True"),
        ("CSRF_COOKIE_HTTPONLY", "True"),
        ("SESSION_COOKIE_NAME", "'__Host-vpanel_session'"),
        ("SECURE_SSL_REDIRECT", "True"),
        ("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)),
        ("SECURE_CONTENT_TYPE_NOSNIFF", "True"),
        ("X_FRAME_OPTIONS", "'DENY'"),
        ("DEBUG", "False"),
    ],
)
def test_production_settings(name, expected):
    result = setting(name, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_operators_need_two_factor_sign_in_in_production_unless_told_otherwise():
    def required(**variables: str) -> str:
        return setting("PANEL_REQUIRE_2FA_OPERATORS", **variables).stdout.strip()

    assert required(**PRODUCTION) == "True"
    assert required(**PRODUCTION, PANEL_REQUIRE_2FA_OPERATORS="0") == "False"
    # `make run` before a host name is set: this host only, the demo's operator signs in as before.
    assert required(DJANGO_LOCAL_HTTP="1") == "False"
    assert required(DJANGO_LOCAL_HTTP="1", PANEL_REQUIRE_2FA_OPERATORS="1") == "True"
    refused = setting("PANEL_REQUIRE_2FA_OPERATORS", **PRODUCTION, PANEL_REQUIRE_2FA_OPERATORS="yes")
    assert refused.returncode != 0 and "PANEL_REQUIRE_2FA_OPERATORS" in refused.stderr


def test_local_http_is_for_this_host_only():
    result = setting("SESSION_COOKIE_SECURE", DJANGO_LOCAL_HTTP="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert setting("SECURE_SSL_REDIRECT", DJANGO_LOCAL_HTTP="1").stdout.strip() == "False"

    refused = setting("DEBUG", DJANGO_LOCAL_HTTP="1", DJANGO_ALLOWED_HOSTS="localhost,panel.example.test")
    assert refused.returncode != 0
    assert "DJANGO_LOCAL_HTTP" in refused.stderr and "panel.example.test" in refused.stderr


@pytest.mark.parametrize(
    "variables",
    [
        {"DJANGO_DEBUG": "1"},  # debug pages over the network
        {"DJANGO_SECRET_KEY": "x" * 60},  # long but not random
        {"DJANGO_SECRET_KEY": "a-short-key-of-40-characters-0123456789"},
        {"DJANGO_HTTPS": "1"},  # the old switch: refused with what to do instead
        {"DJANGO_HSTS_SECONDS": "0"},
        {"PANEL_TRUSTED_PROXIES": "127.0.0.1,proxy.example.test"},
    ],
    ids=["debug", "repetitive-key", "short-key", "old-https-switch", "no-hsts", "proxy-by-name"],
)
def test_production_refuses_unsafe_settings(variables):
    result = setting("DEBUG", **{**PRODUCTION, **variables})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr


def test_healthz_is_not_redirected_but_pages_are(settings, client, db):
    """What panel.production sets, in this process: monitors ask gunicorn over plain HTTP."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    settings.REDIS_URL = "unix:///nonexistent/redis.sock?db=0"
    assert client.get("/healthz").status_code == 200
    response = client.get("/accounts/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")
