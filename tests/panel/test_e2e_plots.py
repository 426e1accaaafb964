"""The usage plots in a real browser (Debian's chromium, Playwright): the server page in each
window and the operator's node totals, under the pages' Content-Security-Policy. Each plot's
canvas is drawn (not blank), its limit is a series of its own, and a stopped period reaches
uPlot as nulls (a gap), not zeros. A screenshot of each is kept under
var/test-artifacts/screenshots/ (git-ignored), as test_e2e_a11y.py keeps the pages'."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db.models import Q

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "test-artifacts" / "screenshots"
PLOTS = ["cpu", "memory", "disk", "pids", "net"]

# Per figure, as uPlot has it: the series' labels, how many values are null in the first data
# series, and how many of the canvas' pixels are painted.
READ_PLOTS = """() => [...document.querySelectorAll('figure[data-plot]')].map(figure => {
  const u = figure.uplot, canvas = figure.querySelector('canvas');
  let painted = 0;
  if (canvas) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  }
  return {
    key: figure.dataset.plot, labels: u ? u.series.slice(1).map(s => s.label) : [],
    nulls: u ? u.data[1].filter(v => v === null).length : -1, points: u ? u.data[0].length : 0,
    limit: u ? u.data[u.data.length - 1].find(v => v !== null) : null,
    painted, width: canvas ? canvas.width : 0, summary: figure.querySelector('[data-summary]').textContent,
  };
})"""

CSP: list[str] = []


# When the server was stopped, as (seconds ago it stopped, seconds ago it started again): one
# stop inside the last hour, for the raw window, and a longer one for the rolled-up windows.
STOPS = [(40 * 60, 20 * 60), (5 * 3600, 2 * 3600)]


def history(node, server_ids: list, now: int) -> None:
    """A year of history for SERVER_IDS (None: the node's total) from the usage storage's own
    generator (vservers.usage.synthetic), then the STOPS taken out as a stopped server leaves
    them: no raw samples in those buckets, empty 5-minute slots (n = 0) in its day rows."""
    from vservers.models import UsageFiveMin, UsageRaw
    from vservers.usage import archive, synthetic

    synthetic.fill(node.pk, server_ids, now)
    buckets = [bucket for ago, back in STOPS
               for bucket in range(archive.bucket_of(now - ago), archive.bucket_of(now - back), archive.BUCKET)]
    ids = [pk for pk in server_ids if pk is not None]
    series = UsageRaw.objects.filter(node=node).filter(Q(server_id__in=ids) | Q(server__isnull=True))
    series.filter(start__in=buckets).delete()
    rows = UsageFiveMin.objects.filter(node=node, start__in={archive.day_of(b) for b in buckets}).filter(
        Q(server_id__in=ids) | Q(server__isnull=True))
    for row in rows:
        data = bytearray(row.data)
        for bucket in buckets:
            if archive.day_of(bucket) == row.start:
                archive.set_slot(data, (bucket - row.start) // archive.BUCKET, {"n": 0.0, "n_rates": 0.0})
        row.data = bytes(data)
        row.save(update_fields=["data"])


@pytest.fixture
def plotted(offline_world):
    from vservers.models import State, VirtualServer

    w = offline_world
    server = VirtualServer.objects.create(
        tenant=w.globex, name="globex-web", hostname="web.globex.test", plan=w.small, template=w.busybox,
        node=w.node, state=State.RUNNING,
    )
    history(w.node, [server.pk, None], int(time.time()))
    return w, server


def _sign_in(browser, base: str, username: str, password: str, scheme: str = "light"):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("console", lambda m: CSP.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("main form button[type=submit]")
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url
    return context, page


def _shown(page, window: str) -> list[dict]:
    page.wait_for_selector(f"section[data-usage-shown='{window}']:not([aria-busy])")
    return page.evaluate(READ_PLOTS)


def _check(plots: list[dict], limits: dict, where: str) -> None:
    assert [p["key"] for p in plots] == PLOTS, where
    for plot in plots:
        what = f"{where} {plot['key']}: {plot}"
        # Drawn: more than the axes and grid alone would paint (a few percent of the canvas).
        assert plot["width"] >= 200 and plot["painted"] > 2000, what
        assert plot["points"] > 0 and plot["nulls"] > 0, what  # the stopped period is a gap
        if plot["key"] in limits:
            assert plot["labels"][-1] in ("Plan limit", "Capacity"), what
            assert plot["limit"] == pytest.approx(limits[plot["key"]]), what
        else:
            assert plot["labels"][-1] not in ("Plan limit", "Capacity"), what
        assert "latest" in plot["summary"], what


def test_the_server_page_plots_each_window_and_the_operator_sees_node_totals(plotted, live_server, browser):
    w, server = plotted
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    CSP.clear()
    plan = server.plan
    limits = {"cpu": float(plan.cpus), "memory": plan.memory_mb << 20, "disk": plan.disk_mb << 20, "pids": plan.pids}

    # 1. bob opens his server's page: the 24 h window first, as its button says
    context, page = _sign_in(browser, live_server.url, "bob", "bob password 1")
    page.goto(f"{live_server.url}/servers/{server.uuid}/")
    _check(_shown(page, "24h"), limits, "24h")
    assert page.get_attribute("button[data-window='24h']", "aria-pressed") == "true"
    page.locator("#usage").screenshot(path=SCREENSHOTS / "plots-server-24h.png")

    # 2. every other window, the 7 d one chosen with the keyboard
    for window in ("1h", "7d", "30d"):
        button = page.locator(f"button[data-window='{window}']")
        if window == "7d":
            button.focus()
            page.keyboard.press("Enter")
        else:
            button.click()
        _check(_shown(page, window), limits, window)
        pressed = page.eval_on_selector_all("button[data-window][aria-pressed=true]",
                                            "buttons => buttons.map(b => b.dataset.window)")
        assert pressed == [window]
        page.locator("#usage").screenshot(path=SCREENSHOTS / f"plots-server-{window}.png")
    context.close()

    # 3. the dark scheme
    context, page = _sign_in(browser, live_server.url, "bob", "bob password 1", scheme="dark")
    page.goto(f"{live_server.url}/servers/{server.uuid}/")
    _check(_shown(page, "24h"), limits, "24h dark")
    page.locator("#usage").screenshot(path=SCREENSHOTS / "plots-server-24h-dark.png")
    context.close()

    # 4. the operator: the nodes page links to the node's totals
    context, page = _sign_in(browser, live_server.url, "operator", "operator pw 1")
    page.goto(f"{live_server.url}/operator/nodes/")
    page.get_by_role("link", name="local: usage over time").click()
    node = w.node
    _check(_shown(page, "24h"), {"cpu": node.cpus, "memory": node.memory_mb << 20, "disk": node.disk_mb << 20},
           "node 24h")
    page.locator("#usage").screenshot(path=SCREENSHOTS / "plots-node-24h.png")
    page.goto(f"{live_server.url}/operator/servers/{server.uuid}/")
    _check(_shown(page, "24h"), limits, "operator's server page")
    context.close()
    assert CSP == []
