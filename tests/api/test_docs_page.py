"""The API's docs page (/api/docs/, Swagger UI from drf-spectacular-sidecar) in a real browser
under the panel's Content-Security-Policy as it is (no inline script): it renders the schema,
the browser reports no CSP violation, and "Try it out" works with the session, a read (GET
/api/v1/me/) and a write (POST .../stop/, which needs the CSRF token the page's script
carries)."""

from __future__ import annotations

import os

import pytest

from vservers.models import State, VirtualServer

PASSWORD = "a-long-test-password"
# API_DOCS_SCREENSHOT=/tmp/docs.png keeps a picture of the page to look at.
SCREENSHOT = os.environ.get("API_DOCS_SCREENSHOT")

pytestmark = pytest.mark.slow


def test_the_docs_page_works_under_the_csp(offline_world, live_server, browser):  # noqa: F811
    w = offline_world
    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                          template=w.busybox, node=w.node, state=State.RUNNING)
    w.alice.set_password(PASSWORD)
    w.alice.save()
    violations: list[str] = []
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/api/docs/")
    assert "/accounts/login/" in page.url  # a stranger signs in first
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda url: "/api/docs/" in url)
    # Served with the panel's own policy, not one of its own.
    response = page.request.get(f"{live_server.url}/api/docs/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    # The schema rendered: every operation is listed.
    page.wait_for_selector("#operations-me-me_retrieve")
    assert page.locator(".opblock").count() >= 50

    # Try it out: a read with the session.
    me = page.locator("#operations-me-me_retrieve")
    me.locator(".opblock-summary").click()
    me.locator(".try-out__btn").click()
    me.locator(".execute").click()
    me.locator(".live-responses-table tbody .response-col_status").first.wait_for()
    assert me.locator(".live-responses-table tbody .response-col_status").first.inner_text().strip() == "200"
    assert '"username": "alice"' in me.locator(".live-responses-table .microlight").first.inner_text()

    # ... and a write: the page's script sends the session's CSRF token.
    stop = page.locator("#operations-servers-servers_stop_create")
    stop.locator(".opblock-summary").click()
    stop.locator(".try-out__btn").click()
    stop.locator("input[placeholder='uuid']").fill(str(server.uuid))
    stop.locator(".execute").click()
    stop.locator(".live-responses-table tbody .response-col_status").first.wait_for()
    assert stop.locator(".live-responses-table tbody .response-col_status").first.inner_text().strip() == "202"
    assert [op.kind for op in w.queued] == ["stop"]

    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=False)
    context.close()
    assert violations == []
