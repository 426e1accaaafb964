"""In Chromium: the operator narrows the server list to acme's running servers, ticks "all
matching the filter", chooses Stop, answers the one dialog that names the count, and lands on
the filtered list again with what was queued and what was refused. The operations are recorded
as queued (offline_world's `queued`); the worker's side of a stop is tested elsewhere."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
PASSWORD = "a-long-test-password"


def test_the_operator_stops_a_filtered_list_after_one_question(offline_world, live_server, browser):
    from vservers.models import Operation, OperationKind, State, VirtualServer

    w = offline_world
    w.operator.set_password(PASSWORD)
    w.operator.save()
    for name, state in (("web1", State.RUNNING), ("web2", State.RUNNING), ("web3", State.STOPPED)):
        VirtualServer.objects.create(tenant=w.acme, name=name, hostname=f"{name}.test", plan=w.small,
                                     template=w.busybox, node=w.node, state=state)
    VirtualServer.objects.create(tenant=w.globex, name="db", hostname="db.test", plan=w.small,
                                 template=w.busybox, node=w.node, state=State.RUNNING)
    violations: list[str] = []
    page = browser.new_context().new_page()
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("main form button[type=submit]")
    page.wait_for_load_state()

    listing = f"{live_server.url}/operator/servers/?tenant=acme&state=running"
    page.goto(listing)
    assert page.locator("input[name=server]").count() == 2
    page.check("#bulk-all")
    page.select_option("#bulk-action", "stop")
    questions: list[str] = []

    # First the operator thinks better of it: nothing is done.
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("#bulk button[type=submit]")
    assert questions == ["Stop 2 servers?"]
    assert page.url == listing and not Operation.objects.exists()

    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#bulk button[type=submit]")
    assert questions == ["Stop 2 servers?", "Stop 2 servers?"]
    # One question only: straight back to the filtered list, with the outcome.
    assert page.url == listing
    assert page.locator(".messages").inner_text().strip() == "Stop: 2 servers queued."
    stopped = Operation.objects.filter(kind=OperationKind.STOP).values_list("server__name", flat=True)
    assert sorted(stopped) == ["web1", "web2"]

    # Ticking one box asks about one; a refusal is listed with its reason.
    page.goto(f"{live_server.url}/operator/servers/?tenant=acme")
    page.check(f"input[name=server][value='{VirtualServer.objects.get(name='web3').uuid}']")
    page.select_option("#bulk-action", "stop")
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#bulk button[type=submit]")
    assert questions[-1] == "Stop 1 server?"
    assert "1 refused: acme/web3 (cannot stop while the server is stopped)." in page.locator(".messages").inner_text()
    assert violations == []
