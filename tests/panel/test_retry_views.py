"""The Retry buttons and what they post to: the tenant's server page (operations card), the
operator's server and operations pages. Who sees the button and who may post is the one rule of
vservers.actions.retryable/retry_operation; here: the pages show it exactly then, and the posts
answer 404 for another tenant's operation, 403 for a read-only member and for an operator's kind."""

from __future__ import annotations

import pytest

from accounts.models import Membership
from vservers.models import Operation, OperationKind, OperationStatus, State, VirtualServer


@pytest.fixture
def w(offline_world, django_user_model):
    w = offline_world
    w.ro = django_user_model.objects.create_user("ro")
    Membership.objects.create(user=w.ro, tenant=w.acme, role=Membership.READONLY)

    def server(tenant, name, state=State.STOPPED):
        return VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=state)

    w.web = server(w.acme, "web")
    w.start = Operation.objects.create(server=w.web, kind=OperationKind.START, status=OperationStatus.FAILED,
                                       error="The server could not be started; the operator has been told.")
    w.db = server(w.globex, "db")
    w.theirs = Operation.objects.create(server=w.db, kind=OperationKind.START, status=OperationStatus.FAILED)
    return w


def retry_url(server, operation) -> str:
    return f"/servers/{server.uuid}/operations/{operation.uuid}/retry/"


def test_the_tenant_retries_a_failed_start_from_the_server_page(client, w):
    client.force_login(w.alice)
    page = client.get(f"/servers/{w.web.uuid}/").content.decode()
    assert f'action="{retry_url(w.web, w.start)}"' in page
    response = client.post(retry_url(w.web, w.start), follow=True)
    assert response.redirect_chain == [(f"/servers/{w.web.uuid}/", 302)]
    assert "web: start is queued again." in response.content.decode()
    retried = Operation.objects.get(retry_of=w.start)
    assert (retried.kind, retried.requested_by, w.queued) == (OperationKind.START, w.alice, [retried])
    # The retry is the latest now: no button on the failed one any more.
    assert f'action="{retry_url(w.web, w.start)}"' not in client.get(f"/servers/{w.web.uuid}/").content.decode()


def test_another_tenants_operation_is_not_found_even_through_ones_own_server(client, w):
    client.force_login(w.alice)
    assert client.post(retry_url(w.db, w.theirs)).status_code == 404
    assert client.post(retry_url(w.web, w.theirs)).status_code == 404
    assert client.post(f"/operator/operations/{w.theirs.uuid}/retry/").status_code == 403
    assert not Operation.objects.filter(retry_of__isnull=False).exists()


def test_read_only_members_see_no_retry_and_get_403(client, w):
    client.force_login(w.ro)
    assert "/retry/" not in client.get(f"/servers/{w.web.uuid}/").content.decode()
    assert client.post(retry_url(w.web, w.start)).status_code == 403
    assert w.queued == []


def test_a_tenant_gets_403_for_a_failed_delete_and_sees_no_button(client, w):
    w.web.state = State.ERROR
    w.web.save()
    delete = Operation.objects.create(server=w.web, kind=OperationKind.DELETE, status=OperationStatus.FAILED)
    client.force_login(w.alice)
    assert "/retry/" not in client.get(f"/servers/{w.web.uuid}/").content.decode()
    assert client.post(retry_url(w.web, delete)).status_code == 403
    assert w.queued == []


def test_a_refused_retry_is_a_message(client, w):
    Operation.objects.create(server=w.web, kind=OperationKind.START, status=OperationStatus.SUCCEEDED)
    client.force_login(w.alice)
    response = client.post(retry_url(w.web, w.start), follow=True)
    assert "web: only the latest operation of a server can be retried." in response.content.decode()
    assert w.queued == []


def test_the_operator_retries_from_the_operations_page_and_comes_back_to_it(client, w):
    client.force_login(w.operator)
    listing = "/operator/operations/?status=failed"
    page = client.get(listing).content.decode()
    button = f'action="/operator/operations/{w.start.uuid}/retry/"'
    assert button in page and f'action="/operator/operations/{w.theirs.uuid}/retry/"' in page
    response = client.post(f"/operator/operations/{w.start.uuid}/retry/", {"next": listing})
    assert (response.status_code, response["Location"]) == (302, listing)
    assert Operation.objects.get(retry_of=w.start).requested_by == w.operator
    # The server's page has the same button, for its failed latest operation (db's here).
    detail = client.get(f"/operator/servers/{w.db.uuid}/").content.decode()
    assert f'action="/operator/operations/{w.theirs.uuid}/retry/"' in detail
