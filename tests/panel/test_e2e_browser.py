"""End to end in a real browser (Debian's chromium driven by Playwright), with a real Redis, a
real worker and the real engine: a tenant requests a server, an operator approves it, the
worker provisions and starts it, and the tenant manages it."""

from __future__ import annotations

import re
import time

import pytest

PASSWORD = "a-long-test-password"

pytestmark = pytest.mark.slow


# What the browser's console said about the Content-Security-Policy (panel.middleware): the
# pages must work under it, so nothing of theirs may be blocked.
CSP_VIOLATIONS: list[str] = []


def _login(browser, live_server, username):
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: CSP_VIOLATIONS.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, f"{username} could not log in"
    return page


def _drain_until(drain, predicate, timeout=60.0):
    """Run the worker until PREDICATE() holds (it polls the database).

    Playwright's sync API keeps its asyncio loop marked as running in this thread while our
    code runs between its calls; pyroute2 (in the engine) refuses to start its own loop then.
    The worker never runs beside a browser in real life, so the mark is lifted meanwhile.
    """
    import asyncio

    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "the worker did not get there"
            drain()
            time.sleep(0.1)
    finally:
        asyncio.events._set_running_loop(loop)


def test_a_tenant_gets_a_server_and_manages_it(world, drain, http, live_server, browser):
    # The browser comes last so it is closed first: the engine's teardown needs no asyncio
    # loop of Playwright's around.
    from vservers.models import GuestAccount, OperationStatus, Service, State, VirtualServer

    for user in (world.alice, world.operator):
        user.set_password(PASSWORD)
        user.save()

    # 1. alice asks for a server
    CSP_VIOLATIONS.clear()
    alice = _login(browser, live_server, "alice")
    alice.goto(f"{live_server.url}/servers/new/")
    alice.fill("#id_name", "shop")
    alice.fill("#id_hostname", "shop.acme.example")
    alice.select_option("#id_plan", value=str(world.small.pk))
    alice.select_option("#id_template", value=str(world.busybox.pk))
    alice.click("main form button[type=submit]")
    alice.wait_for_url(lambda url: not url.endswith("/servers/new/"))
    server = VirtualServer.objects.get(tenant=world.acme, name="shop")
    assert server.state == State.REQUESTED
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    assert "approval" in alice.content().lower()

    # 2. the operator approves it
    operator = _login(browser, live_server, "operator")
    operator.goto(f"{live_server.url}/operator/approvals/")
    operator.locator(f"form[action$='/operator/servers/{server.uuid}/approve/'] button").click()
    operator.wait_for_load_state()
    server.refresh_from_db()
    assert server.state == State.APPROVED

    # 3. the worker provisions and starts it; alice sees it running
    _drain_until(drain, lambda: VirtualServer.objects.get(pk=server.pk).state == State.RUNNING)
    address = server.ip_list()[0]
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    alice.wait_for_selector("text=Running")
    assert address in alice.content()
    http.wait(address)
    assert http.get(address)[0] == 200

    # 3b. her server list is a live page (vservers/views/live.py): it asks for itself every
    #     3 s with the ETag it came with; while nothing changes the answer is a bodiless 304,
    #     and a change shows at the next poll, without a reload.
    polls = []  # (the request's If-None-Match, the answer's status)

    def on_response(response):
        if response.request.all_headers().get("x-live") == "1":
            polls.append((response.request.all_headers().get("if-none-match"), response.status))

    alice.on("response", on_response)
    alice.goto(f"{live_server.url}/servers/")
    alice.evaluate("window.notReloaded = true")
    # Polled from here: wait_for_function evaluates its predicate with eval, which the page's
    # CSP refuses (as it should).
    deadline = time.monotonic() + 20
    while len(polls) < 2:
        assert time.monotonic() < deadline, "the list did not poll twice"
        alice.wait_for_timeout(100)
    (asked, status), (asked_again, status_again) = polls[:2]
    assert asked and (status, status_again) == (304, 304) and asked_again == asked
    assert alice.locator("#server-rows tr").count() == 1
    assert alice.locator("#server-rows").get_by_text("shop.acme.example").count() == 1
    VirtualServer.objects.create(tenant=world.acme, name="blog", hostname="blog.acme.example", plan=world.small,
                                 template=world.busybox)
    alice.wait_for_selector("#server-rows >> text=blog.acme.example", timeout=20_000)
    assert (polls[-1][0], polls[-1][1]) == (asked, 200)  # asked with the old ETag, got the new page
    assert alice.locator("#server-rows tr").count() == 2
    assert alice.evaluate("window.notReloaded") is True
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")

    # 4. alice adds an account and sees it
    add_account = alice.locator("form[action*='/accounts/add/']")
    add_account.locator("input[name=user]").fill("carol")
    add_account.locator("input[name=password]").fill("carols-secret-pw")
    add_account.locator("button[type=submit]").click()
    _drain_until(drain, lambda: GuestAccount.objects.filter(server=server, name="carol").exists())
    assert server.operations.filter(kind="account_add", status=OperationStatus.SUCCEEDED).exists()
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    alice.wait_for_selector("text=carol")

    # 5. alice stops the web service; the page says so and the address stops answering
    _drain_until(drain, lambda: Service.objects.filter(server=server, name="httpd", state="running").exists())
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    alice.locator("form[action$='/services/httpd/stop/'] button").click()
    _drain_until(drain, lambda: Service.objects.filter(server=server, name="httpd", state="stopped").exists())
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    assert alice.get_by_role("row", name=re.compile(r"^httpd stopped")).count() == 1
    with pytest.raises(ConnectionRefusedError):
        http.get(address)
    assert CSP_VIOLATIONS == []
