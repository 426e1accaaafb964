"""Headers on every page (panel.middleware): a Content-Security-Policy that allows no inline
script, and "Cache-Control: no-store" on what a signed-in user sees, except the server list's
rows, which keep "private, no-cache" and their ETag for the poll."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

LIST, ROWS = "/servers/", "/servers/rows/"


def policy(response) -> dict[str, list[str]]:
    directives = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.parametrize("url", ["/accounts/login/", "/accounts/reset/", "/admin/login/", "/no-such-page/", LIST])
def test_every_page_has_a_policy_without_inline_script(client, offline_world, url):
    response = client.get(url)
    directives = policy(response)
    assert directives["script-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in directives["default-src"] and "'unsafe-eval'" not in str(directives)


def test_signed_in_pages_are_not_stored(client, offline_world):
    client.force_login(offline_world.alice)
    for url in (LIST, "/accounts/password/", "/servers/new/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"], url
        assert "Content-Security-Policy" in response


def test_anonymous_pages_are_left_alone(client, db):
    assert "no-store" not in client.get("/accounts/reset/").get("Cache-Control", "")


def test_the_rows_poll_keeps_its_etag_and_revalidation(client, offline_world):
    client.force_login(offline_world.alice)
    first = client.get(ROWS, HTTP_HX_REQUEST="true")
    assert first.status_code == 200
    assert first["Cache-Control"] in ("private, no-cache", "no-cache, private")
    again = client.get(ROWS, HTTP_HX_REQUEST="true", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304


def test_no_template_has_inline_script_or_event_handler_attributes():
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\shx-on|javascript:", re.IGNORECASE)
    found = [
        f"{path}: {match.group(0)}"
        for directory in settings.TEMPLATES[0]["DIRS"]
        for path in Path(directory).rglob("*.html")
        for match in inline.finditer(path.read_text())
    ]
    assert not found
