"""Every page of both personas in a real browser (Debian's chromium, Playwright), at a laptop's
width (1366 px) and a phone's (390 px), and at the laptop's in the dark colour scheme too (each
page is loaded once, then resized and switched to the dark scheme in place, as a window is
resized or the system's scheme changes; the page's scripts follow both):
axe-core finds no serious or critical violation, no page scrolls sideways, and no table
overflows its box (at 1366 px every table fits; on a phone a table that does not fit scrolls
alone, in a focusable region with a name). Screenshots of the main pages are kept under
var/test-artifacts/screenshots/ (git-ignored).

The pages come from the URL resolver (tests/panel/routes.py), so a page added tomorrow is
checked without anyone touching this file. Database rows only (offline_world, with servers in
several states) behind a live server: no engine, no worker.

axe-core is vendored from npm into tests/vendor/ (package.json's "vendor" script), never into
static/: the pages neither serve nor load it. It is evaluated into each page through the
DevTools protocol (the context's init script), which the page's Content-Security-Policy does not govern.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tests.panel.routes import (
    ADMIN_PREFIX,
    API_PREFIX,
    OPERATOR_PREFIX,
    PUBLIC,
    SIGNED_IN,
    TENANT_PREFIX,
    all_routes,
    candidates,
    security_world,
)

pytestmark = pytest.mark.slow

AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe.min.js"
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "test-artifacts" / "screenshots"
WIDTHS = {"laptop": (1366, 768), "phone": (390, 844)}
# Each width in the light colour scheme, and the laptop's in the dark one too (panel.css swaps
# its colours for prefers-color-scheme: dark; axe measures the contrast of both).
PASSES = [("laptop", "light"), ("phone", "light"), ("laptop", "dark")]
# What the dark scheme can change: panel.css's dark blocks set colours only (its custom
# properties and the danger button's), so the markup and layout are the light laptop pass's,
# and only axe's rules that read colours run again; the page's own measure (its field
# borders' contrast among it) runs whole.
COLOUR_RULES = {"dark": ["color-contrast", "link-in-text-block"]}
BLOCKING = {"serious", "critical"}
# Tables whose row buttons must stay on a phone's screen, not only in a sideways scroll.
FIT_ON_A_PHONE = {"services"}
# The main pages, screenshotted at both widths (name -> route name).
MAIN_PAGES = {
    "tenant": ["server_list", "server_detail", "server_request"],
    "operator": ["op_dashboard", "op_approvals", "op_servers", "op_server_detail", "op_tenant_detail", "op_audit",
                 "op_node_usage"],
}

# What a page is made of, measured in the page: sideways scroll of the document, and every
# table against the box it sits in.
MEASURE = """() => {
  const doc = document.documentElement;
  const tables = [...document.querySelectorAll('table')].map((table, index) => {
    const box = table.parentElement;
    const style = getComputedStyle(box);
    const label = box.getAttribute('aria-label') || '';
    return {
      index, box: box.className, section: box.closest('section')?.id || '',
      tableWidth: Math.round(table.getBoundingClientRect().width),
      boxWidth: box.clientWidth, overflows: box.scrollWidth > box.clientWidth + 1,
      scrolls: ['auto', 'scroll'].includes(style.overflowX),
      focusable: box.tabIndex >= 0, region: box.getAttribute('role') === 'region' && label.trim() !== '',
    };
  });
  const described = [...document.querySelectorAll('[aria-describedby]')].flatMap(el =>
    el.getAttribute('aria-describedby').split(/\\s+/).filter(id => id && !document.getElementById(id))
      .map(id => (el.id || el.name || el.tagName) + ' -> #' + id));
  // Borders of text fields and selects against what is behind them (WCAG 1.4.11: 3:1).
  const rgb = text => (text.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(c => c / 255)
    .map(c => c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const behind = el => {
    for (let node = el.parentElement; node; node = node.parentElement) {
      const color = rgb(getComputedStyle(node).backgroundColor);
      if (color.length === 3 || color[3] > 0) return color;
    }
    return [255, 255, 255];
  };
  const fields = 'input:not([type=hidden]):not([type=checkbox]):not([type=radio]), select, textarea';
  const borders = [...document.querySelectorAll(fields)]
    .filter(el => el.offsetParent !== null && !el.matches(':focus')).map(el => {
      const [a, b] = [lum(rgb(getComputedStyle(el).borderTopColor)), lum(behind(el))].sort((x, y) => y - x);
      return {field: el.name || el.id, ratio: Math.round(100 * (a + 0.05) / (b + 0.05)) / 100};
    }).filter(border => border.ratio < 3);
  return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, tables, described, borders,
          skip: document.querySelector('a, button, input, select, textarea, [tabindex]')?.getAttribute('href')};
}"""

# Two animation frames: what a resize or a change of colour scheme makes the page's scripts do
# (panel.js marks tables that now scroll, plots.js resizes and redraws) is done after them.
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"

AXE_RUN = """async (rules) => {
  const options = {resultTypes: ['violations']};
  if (rules) options.runOnly = {type: 'rule', values: rules};
  const result = await axe.run(document, options);
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ') + ' ' + (n.failureSummary || '').split('\\n')[1])}));
}"""


@pytest.fixture
def world(offline_world, django_user_model):
    """security_world (globex, bob's tenant: running with a plan change waiting, awaiting
    approval, stopped), and more states besides: a server in error after a failed provision, one
    provisioning, a rejected one; operations of every status; a usage sample; audit entries with
    long details, as the operator's pages show them."""
    from accounts.models import AuditEntry
    from vservers.models import Operation, OperationKind, OperationStatus, Service, State, VirtualServer
    from vservers.models.guest import UnlistedEntries

    w = security_world(offline_world, django_user_model)
    now = timezone.now()
    VirtualServer.objects.filter(pk=w.running.pk).update(
        cpu_seconds=12.5, memory_bytes=40 << 20, pids=9, disk_used_bytes=300 << 20, sampled_at=now
    )
    broken = VirtualServer.objects.create(
        tenant=w.globex, name="globex-broken", hostname="broken.globex.test", plan=w.small, template=w.busybox,
        node=w.node, state=State.ERROR, state_reason="provisioning failed: the template could not be mounted",
    )
    Operation.objects.create(
        server=broken, kind=OperationKind.PROVISION, requested_by=w.operator, status=OperationStatus.FAILED,
        started=now - timedelta(seconds=30), finished=now - timedelta(seconds=28),
        error="mount: /var/lib/vservers/templates/busybox: no such file or directory", output="step 1\nstep 2",
        detail="Traceback (most recent call last):\n  File \"jobs.py\", line 1\nOSError: mount",
    )
    VirtualServer.objects.create(
        tenant=w.globex, name="globex-new2", hostname="new2.globex.test", plan=w.medium, template=w.busybox,
        node=w.node, state=State.PROVISIONING,
    )
    VirtualServer.objects.create(
        tenant=w.globex, name="globex-nope", hostname="nope.globex.test", plan=w.medium, template=w.busybox,
        state=State.REJECTED, state_reason="not in this region, sorry",
    )
    VirtualServer.objects.create(
        tenant=w.acme, name="acme-shop-with-a-rather-long-name", hostname="shop.with.a.long.hostname.acme.test",
        plan=w.medium, template=w.busybox, state=State.REQUESTED,
    )
    for status in (OperationStatus.QUEUED, OperationStatus.RUNNING, OperationStatus.SUCCEEDED):
        Operation.objects.create(server=w.running, kind=OperationKind.RESTART, requested_by=w.bob, status=status,
                                 params={"n": status})
    # Services as a phone shows them: a running one (Restart and Stop), a stopped one (Start).
    Service.objects.filter(pk=w.service.pk).update(state="running", seconds=3 * 3600 + 125)
    Service.objects.create(server=w.running, name="backup-nightly-with-a-long-name", state="stopped")
    UnlistedEntries.objects.create(server=w.running, kind="services", refused=2, beyond=0, samples=["bad name!"])
    for index in range(3):
        AuditEntry.objects.create(
            actor=w.operator, tenant=w.globex, action="tenant.update", object_type="Tenant",
            object_id=str(w.globex.uuid), object_repr="Globex", remote_addr="2001:db8::1234:5678:9abc:def0",
            details={"changes": {"max_servers": str(10 + index), "max_memory_mb": "8192",
                                 "name": "Globex Corporation International Holdings " * 2}},
        )
    return w


def _routes_of(persona: str) -> list:
    """The page routes of PERSONA: the public pages for a visitor; the tenant area and the
    pages of any signed-in user for the tenant admin; the operator area and those pages for
    the operator. Django's admin, the JSON API and its docs page (drf-spectacular's Swagger UI,
    whose markup and colours are Swagger's own) are not the panel's pages."""
    found = []
    for route in all_routes():
        if route.route.startswith((ADMIN_PREFIX, API_PREFIX)):
            continue
        if persona == "visitor":
            keep = route.name in PUBLIC
        elif persona == "tenant":
            keep = route.route.startswith(TENANT_PREFIX) or route.name in SIGNED_IN
        else:
            keep = route.route.startswith(OPERATOR_PREFIX) or route.name in SIGNED_IN
        if keep:
            found.append(route)
    return found


def _sign_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, f"{username} could not sign in"


def _pages(user, persona: str, w) -> dict[str, str]:
    """Every page PERSONA (signed in as USER, or a visitor) can GET, as {url: route name}: each
    route with every candidate value for its placeholders; answers that are not a whole HTML
    page (POST-only views: 405; fragments; redirects elsewhere) are left out. Asked through
    Django's test client, in this process: most of the ~800 candidates are not pages, and
    asking them through the browser took 40 s of the test."""
    from django.test import Client

    client = Client()
    if user is not None:
        client.force_login(user)
    pages: dict[str, str] = {}
    for route in _routes_of(persona):
        for url in route.urls(candidates(route, w)):
            if url in pages:
                continue
            response = client.get(url)
            whole = response.content.lstrip()[:15].lower() == b"<!doctype html>"
            if response.status_code == 200 and response.get("Content-Type", "").startswith("text/html") and whole:
                pages[url] = route.name
    return pages


def _check(page, url: str, width: str, scheme: str = "light") -> list[str]:
    """What is wrong with the page at URL (loaded) at this width and colour scheme."""
    faults = []
    measured = page.evaluate(MEASURE)
    if measured["scrollWidth"] > measured["clientWidth"]:
        faults.append(f"scrolls sideways: {measured['scrollWidth']} px in {measured['clientWidth']} px")
    for table in measured["tables"]:
        if not table["overflows"]:
            continue
        where = f"table {table['index']} ({table['tableWidth']} px in a {table['boxWidth']} px box)"
        if width == "laptop":
            faults.append(f"{where} does not fit at 1366 px")
        elif table["section"] in FIT_ON_A_PHONE:
            faults.append(f"{where} in #{table['section']} does not fit on a phone")
        elif not (table["scrolls"] and table["focusable"] and table["region"]):
            faults.append(f"{where} overflows without a focusable, named scroll region: {table}")
    if measured["borders"]:
        faults.append(f"form field borders under 3:1: {measured['borders']}")
    if measured["described"]:
        faults.append(f"aria-describedby points nowhere: {measured['described']}")
    if measured["skip"] != "#main":
        faults.append(f"the first focusable element is not the skip link: {measured['skip']}")
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    for violation in page.evaluate(AXE_RUN, COLOUR_RULES.get(scheme)):
        if violation["impact"] in BLOCKING:
            faults.append(f"axe {violation['impact']} {violation['id']} ({violation['help']}): {violation['nodes']}")
    return faults


def test_every_page_of_both_personas_passes_axe_and_fits_at_both_widths(world, live_server, browser, capsys,
                                                                       django_user_model):
    assert AXE.exists(), "tests/vendor/axe.min.js is missing: npm install && npm run vendor"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = live_server.url
    personas = {"visitor": None, "tenant": ("bob", "bob password 1"), "operator": ("operator", "operator pw 1")}
    faults: list[str] = []
    checked: dict[str, list[str]] = {}
    for persona, credentials in personas.items():
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        page.set_default_timeout(20_000)
        context.add_init_script(path=AXE)  # in every page before its own scripts, as page.evaluate did after
        if credentials:
            _sign_in(page, base, *credentials)
        user = django_user_model.objects.get(username=credentials[0]) if credentials else None
        pages = _pages(user, persona, world)
        checked[persona] = sorted(pages)
        shot = set()
        for url, name in pages.items():
            for index, (width, scheme) in enumerate(PASSES):
                x, y = WIDTHS[width]
                page.set_viewport_size({"width": x, "height": y})
                page.emulate_media(color_scheme=scheme)
                if index == 0:
                    page.goto(base + url)
                else:  # the page's own resize and scheme handlers run in the next frames
                    page.evaluate(NEXT_FRAMES)
                faults += [f"{persona} {width} {scheme} {url}: {fault}" for fault in _check(page, url, width, scheme)]
                if name in MAIN_PAGES.get(persona, []) and (name, width, scheme) not in shot:
                    shot.add((name, width, scheme))
                    suffix = "" if scheme == "light" else f"-{scheme}"
                    page.screenshot(path=SCREENSHOTS / f"{persona}-{name}-{x}{suffix}.png", full_page=True)
        context.close()
    with capsys.disabled():
        print(f"\nscreenshots: {SCREENSHOTS}")
        for persona, urls in checked.items():
            print(f"{persona}: {len(urls)} pages checked at {len(WIDTHS)} widths (and dark at 1366 px)")
    assert len(checked["tenant"]) >= 5 and len(checked["operator"]) >= 10, checked
    assert not faults, "\n".join(faults)


def test_error_pages_and_favicon(world, live_server, browser):
    """A styled 404 with a way back, and /favicon.ico answers (a redirect to the SVG)."""
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{live_server.url}/no-such-page/")
    assert response.status == 404
    assert page.locator("link[rel=stylesheet]").count() >= 1
    assert page.get_by_role("link", name=re.compile("home|servers|back", re.I)).count() >= 1
    assert _check(page, "/no-such-page/", "laptop") == []
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg")
    linked = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(live_server.url + linked).status == 200
    context.close()


def test_an_error_takes_focus_in_view_with_a_red_border(world, live_server, browser):
    """A bad add-account submit: the page comes back at the Accounts section (the form's
    anchor), the invalid field has the focus and is on the screen, with a red border."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.set_default_timeout(20_000)
    _sign_in(page, live_server.url, "bob", "bob password 1")
    server_page = f"{live_server.url}/servers/{world.running.uuid}/"
    page.goto(server_page)
    form = page.locator("form[action*='/accounts/add/']")
    form.locator("input[name=user]").fill("Not A Name!")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert page.url == server_page + "accounts/add/#accounts"
    focused = page.evaluate("""() => {
      const el = document.activeElement, box = el.getBoundingClientRect();
      return {name: el.name, invalid: el.getAttribute('aria-invalid'), border: getComputedStyle(el).borderTopColor,
              inView: box.top >= 0 && box.bottom <= window.innerHeight};
    }""")
    danger = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--danger').trim()")
    assert (focused["name"], focused["invalid"], focused["inView"]) == ("user", "true", True), focused
    assert danger == "#b42318" and focused["border"] == "rgb(180, 35, 24)"
    assert _check(page, page.url, "phone") == []
    context.close()
