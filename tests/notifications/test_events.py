"""Each event writes exactly the expected outbox rows, in the transaction of the event: the
recipients, the subject, a body that says what happened (the reason, the address). A
rolled-back event writes none; opted-out users get none; names from tenants cannot break a
mail header."""

from __future__ import annotations

import email
from email import policy

import pytest
from django.core.mail import BadHeaderError, EmailMessage
from django.db import transaction

from notifications import notify
from notifications.models import Event, MailStatus, OptOut, OutboxMail
from notifications.sender import send_due
from vservers import actions
from vservers.models import State, VirtualServer


def rows(event: str | None = None) -> list[tuple[str, str]]:
    """(recipient address, event) of every row, in order."""
    mails = OutboxMail.objects.order_by("pk")
    if event is not None:
        mails = mails.filter(event=event)
    return [(m.to, m.event) for m in mails]


def requested(w, name="web", tenant=None, user=None):
    return actions.request_server(tenant or w.acme, user or w.alice, name=name, hostname=f"{name}.example.test",
                                  plan=w.small, template=w.busybox)


@pytest.fixture
def w(offline_world, django_user_model):
    """offline_world with a second operator, a read-only member of acme, an inactive operator
    and an operator without an address: the last three must get nothing."""
    from accounts.models import Membership

    w = offline_world
    w.operator2 = django_user_model.objects.create_user("operator2", "ops2@example.test", is_staff=True)
    django_user_model.objects.create_user("gone", "gone@example.test", is_staff=True, is_active=False)
    django_user_model.objects.create_user("noaddress", "", is_staff=True)
    w.carol = django_user_model.objects.create_user("carol", "carol@acme.test")
    Membership.objects.create(user=w.carol, tenant=w.acme, role=Membership.READONLY)
    w.alice2 = django_user_model.objects.create_user("alice2", "alice2@acme.test")
    Membership.objects.create(user=w.alice2, tenant=w.acme, role=Membership.ADMIN)
    return w


def test_a_new_request_mails_every_active_operator_with_an_address(w):
    server = requested(w)

    assert rows() == [("ops@example.test", Event.REQUEST), ("ops2@example.test", Event.REQUEST)]
    mail = OutboxMail.objects.first()
    assert mail.server == server and mail.status == MailStatus.PENDING
    assert mail.subject == "New server request: Acme, web"
    assert "Acme asks for a new server web (web.example.test)" in mail.body
    assert "Plan: small. Template: busybox." in mail.body
    assert "Asked by alice." in mail.body


def test_a_plan_change_waiting_mails_the_operators_and_withdrawing_it_mails_nobody(w):
    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.example.test", plan=w.small,
                                          template=w.busybox, state=State.RUNNING, node=w.node)

    assert actions.request_plan_change(server, w.medium, w.alice) is True
    assert rows() == [("ops@example.test", Event.PLAN_CHANGE), ("ops2@example.test", Event.PLAN_CHANGE)]
    body = OutboxMail.objects.first().body
    assert "from plan small to plan medium" in body

    assert actions.request_plan_change(server, w.small, w.alice) is False
    assert len(rows()) == 2


def test_approval_mails_the_tenants_admins_only_with_the_address(w):
    server = requested(w)
    OutboxMail.objects.all().delete()

    actions.approve(server, w.operator)

    assert rows() == [("alice@acme.test", Event.APPROVED), ("alice2@acme.test", Event.APPROVED)]
    mail = OutboxMail.objects.first()
    assert mail.subject == "Your server web is approved"
    assert "Its address: 198.19.128.2." in mail.body
    assert "bob" not in mail.body


def test_rejection_mails_the_tenants_admins_with_the_reason(w):
    server = requested(w)
    OutboxMail.objects.all().delete()

    actions.reject(server, "Please order a larger plan for a shop.")

    assert rows() == [("alice@acme.test", Event.REJECTED), ("alice2@acme.test", Event.REJECTED)]
    mail = OutboxMail.objects.first()
    assert mail.subject == "Your server request web was rejected"
    assert "Please order a larger plan for a shop." in mail.body


def test_another_tenants_event_mails_nobody_of_acme(w):
    server = requested(w, name="mail", tenant=w.globex, user=w.bob)
    OutboxMail.objects.all().delete()

    actions.approve(server, w.operator)

    assert rows() == [("bob@globex.test", Event.APPROVED)]


def test_a_refused_or_rolled_back_event_writes_nothing(w):
    server = requested(w)
    OutboxMail.objects.all().delete()
    w.pool.delete()  # no address to give: the approval is refused as a whole

    with pytest.raises(actions.ActionRefused):
        actions.approve(server, w.operator)
    assert rows() == []

    with pytest.raises(RuntimeError), transaction.atomic():
        actions.reject(server, "no")
        assert len(rows()) == 2  # written, inside the transaction...
        raise RuntimeError("the request fails after the rejection")
    assert rows() == []  # ... and gone with it
    server.refresh_from_db()
    assert server.state == State.REQUESTED


def test_a_user_who_opted_out_of_a_kind_gets_no_row_of_it_and_still_the_others(w):
    OptOut.objects.create(user=w.operator2, event=Event.REQUEST)
    OptOut.objects.create(user=w.alice, event=Event.APPROVED)

    server = requested(w)
    actions.approve(server, w.operator)

    assert rows() == [
        ("ops@example.test", Event.REQUEST),
        ("alice2@acme.test", Event.APPROVED),
    ]
    server.move([State.APPROVED], State.RUNNING)
    actions.request_plan_change(server, w.medium, w.alice)
    assert rows(Event.PLAN_CHANGE) == [
        ("ops@example.test", Event.PLAN_CHANGE), ("ops2@example.test", Event.PLAN_CHANGE),
    ]


def test_a_server_that_keeps_stopping_is_reported_once_in_a_quiet_period(w):
    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.example.test", plan=w.small,
                                          template=w.busybox, state=State.STOPPED, node=w.node)

    assert notify(Event.STOPPED, server) == 2
    assert notify(Event.STOPPED, server) == 0
    assert len(rows(Event.STOPPED)) == 2


# -- header injection ----------------------------------------------------------------------------

EVIL = "web\r\nBcc: victim@evil.test\r\nX-Injected: 1"


def test_a_name_with_cr_lf_cannot_add_a_header(w, mailoutbox):
    # Positive control: a header written by concatenation, as a naive sender would, does get
    # the tenant's Bcc header.
    naive = email.message_from_string(f"To: alice@acme.test\r\nSubject: Your server {EVIL}\r\n\r\nbody",
                                      policy=policy.default)
    assert naive["Bcc"] == "victim@evil.test"
    # Django's own backstop refuses such a subject outright.
    with pytest.raises(BadHeaderError):
        EmailMessage(f"Your server {EVIL}", "body", "panel@localhost", ["alice@acme.test"]).message()

    # The panel: the name is written on one line, and the mail goes to the admins only.
    server = VirtualServer.objects.create(tenant=w.acme, name=EVIL, hostname="web.example.test\r\nX-Host: 1",
                                          plan=w.small, template=w.busybox, state=State.REQUESTED)
    actions.reject(server, "no\r\nBcc: victim@evil.test")
    mail = OutboxMail.objects.first()
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert "\r" not in mail.body

    assert send_due()["sent"] == 2
    assert sorted(m.recipients()[0] for m in mailoutbox) == ["alice2@acme.test", "alice@acme.test"]
    for sent in mailoutbox:
        assert sent.recipients() == sent.to and sent.bcc == []
        parsed = email.message_from_bytes(sent.message().as_bytes(), policy=policy.default)
        assert parsed["Bcc"] is None and parsed["X-Injected"] is None and parsed["X-Host"] is None
        assert parsed["Subject"] == "Your server request web Bcc: victim@evil.test X-Injected: 1 was rejected"
        assert parsed.get_content_type() == "text/plain"
