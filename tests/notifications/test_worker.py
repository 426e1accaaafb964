"""With the real worker and kernel: a provisioned busybox server writes its "ready" mail with
its address, and a server whose init is killed is found by the node's reconcile, which writes
the "stopped unexpectedly" mail and sends the outbox in the same run."""

from __future__ import annotations

import pytest

from notifications.models import Event, MailStatus, OutboxMail
from tests.panel.test_reconcile import kill_init
from vservers.models import State
from vservers.reconcile import reconcile_node

pytestmark = pytest.mark.django_db(transaction=True)


def test_ready_then_stopped_unexpectedly_from_a_real_reconcile(world, provision, mailoutbox):
    server = provision("web", autostart=False)
    address = server.ip_list()[0]

    ready = OutboxMail.objects.get(event=Event.READY)
    assert (ready.to, ready.server_id, ready.status) == ("alice@acme.example", server.pk, MailStatus.PENDING)
    assert ready.subject == "Your server web is ready"
    assert f"Its address: {address}." in ready.body
    assert list(OutboxMail.objects.order_by("pk").values_list("event", flat=True)) == [Event.APPROVED, Event.READY]

    kill_init(world.engine, server)
    summary = reconcile_node(world.node.pk)

    server.refresh_from_db()
    assert server.state == State.STOPPED
    stopped = OutboxMail.objects.get(event=Event.STOPPED)
    assert (stopped.to, stopped.server_id) == ("alice@acme.example", server.pk)
    assert stopped.subject == "Your server web stopped unexpectedly"
    assert "its init process exited" in stopped.body
    assert "start it in the panel" in stopped.body
    # The same run sent the outbox: approved, ready and stopped, once each, to alice only.
    assert summary.endswith("mail: 3 sent, 0 retry, 0 failed, 0 released")
    assert [(m.to, m.subject) for m in mailoutbox] == [
        (["alice@acme.example"], "Your server web is approved"),
        (["alice@acme.example"], "Your server web is ready"),
        (["alice@acme.example"], "Your server web stopped unexpectedly"),
    ]
    assert set(OutboxMail.objects.values_list("status", flat=True)) == {MailStatus.SENT}

    # The next run finds it stopped already: no second mail.
    reconcile_node(world.node.pk)
    assert OutboxMail.objects.filter(event=Event.STOPPED).count() == 1
    assert len(mailoutbox) == 3
