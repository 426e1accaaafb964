"""The console end to end in Debian's chromium (Playwright): a real busybox server provisioned by
the real worker, the real console broker as root (`manage.py consolebroker`), and the web
process as production runs it (gunicorn with uvicorn's worker, as vpanel, tests/consoles/web.py),
all on one file database.

One journey, because each start of a browser and a server costs seconds: alice signs in, opens
the console from her server's page, types `hostname` and sees the server's own name; the
terminal follows the window (`stty size` in the guest changes with it); a paste reaches the
shell and Ctrl+Shift+C copies a selection; a second tab has a console of its own at the same
time; tickets replayed, of another user, or for another tenant's server are refused in the
browser's own WebSocket; stopping the server closes the console with its sentence, in the
terminal and in the aria-live status line. The page passes axe with the terminal open, and no
CSP report is raised. Screenshots go to var/test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from tests.panel.faults import wait_until

pytestmark = pytest.mark.slow

PASSWORD = "a-long-test-password"
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "test-artifacts" / "screenshots"
AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe.min.js"


@contextlib.contextmanager
def no_playwright_loop():
    """Playwright's sync API keeps its asyncio loop marked as running in this thread between
    its calls. The engine (pyroute2) refuses to start its own loop then, and Django's
    connections (an asgiref Local) are looked up per async context instead of per thread:
    a query would go to pytest-django's in-memory database, not to the file this test and its
    processes share (file_database), and a write there outlives the test (it broke the admin
    sign-in of a later browser test). So every query of this test runs with the mark lifted."""
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(loop)


def terminal_text(page) -> str:
    # xterm's DOM renderer: one element per row of the screen.
    return page.locator("#console-terminal .xterm-rows").inner_text()


def wait_for_text(page, pattern: str, what: str) -> str:
    return wait_until(lambda: re.search(pattern, terminal_text(page)) and terminal_text(page),
                      lambda: f"{what}; the terminal shows:\n{terminal_text(page)}", timeout=30)


def type_line(page, text: str) -> None:
    page.locator("#console-terminal .xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def open_console(page, url: str, account: str = "root") -> None:
    response = page.goto(url)
    assert response.status == 200 and page.locator("form[data-console]").count() == 1, (
        f"{url}: {response.status}\n{page.content()[:6000]}")
    page.select_option("#console-account", account)
    page.click("[data-console-open]")
    wait_until(lambda: "Connected" in page.locator("#console-status").inner_text(),
               lambda: f"the console to connect; status: {page.locator('#console-status').inner_text()!r}",
               timeout=30)
    wait_for_text(page, r"[#$] ?$|# ", "a shell prompt")
    assert page.locator("[data-console-close]").is_visible() and not page.locator("[data-console-open]").is_visible()


# What the browser's own WebSocket gets for a ticket: the page's JS, so the Origin, cookie and
# ticket are the browser's. Returns the {"closed": ...} sentence, or "attached" once output came.
TRY_TICKET = """async ([ticketUrl, socketPath, ticket]) => {
  if (!ticket) {
    const form = new FormData(document.querySelector('form[data-console]'));
    const answer = await fetch(ticketUrl, {method: 'POST', body: form, credentials: 'same-origin'});
    ticket = (await answer.json()).ticket;
  }
  return await new Promise(resolve => {
    const ws = new WebSocket('ws://' + location.host + socketPath);
    ws.binaryType = 'arraybuffer';
    let closed = null;
    ws.onopen = () => ws.send(JSON.stringify({ticket, cols: 80, rows: 24}));
    ws.onmessage = e => {
      if (typeof e.data === 'string') { closed = JSON.parse(e.data).closed; }
      else { ws.close(); resolve({result: 'attached', ticket}); }
    };
    ws.onerror = () => {};
    ws.onclose = e => resolve({result: closed || ('closed ' + e.code), ticket});
  });
}"""


def test_a_console_in_the_browser(fault_world, provision, drain, web, web_broker, browser):
    from consoles import consumers
    from consoles.models import ConsoleSession
    from vservers import actions
    from vservers.models import OperationStatus, State

    w = fault_world
    with no_playwright_loop():
        for user in (w.alice, w.bob):
            user.set_password(PASSWORD)
            user.save()
        # The test's own queries go to the database the web process and the broker share.
        assert connections["default"].settings_dict["NAME"] == w.database
        server = provision("web")
        theirs = provision("theirs", tenant=w.globex)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    csp: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{web.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url

    # From the server's page to its console.
    page.goto(f"{web.url}/servers/{server.uuid}/")
    page.get_by_role("link", name="Console").click()
    page.wait_for_url(f"**/servers/{server.uuid}/console/")
    console_url = page.url
    open_console(page, console_url)

    # 1. hostname: the server's own name, from inside it.
    type_line(page, "hostname")
    wait_for_text(page, rf"(?m)^{re.escape(server.hostname)}\s*$", "the server's hostname")
    page.screenshot(path=str(SCREENSHOTS / "console-hostname.png"))

    # 2. The terminal follows the window: stty size in the guest changes with it.
    def stty_size(marker: str) -> tuple[int, int]:
        type_line(page, f"echo {marker} $(stty size)")
        text = wait_for_text(page, rf"{marker} \d+ \d+", "stty size")
        rows, cols = re.findall(rf"{marker} (\d+) (\d+)", text)[-1]
        return int(rows), int(cols)

    big = stty_size("BIG")
    page.set_viewport_size({"width": 900, "height": 600})
    wait_until(lambda: page.locator("#console-terminal .xterm-rows > div").count() < big[0],
               "the terminal to shrink with the window", timeout=20)
    shown_rows = page.locator("#console-terminal .xterm-rows > div").count()
    small = wait_until(lambda: (size := stty_size("SMALL")) != big and size, "stty size to change", timeout=30)
    assert small[0] == shown_rows and small[0] < big[0] and small[1] < big[1], (big, small, shown_rows)
    page.screenshot(path=str(SCREENSHOTS / "console-resized.png"))

    # 3. Paste (the browser's paste event, which xterm reads) and copy (Ctrl+Shift+C).
    page.locator("#console-terminal .xterm-helper-textarea").focus()
    page.evaluate("""() => {
      const data = new DataTransfer();
      data.setData('text/plain', 'echo pasted-$((6*7))');
      document.querySelector('#console-terminal .xterm-helper-textarea')
        .dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
    }""")
    page.keyboard.press("Enter")
    wait_for_text(page, r"(?m)^pasted-42\s*$", "the pasted command's output")
    word = page.locator("#console-terminal .xterm-rows > div", has_text=re.compile(r"^pasted-42\s*$")).last
    box = word.bounding_box()  # the screen layer above the rows takes the mouse: click there
    page.mouse.dblclick(box["x"] + 5, box["y"] + box["height"] / 2)
    page.keyboard.press("Control+Shift+C")
    wait_until(lambda: "pasted" in page.evaluate("navigator.clipboard.readText()"), "the copied selection")

    # 4. A second tab: a console of its own, at the same time.
    second = context.new_page()
    second.set_default_timeout(20_000)
    open_console(second, console_url)
    type_line(second, "echo second-$((40+2))")
    wait_for_text(second, r"(?m)^second-42\s*$", "the second console's output")
    type_line(page, "echo first-$((40+1))")
    wait_for_text(page, r"(?m)^first-41\s*$", "the first console, still there")
    with no_playwright_loop():
        assert ConsoleSession.objects.filter(server=server, started__isnull=False, ended__isnull=True).count() == 2
    second.screenshot(path=str(SCREENSHOTS / "console-second-tab.png"))

    # 5. Refused in the browser's own WebSocket: a replayed ticket, another user's ticket,
    # another tenant's server (its console page is not found, its socket honours no ticket).
    path = f"/ws/servers/{server.uuid}/console/"
    ticket_url = f"/servers/{server.uuid}/console/ticket/"
    first = second.evaluate(TRY_TICKET, [ticket_url, path, None])
    assert first["result"] == "attached"
    assert second.evaluate(TRY_TICKET, [ticket_url, path, first["ticket"]])["result"] == consumers.BAD_TICKET
    with no_playwright_loop():
        bobs = _ticket_of(w.bob, theirs)
    assert second.evaluate(TRY_TICKET, [ticket_url, path, bobs])["result"] == consumers.BAD_TICKET
    assert second.evaluate(TRY_TICKET, [ticket_url, f"/ws/servers/{theirs.uuid}/console/", bobs])["result"] == (
        consumers.BAD_TICKET)
    assert second.goto(f"{web.url}/servers/{theirs.uuid}/console/").status == 404
    assert second.request.post(f"{web.url}/servers/{theirs.uuid}/console/ticket/",
                               headers={"X-CSRFToken": _csrf(context)}).status == 404
    second.close()

    # axe, with the terminal open (the page without it is in test_e2e_a11y).
    page.evaluate(AXE.read_text())
    found = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                          ".filter(v => ['serious', 'critical'].includes(v.impact)).map(v => v.id + ': ' + v.help)")
    assert found == []

    # 6. Stopping the server closes the console with its sentence, shown and announced.
    with no_playwright_loop():
        operation = actions.request_operation(server, "stop", w.operator)
        drain()
        operation.refresh_from_db()
        server.refresh_from_db()
    assert operation.status == OperationStatus.SUCCEEDED, operation.error
    assert server.state == State.STOPPED
    status = page.locator("#console-status")
    wait_until(lambda: status.inner_text() == "The server stopped.",
               lambda: f"the closing sentence; status: {status.inner_text()!r}", timeout=30)
    assert status.get_attribute("aria-live") == "polite"
    wait_for_text(page, r"The server stopped\.", "the closing sentence in the terminal")
    assert page.locator("[data-console-open]").is_visible() and not page.locator("[data-console-close]").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "console-closed.png"))
    with no_playwright_loop():
        ended = ConsoleSession.objects.filter(server=server, started__isnull=False)
        wait_until(lambda: not ended.filter(ended__isnull=True).exists(), "every session of the server to end")
    assert csp == []
    assert "Traceback" not in web.log_tail(1000)
    context.close()


def _ticket_of(user, server) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return json.loads(client.post(f"/servers/{server.uuid}/console/ticket/").content)["ticket"]


def _csrf(context) -> str:
    return next(c["value"] for c in context.cookies() if c["name"] == settings.CSRF_COOKIE_NAME)
