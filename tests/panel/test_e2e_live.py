"""Live pages in a real browser (Debian's chromium driven by Playwright), with a real worker
and the real engine: a page follows its server while the user keeps focus and place, and
hears what changed (vservers/views/live.py, static/js/panel.js)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.panel.test_e2e_browser import CSP_VIOLATIONS, PASSWORD, _drain_until, _login

pytestmark = pytest.mark.slow

# A poll every 3 s; a step waits for a few of them.
WAIT_MS = 30_000


def _outside_playwright(call, *args):
    """CALL with Playwright's asyncio loop unmarked (see test_e2e_browser._drain_until)."""
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        return call(*args)
    finally:
        asyncio.events._set_running_loop(loop)


def _count_updates(page):
    """From here on, window.liveUpdates counts the polls that brought a new page."""
    page.evaluate("window.liveUpdates = 0; document.addEventListener('live:updated', () => window.liveUpdates++)")
    page.evaluate("window.notReloaded = true")


def _wait_for_updates(page, count):
    # Polled from here: wait_for_function evaluates with eval, which the page's CSP refuses.
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.evaluate("window.liveUpdates") < count:
        assert time.monotonic() < deadline, f"fewer than {count} live updates"
        page.wait_for_timeout(100)


def test_a_server_page_follows_the_server_and_keeps_focus_and_place(world, provision, drain, live_server, browser):
    from django.utils import timezone

    from vservers.models import Service, State, VirtualServer

    world.alice.set_password(PASSWORD)
    world.alice.save()
    server = _outside_playwright(provision, "web")
    CSP_VIOLATIONS.clear()
    alice = _login(browser, live_server, "alice")
    alice.set_viewport_size({"width": 1366, "height": 500})  # short: the page scrolls
    alice.goto(f"{live_server.url}/servers/{server.uuid}/")
    assert alice.locator("#services").get_by_role("row", name="httpd running").count() == 1

    # 1. Focus on a button in the refreshed status card, the page scrolled: two refreshes
    #    with a change each (a usage sample) leave the same button focused, the page where it was.
    restart = alice.locator("#server-state form[action$='/action/restart/'] button")
    restart.focus()
    alice.evaluate("window.scrollTo(0, 120)")
    alice.evaluate("window.focusedBefore = document.activeElement")
    _count_updates(alice)
    for updates, mib in ((1, 21), (2, 22)):
        VirtualServer.objects.filter(pk=server.pk).update(memory_bytes=mib << 20, sampled_at=timezone.now())
        _wait_for_updates(alice, updates)
        assert re.search(rf"{mib}\.0\sMB", alice.locator("#server-state").inner_text())
        assert alice.evaluate("document.activeElement === window.focusedBefore")
        assert alice.evaluate("document.activeElement.textContent.trim()") == "Restart"
        assert alice.evaluate("window.scrollY") == 120

    # 2. She stops the server (her own click: a page load); the worker stops it, and without
    #    a reload the services say so, the usage shows no memory in use, and the live region
    #    says what happened.
    alice.locator("#server-state form[action$='/action/stop/'] button").click()
    alice.wait_for_load_state()
    assert alice.locator("#services").get_by_role("row", name="httpd running").count() == 1
    _count_updates(alice)
    _drain_until(drain, lambda: VirtualServer.objects.get(pk=server.pk).state == State.STOPPED)
    assert set(Service.objects.filter(server=server).values_list("state", flat=True)) == {"stopped"}
    alice.locator("#services").get_by_role("row", name="httpd stopped").wait_for(timeout=WAIT_MS)
    memory = alice.locator("#server-state .meter", has_text="Memory")
    assert re.match(r"0\sbytes", memory.locator(".meter-value").inner_text())
    assert alice.locator("#server-state .badge").inner_text() == "Stopped"
    alice.locator("#live-status", has_text="web is now stopped").wait_for(state="attached", timeout=WAIT_MS)
    assert alice.locator("#operations").get_by_text("Succeeded").count() >= 1
    assert alice.evaluate("window.notReloaded") is True
    assert CSP_VIOLATIONS == []


def test_an_operator_page_follows_an_operation_to_its_end(world, provision, drain, live_server, browser):
    from vservers.models import Operation, OperationKind, OperationStatus

    world.operator.set_password(PASSWORD)
    world.operator.save()
    server = _outside_playwright(provision, "web")
    CSP_VIOLATIONS.clear()
    operator = _login(browser, live_server, "operator")
    operator.goto(f"{live_server.url}/operator/servers/{server.uuid}/")
    operator.locator(f"form[action$='/operator/servers/{server.uuid}/action/restart/'] button").click()
    operator.wait_for_load_state()
    restart = Operation.objects.get(server=server, kind=OperationKind.RESTART)
    assert operator.locator(f"#op-{restart.pk}").inner_text() == "Queued"
    _count_updates(operator)

    _drain_until(drain, lambda: Operation.objects.get(pk=restart.pk).status == OperationStatus.SUCCEEDED)
    operator.locator(f"#op-{restart.pk}", has_text="Succeeded").wait_for(timeout=WAIT_MS)
    operator.locator("#live-status", has_text="Restart of web: succeeded").wait_for(state="attached",
                                                                                   timeout=WAIT_MS)
    assert operator.evaluate("window.notReloaded") is True

    # The operations list follows too, from its first poll on.
    operator.goto(f"{live_server.url}/operator/operations/")
    _count_updates(operator)
    stop = Operation.objects.create(server=server, kind=OperationKind.STOP, requested_by=world.operator)
    operator.locator(f"#op-{stop.pk}", has_text="Queued").wait_for(timeout=WAIT_MS)
    assert operator.evaluate("window.notReloaded") is True
    assert CSP_VIOLATIONS == []
