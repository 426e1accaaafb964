"""The Alerts section of the server pages: who sees and who changes it, its validation, its
audit entries, and the mail settings page that turns alert mail off."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from accounts.models import AuditEntry, Membership
from alerts.evaluate import evaluate
from alerts.models import AlertRule, Kind
from notifications.models import Event, OptOut, OutboxMail
from vservers.models import Operation, OperationKind, OperationStatus, State, VirtualServer

VALID = {
    "disk_enabled": "on", "disk_threshold": "80",
    "memory_enabled": "on", "memory_threshold": "90", "memory_minutes": "10",
    "unreachable_minutes": "5",
}


@pytest.fixture
def w(offline_world, django_user_model):
    w = offline_world
    w.carol = django_user_model.objects.create_user("carol", "carol@acme.test")
    Membership.objects.create(user=w.carol, tenant=w.acme, role=Membership.READONLY)
    w.web = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.example.test", plan=w.small,
                                         template=w.busybox, node=w.node, state=State.RUNNING)
    Operation.objects.create(server=w.web, kind=OperationKind.PROVISION, status=OperationStatus.SUCCEEDED)
    w.url = reverse("server_alerts", args=[w.web.uuid])
    w.op_url = reverse("op_server_alerts", args=[w.web.uuid])
    return w


def saved(server) -> dict[str, tuple]:
    return {r.kind: (r.enabled, r.threshold, r.minutes) for r in AlertRule.objects.filter(server=server)}


def test_the_server_page_offers_the_defaults_with_nothing_on(client, w):
    client.force_login(w.alice)
    page = client.get(reverse("server_detail", args=[w.web.uuid])).content.decode()
    assert '<section class="card section" id="alerts">' in page
    assert f'action="{w.url}"' in page
    for name, value in (("disk_threshold", 90), ("memory_threshold", 95), ("memory_minutes", 5),
                        ("unreachable_minutes", 5)):
        assert f'name="{name}" value="{value}"' in page
    assert "checked" not in page.split('id="alerts"')[1].split("</section>")[0]
    assert "Save alerts" in page
    assert "does not test whether the server answers on the network" in page
    assert not AlertRule.objects.exists()


def test_an_admin_saves_the_rules_and_the_change_is_audited(client, w):
    client.force_login(w.alice)
    response = client.post(w.url, VALID)
    assert response.status_code == 302
    assert response["Location"] == reverse("server_detail", args=[w.web.uuid]) + "#alerts"
    assert saved(w.web) == {Kind.DISK: (True, 80, None), Kind.MEMORY: (True, 90, 10),
                            Kind.UNREACHABLE: (False, None, 5)}
    entry = AuditEntry.objects.get(action="server.alerts")
    assert entry.actor == w.alice and entry.tenant == w.acme and entry.object_id == str(w.web.uuid)
    assert entry.details["changes"]["disk"] == {"enabled": [False, True], "threshold": [None, 80]}

    # The page shows what is saved; saving it unchanged records nothing more.
    page = client.get(reverse("server_detail", args=[w.web.uuid])).content.decode()
    assert 'name="disk_threshold" value="80"' in page and 'name="memory_minutes" value="10"' in page
    client.post(w.url, VALID)
    assert AuditEntry.objects.filter(action="server.alerts").count() == 1


@pytest.mark.parametrize(("field", "value", "error"), [
    ("disk_threshold", "0", "Enter a whole percentage from 1 to 100."),
    ("disk_threshold", "101", "Enter a whole percentage from 1 to 100."),
    ("memory_threshold", "ninety", "Enter a whole percentage from 1 to 100."),
    ("memory_threshold", "", "Enter a whole percentage from 1 to 100."),
    ("memory_minutes", "0", "Enter whole minutes from 1 to 1440 (a day)."),
    ("unreachable_minutes", "1441", "Enter whole minutes from 1 to 1440 (a day)."),
    ("unreachable_minutes", "2.5", "Enter whole minutes from 1 to 1440 (a day)."),
])
def test_bad_numbers_get_a_clear_error_and_save_nothing(client, w, field, value, error):
    client.force_login(w.alice)
    response = client.post(w.url, {**VALID, field: value})
    assert response.status_code == 200
    page = response.content.decode()
    assert "The alerts are not saved" in page
    assert f'<div class="field-error" id="id_{field}_error"><p>{error}</p></div>' in page
    assert not AlertRule.objects.exists()
    assert not AuditEntry.objects.filter(action="server.alerts").exists()


def test_a_read_only_member_sees_the_rules_and_may_not_change_them(client, w):
    client.force_login(w.carol)
    page = client.get(reverse("server_detail", args=[w.web.uuid])).content.decode()
    section = page.split('id="alerts"')[1].split("</section>")[0]
    assert 'name="disk_threshold" value="90"' in section and "disabled" in section
    assert "Save alerts" not in section
    assert client.get(w.url).status_code == 200
    assert client.post(w.url, VALID).status_code == 403
    assert not AlertRule.objects.exists()


def test_another_tenant_finds_no_such_server(client, w):
    client.force_login(w.bob)
    assert client.get(w.url).status_code == 404
    assert client.post(w.url, VALID).status_code == 404
    assert client.post(w.op_url, VALID).status_code == 403
    assert not AlertRule.objects.exists()


def test_an_operator_sees_and_edits_them_on_the_operator_page(client, w):
    client.force_login(w.operator)
    page = client.get(reverse("op_server_detail", args=[w.web.uuid])).content.decode()
    assert f'action="{w.op_url}"' in page and "Save alerts" in page
    response = client.post(w.op_url, {**VALID, "unreachable_enabled": "on"})
    assert response["Location"] == reverse("op_server_detail", args=[w.web.uuid]) + "#alerts"
    assert saved(w.web)[Kind.UNREACHABLE] == (True, None, 5)
    assert AuditEntry.objects.get(action="server.alerts").actor == w.operator


def test_the_mail_settings_page_turns_alert_mail_off(client, w):
    client.force_login(w.alice)
    page = client.get("/accounts/notifications/").content.decode()
    assert "a server crosses an alert threshold set on its page" in page
    # Everything on but alerts.
    others = {event: "on" for event in ("approved", "rejected", "ready", "stopped")}
    assert client.post("/accounts/notifications/", others).status_code == 302
    assert OptOut.objects.filter(user=w.alice, event=Event.ALERT).exists()

    client.post(w.url, VALID)
    VirtualServer.objects.filter(pk=w.web.pk).update(disk_used_bytes=1000 * 1024 * 1024,
                                                     sampled_at=datetime(2026, 12, 6, tzinfo=UTC))
    evaluate(w.node, datetime(2026, 12, 6, tzinfo=UTC))
    assert not OutboxMail.objects.filter(event=Event.ALERT).exists()

    # Back on: the next episode mails her.
    client.post("/accounts/notifications/", {**others, "alert": "on"})
    w.web.alert_rules.filter(kind=Kind.DISK).update(enabled=False)
    evaluate(w.node, datetime(2026, 12, 6, 0, 1, tzinfo=UTC))
    w.web.alert_rules.filter(kind=Kind.DISK).update(enabled=True)
    evaluate(w.node, datetime(2026, 12, 6, 0, 2, tzinfo=UTC))
    assert list(OutboxMail.objects.filter(event=Event.ALERT).values_list("to", flat=True)) == ["alice@acme.test"]
