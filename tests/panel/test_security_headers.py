"""Headers on every page (panel.middleware): a Content-Security-Policy that allows no inline
script, and "Cache-Control: no-store" on what a signed-in user sees, except the server list's
rows, which keep "private, no-cache" and their ETag for the poll."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

LIST = "/servers/"


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


def test_a_live_page_is_not_kept_and_only_its_poll_gets_a_304(client, offline_world):
    """panel.js keeps the ETag itself (vservers/views/live.py): no browser or proxy keeps a
    tenant's page, and only the script's poll may be answered "not modified"."""
    client.force_login(offline_world.alice)
    first = client.get(LIST)
    assert first.status_code == 200 and first["ETag"]
    assert first["Cache-Control"] in ("private, no-store", "no-store, private")
    assert client.get(LIST, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200
    again = client.get(LIST, HTTP_X_LIVE="1", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b""
    assert "no-store" in again["Cache-Control"]


def test_no_template_has_inline_script_or_event_handler_attributes():
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\shx-on|javascript:", re.IGNORECASE)
    found = [
        f"{path}: {match.group(0)}"
        for directory in settings.TEMPLATES[0]["DIRS"]
        for path in Path(directory).rglob("*.html")
        for match in inline.finditer(path.read_text())
    ]
    assert not found


@pytest.mark.slow
def test_the_rq_dashboards_bulk_actions_work_under_the_policy(live_server, offline_world, rq_redis,
                                                             django_user_model, browser):
    """django-rq's job lists carry one inline script, which the policy blocks (a line in the
    browser's console). It is dead code: it calls a jQuery plugin that Django's admin replaced
    in 4.1 (allowed to run, it throws "$(...).actions is not a function"), and the admin's
    actions.js now wires the checkboxes by itself. So the policy stays as it is, and this test
    shows the bulk actions working in Chromium under it."""
    from vservers.queues import get_queue

    queue = get_queue("default")
    for operation_id in (1, 2):  # queued, never run: a worker does not run in this test
        queue.enqueue("vservers.jobs.run_operation", operation_id)
    django_user_model.objects.create_superuser("root-admin", "root@example.test", "a-long-test-password")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "root-admin")
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{live_server.url}/admin/django_rq/dashboard/queues/0/")
    assert page.locator("tr input.action-select").count() == 2
    page.click("#action-toggle")  # "select all": actions.js ticks and marks every row
    page.wait_for_function("() => document.querySelectorAll('tr.selected').length === 2")
    assert page.locator("tr input.action-select:checked").count() == 2
    assert all("inline script" in message for message in blocked), blocked
    context.close()
