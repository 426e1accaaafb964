"""Snapshots in a real browser, with a real worker and engine: the tenant takes one from the
server's page, changes the server, puts the snapshot back after ticking the confirmation,
and deletes it; under the Content-Security-Policy, with nothing of the page blocked."""

from __future__ import annotations

import pytest

from tests.panel.test_e2e_browser import CSP_VIOLATIONS, PASSWORD, _drain_until, _login

pytestmark = pytest.mark.slow


def test_a_tenant_takes_restores_and_deletes_a_snapshot(world, provision, drain, live_server, browser):
    from vservers.models import Operation, OperationKind, OperationStatus, Snapshot

    world.small.snapshots_max = 1
    world.small.save()
    server = provision("shop")
    engine, name = world.engine, server.engine_name
    world.alice.set_password(PASSWORD)
    world.alice.save()
    engine.run(name, ["sh", "-c", "echo one > /root/mark"])

    def done(kind: str) -> bool:
        op = Operation.objects.filter(server=server, kind=kind).order_by("-pk").first()
        return op is not None and op.status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)

    CSP_VIOLATIONS.clear()
    alice = _login(browser, live_server, "alice")
    url = f"{live_server.url}/servers/{server.uuid}/"
    alice.goto(url)
    card = alice.locator("#snapshots")
    assert "No snapshots." in card.inner_text()
    alice.fill("#id_snapshot_label", "before the change")
    card.get_by_role("button", name="Take snapshot").click()
    alice.wait_for_load_state()
    _drain_until(drain, lambda: done(OperationKind.SNAPSHOT_CREATE))
    snapshot = Snapshot.objects.get(server=server)
    assert snapshot.label == "before the change"

    engine.run(name, ["sh", "-c", "echo changed > /root/mark"])
    alice.goto(url)
    assert "before the change" in card.inner_text()
    # The plan keeps one: no form to take another.
    assert card.get_by_role("button", name="Take snapshot").count() == 0
    card.locator("summary", has_text=f"Restore {snapshot.name}").click()
    card.get_by_role("button", name=f"Restore {snapshot.name}").click()  # not ticked: refused
    alice.wait_for_load_state()
    assert "tick the box to confirm" in alice.content()
    assert not Operation.objects.filter(server=server, kind=OperationKind.SNAPSHOT_RESTORE).exists()
    card.locator("summary", has_text=f"Restore {snapshot.name}").click()
    card.get_by_label("Yes, put this snapshot back").check()
    card.get_by_role("button", name=f"Restore {snapshot.name}").click()
    alice.wait_for_load_state()
    _drain_until(drain, lambda: done(OperationKind.SNAPSHOT_RESTORE))
    assert Operation.objects.filter(kind=OperationKind.SNAPSHOT_RESTORE).get().status == OperationStatus.SUCCEEDED
    assert engine.run(name, ["cat", "/root/mark"]).stdout == "one\n"

    alice.goto(url)
    alice.once("dialog", lambda dialog: dialog.accept())  # data-confirm asks first
    card.get_by_role("button", name="Delete").click()
    alice.wait_for_load_state()
    _drain_until(drain, lambda: done(OperationKind.SNAPSHOT_DELETE))
    assert not Snapshot.objects.filter(server=server).exists()
    alice.context.close()
    assert CSP_VIOLATIONS == []
