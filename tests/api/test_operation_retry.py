"""POST /api/v1/operations/{uuid}/retry/: the pages' retry (vservers.actions.retry_operation)
with the pages' authorization (vservers.access.get_operation), answered the API's way."""

from __future__ import annotations

import pytest

from accounts.models import Membership
from vservers.models import Operation, OperationKind, OperationStatus, State, VirtualServer


@pytest.fixture
def w(offline_world, api, django_user_model):
    w = offline_world
    w.web = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                         template=w.busybox, node=w.node, state=State.ERROR)
    w.db = VirtualServer.objects.create(tenant=w.globex, name="db", hostname="db.globex.test", plan=w.small,
                                        template=w.busybox, node=w.node, state=State.ERROR)
    w.ro = django_user_model.objects.create_user("ro")
    Membership.objects.create(user=w.ro, tenant=w.acme, role=Membership.READONLY)
    w.api = api
    return w


def failed(server, kind) -> Operation:
    return Operation.objects.create(server=server, kind=kind, status=OperationStatus.FAILED)


def url(operation) -> str:
    return f"/api/v1/operations/{operation.uuid}/retry/"


def code(response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def test_a_tenant_admin_retries_a_failed_provisioning(w):
    first = failed(w.web, OperationKind.PROVISION)
    response = w.api(w.alice).post(url(first))
    assert response.status_code == 202
    body = response.json()
    assert (body["kind"], body["status"], body["retry_of"], body["requested_by"]) == (
        "provision", "queued", str(first.uuid), "alice")
    assert response["Location"] == f"/api/v1/operations/{body['uuid']}/"
    assert w.queued == [Operation.objects.get(uuid=body["uuid"])]
    # The original says it retried nothing; the retry is the latest now, so a second ask is 409.
    assert w.api(w.alice).get(f"/api/v1/operations/{first.uuid}/").json()["retry_of"] is None
    assert code(w.api(w.alice).post(url(first))) == (409, "refused")


def test_who_may_retry(w):
    mine, theirs = failed(w.web, OperationKind.PROVISION), failed(w.db, OperationKind.PROVISION)
    assert code(w.api(w.alice).post(url(theirs))) == (404, "not_found")
    assert code(w.api(w.ro).post(url(mine))) == (403, "permission_denied")
    assert code(w.api(w.alice, scope="read").post(url(mine))) == (403, "permission_denied")
    assert w.api(w.alice).post("/api/v1/operations/00000000-0000-0000-0000-000000000000/retry/").status_code == 404
    assert w.queued == []
    assert w.api(w.operator).post(url(theirs)).status_code == 202


def test_a_delete_is_an_operators_retry(w):
    delete = failed(w.web, OperationKind.DELETE)
    assert code(w.api(w.alice).post(url(delete))) == (403, "permission_denied")
    assert w.queued == []
    assert w.api(w.operator).post(url(delete)).json()["kind"] == "delete"


def test_a_kind_the_state_does_not_allow_is_409(w):
    w.web.state = State.STOPPED
    w.web.save()
    stop = failed(w.web, OperationKind.STOP)
    assert code(w.api(w.alice).post(url(stop))) == (409, "refused")


def test_the_schema_has_it(w):
    schema = w.api(w.alice).get("/api/schema/?format=json").json()
    post = schema["paths"]["/api/v1/operations/{uuid}/retry/"]["post"]
    assert {"202", "403", "404", "409"} <= set(post["responses"])
