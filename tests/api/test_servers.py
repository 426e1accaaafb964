"""The tenant's side of the API: servers, requests, actions, plan changes, operations, accounts
and services; the error shape; ETags; filters and pages. The domain rules are the pages' (one
vservers.actions, one vservers.access), so these tests look at what the API adds: its answers."""

from __future__ import annotations

import base64

import pytest

from accounts.models import AuditEntry
from vservers.models import GuestAccount, Operation, OperationKind, Service, State, VirtualServer
from vservers.passwords import matches


@pytest.fixture
def w(offline_world, api):
    w = offline_world
    w.server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.test", plan=w.small,
                                            template=w.busybox, node=w.node, state=State.RUNNING)
    w.pool.allocate(w.server)
    GuestAccount.objects.create(server=w.server, name="www", uid=1000, home="/home/www")
    GuestAccount.objects.create(server=w.server, name="daemon", uid=1, home="/", is_system=True)
    Service.objects.create(server=w.server, name="httpd", state="run", pid=42)
    w.alice_api = api(w.alice)
    w.operator_api = api(w.operator)
    return w


def error(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"detail", "code", "fields"}, body
    return response.status_code, body["code"]


# -- errors ---------------------------------------------------------------------------------


def test_every_error_has_the_same_shape(w):
    a = w.alice_api
    assert error(a.get("/api/v1/servers/00000000-0000-0000-0000-000000000000/")) == (404, "not_found")
    assert error(a.get("/api/v1/servers/not-a-uuid/")) == (404, "not_found")  # no URL pattern: Django's 404
    assert error(a.get("/api/v1/operator/tenants/")) == (403, "permission_denied")
    assert error(a.delete("/api/v1/servers/")) == (405, "method_not_allowed")
    assert error(a.post("/api/v1/servers/", "name=x", content_type="application/x-www-form-urlencoded")) == (
        415, "unsupported_media_type")
    assert error(a.post(f"/api/v1/servers/{w.server.uuid}/start/")) == (409, "refused")
    assert error(a.get("/api/v1/servers/?state=sleeping")) == (400, "invalid")
    assert error(a.get("/api/v1/servers/?page=99")) == (404, "not_found")
    response = a.post("/api/v1/servers/", {"name": "Bad Name", "hostname": "x", "plan": "huge"}, format="json")
    assert error(response) == (400, "invalid")
    fields = response.json()["fields"]
    assert set(fields) == {"template"}  # DRF's check first: a field is missing


def test_input_is_refused_with_the_forms_own_messages(w):
    response = w.alice_api.post("/api/v1/servers/", {"name": "Bad Name", "hostname": "ok.example.test",
                                                     "plan": "huge", "template": "busybox"}, format="json")
    fields = response.json()["fields"]
    assert set(fields) == {"name", "plan"}
    assert fields["plan"] == ["Select a valid choice. That choice is not one of the available choices."]
    response = w.alice_api.post(f"/api/v1/servers/{w.server.uuid}/accounts/", {"user": "carol"}, format="json")
    assert response.json()["fields"] == {
        "non_field_errors": ["Give a password, an SSH key, or both: otherwise nobody can log in."]}
    assert not Operation.objects.exists()


# -- servers ----------------------------------------------------------------------------------


def test_a_tenant_requests_a_server_and_withdraws_it(w):
    response = w.alice_api.post("/api/v1/servers/", {"name": "shop", "hostname": "shop.acme.test", "plan": "small",
                                                     "template": "busybox"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert (body["state"], body["plan"]["name"], body["actions"]["cancel"]) == ("requested", "small", True)
    assert response["Location"] == f"/api/v1/servers/{body['uuid']}/"
    assert AuditEntry.objects.filter(action="server.request", actor=w.alice).count() == 1
    again = w.alice_api.post("/api/v1/servers/", {"name": "shop", "hostname": "shop.acme.test", "plan": "small",
                                                  "template": "busybox"}, format="json")
    assert again.status_code == 400 and "name" in again.json()["fields"]
    assert w.alice_api.post(f"/api/v1/servers/{body['uuid']}/cancel/").status_code == 204
    assert VirtualServer.objects.get(uuid=body["uuid"]).state == State.DELETED


def test_a_request_takes_roots_key_and_password_as_the_form_does(w):
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    key = f"ssh-ed25519 {base64.b64encode(blob).decode()} alice@laptop"
    fields = {"name": "shop", "hostname": "shop.acme.test", "plan": "small", "template": "busybox"}
    bad = w.alice_api.post("/api/v1/servers/", {**fields, "ssh_key": "ssh-ed25519 nope!", "root_password": "short"},
                           format="json")
    assert bad.status_code == 400 and set(bad.json()["fields"]) == {"ssh_key", "root_password"}
    response = w.alice_api.post("/api/v1/servers/", {**fields, "ssh_key": key, "root_password": "long enough 1"},
                                format="json")
    assert response.status_code == 201
    server = VirtualServer.objects.get(uuid=response.json()["uuid"])
    assert server.root_ssh_key == key and matches("long enough 1", server.root_password_hash)
    assert "long enough 1" not in response.content.decode()


@pytest.mark.both_databases
def test_a_request_beyond_the_quota_is_409(w):
    w.acme.max_servers = 1
    w.acme.save()
    response = w.alice_api.post("/api/v1/servers/", {"name": "shop", "hostname": "shop.acme.test", "plan": "small",
                                                     "template": "busybox"}, format="json")
    assert error(response) == (409, "quota")
    assert "limit of 1" in response.json()["detail"]


def test_operators_create_servers_elsewhere(w):
    response = w.operator_api.post("/api/v1/servers/", {"name": "shop", "hostname": "shop.acme.test",
                                                        "plan": "small", "template": "busybox"}, format="json")
    assert error(response) == (403, "permission_denied")


def test_actions_queue_operations_and_say_which(w):
    response = w.alice_api.post(f"/api/v1/servers/{w.server.uuid}/stop/")
    assert response.status_code == 202
    body = response.json()
    assert (body["kind"], body["status"], body["requested_by"]) == ("stop", "queued", "alice")
    assert response["Location"] == f"/api/v1/operations/{body['uuid']}/"
    assert [op.kind for op in w.queued] == ["stop"]
    # Asked again while it waits: the same operation.
    assert w.alice_api.post(f"/api/v1/servers/{w.server.uuid}/stop/").json()["uuid"] == body["uuid"]
    assert error(w.alice_api.post(f"/api/v1/servers/{w.server.uuid}/retry/")) == (409, "refused")


def test_the_server_list_and_detail_answer_304_while_nothing_changed(w):
    first = w.alice_api.get("/api/v1/servers/")
    etag = first["ETag"]
    assert first.status_code == 200 and first.json()["count"] == 1
    assert "no-cache" in first["Cache-Control"] and "private" in first["Cache-Control"]
    again = w.alice_api.get("/api/v1/servers/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b""
    VirtualServer.objects.filter(pk=w.server.pk).update(state=State.STOPPED)
    VirtualServer.objects.get(pk=w.server.pk).save()  # bumps `updated`, as every change does
    changed = w.alice_api.get("/api/v1/servers/", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["results"][0]["state"] == "stopped"

    detail = w.alice_api.get(f"/api/v1/servers/{w.server.uuid}/")
    assert w.alice_api.get(f"/api/v1/servers/{w.server.uuid}/", HTTP_IF_NONE_MATCH=detail["ETag"]).status_code == 304
    # Another user's answer has another ETag (their role is part of it).
    assert w.operator_api.get(f"/api/v1/servers/{w.server.uuid}/")["ETag"] != detail["ETag"]


def test_lists_are_paged_and_filtered(w):
    for i in range(3):
        VirtualServer.objects.create(tenant=w.acme, name=f"app{i}", hostname=f"app{i}.acme.test", plan=w.small,
                                     template=w.busybox, state=State.REQUESTED)
    page = w.alice_api.get("/api/v1/servers/?page_size=2&page=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"] is None and page["previous"]
    assert [s["name"] for s in w.alice_api.get("/api/v1/servers/?state=requested").json()["results"]] == [
        "app0", "app1", "app2"]
    assert [s["name"] for s in w.alice_api.get("/api/v1/servers/?q=web").json()["results"]] == ["web"]
    assert w.alice_api.get("/api/v1/servers/?tenant=globex").json()["count"] == 0
    assert w.operator_api.get("/api/v1/servers/?tenant=acme").json()["count"] == 4
    assert w.operator_api.get("/api/v1/servers/?tenant=globex").json()["count"] == 0


def test_a_plan_change_is_asked_for_and_withdrawn(w):
    url = f"/api/v1/servers/{w.server.uuid}/plan-change/"
    assert w.alice_api.post(url, {"plan": "medium"}, format="json").json() == {"requested_plan": "medium"}
    assert w.alice_api.get(f"/api/v1/servers/{w.server.uuid}/").json()["requested_plan"]["name"] == "medium"
    assert w.alice_api.get("/api/v1/servers/?plan_change=true").json()["count"] == 1
    assert w.alice_api.post(url, {"plan": "small"}, format="json").json() == {"requested_plan": None}
    assert error(w.alice_api.post(url, {"plan": "small"}, format="json")) == (400, "invalid")


def test_rejected_requests_are_listed_until_dismissed(w):
    old = VirtualServer.objects.create(tenant=w.acme, name="old", hostname="old.acme.test", plan=w.small,
                                       template=w.busybox, state=State.REJECTED, state_reason="not now")
    listed = w.alice_api.get("/api/v1/rejected/").json()["results"]
    assert [(r["name"], r["reason"]) for r in listed] == [("old", "not now")]
    assert w.operator_api.get("/api/v1/rejected/").json()["count"] == 0
    assert w.alice_api.post(f"/api/v1/rejected/{old.uuid}/dismiss/").status_code == 204
    assert w.alice_api.get("/api/v1/rejected/").json()["count"] == 0
    assert w.alice_api.post(f"/api/v1/rejected/{old.uuid}/dismiss/").status_code == 404


# -- operations -------------------------------------------------------------------------------


def test_tenants_see_the_error_sentence_and_operators_the_detail_too(w):
    op = Operation.objects.create(server=w.server, kind=OperationKind.START, status="failed",
                                  error="the server did not start", detail="Traceback ... /var/lib/vservers/...")
    tenant = w.alice_api.get(f"/api/v1/operations/{op.uuid}/").json()
    assert tenant["error"] == "the server did not start" and "detail" not in tenant
    assert "Traceback" not in str(w.alice_api.get("/api/v1/operations/").json())
    assert w.operator_api.get(f"/api/v1/operations/{op.uuid}/").json()["detail"].startswith("Traceback")


def test_operations_are_filtered_by_server_status_and_kind(w):
    other = VirtualServer.objects.create(tenant=w.acme, name="db", hostname="db.acme.test", plan=w.small,
                                         template=w.busybox, node=w.node, state=State.RUNNING)
    Operation.objects.create(server=w.server, kind=OperationKind.START, status="succeeded")
    Operation.objects.create(server=w.server, kind=OperationKind.STOP, status="failed")
    Operation.objects.create(server=other, kind=OperationKind.STOP, status="failed")
    a = w.alice_api
    assert a.get(f"/api/v1/operations/?server={w.server.uuid}").json()["count"] == 2
    assert a.get("/api/v1/operations/?kind=stop").json()["count"] == 2
    assert a.get(f"/api/v1/operations/?kind=stop&server={other.uuid}").json()["count"] == 1
    assert a.get(f"/api/v1/servers/{w.server.uuid}/operations/?status=failed").json()["count"] == 1


# -- accounts and services --------------------------------------------------------------------


def test_accounts_and_services(w):
    a, base = w.alice_api, f"/api/v1/servers/{w.server.uuid}"
    assert [x["name"] for x in a.get(f"{base}/accounts/").json()["results"]] == ["daemon", "www"]
    added = a.post(f"{base}/accounts/", {"user": "carol", "password": "carols-secret-pw"}, format="json")
    assert added.status_code == 202 and added.json()["subject"] == "carol"
    assert Operation.objects.get(kind="account_add").params == {"account": "carol", "password": "carols-secret-pw"}
    assert a.post(f"{base}/accounts/www/password/", {"password": "another-long-pw"}, format="json").status_code == 202
    assert error(a.delete(f"{base}/accounts/daemon/")) == (403, "permission_denied")  # a system account
    assert a.delete(f"{base}/accounts/www/").status_code == 202
    assert error(a.delete(f"{base}/accounts/nobody-here/")) == (404, "not_found")
    assert [x["name"] for x in a.get(f"{base}/services/").json()["results"]] == ["httpd"]
    stopped = a.post(f"{base}/services/httpd/stop/")
    assert (stopped.status_code, stopped.json()["kind"], stopped.json()["subject"]) == (202, "service_stop", "httpd")
    assert [op.kind for op in w.queued] == ["account_add", "account_password", "account_delete", "service_stop"]


def test_a_crash_under_api_is_a_json_500_and_elsewhere_the_page(rf):
    from api.errors import server_error

    answer = server_error(rf.get("/api/v1/servers/"))
    assert answer.status_code == 500 and answer["Content-Type"] == "application/json"
    assert answer.content == b'{"detail": "A server error occurred.", "code": "error", "fields": {}}'
    page = server_error(rf.get("/servers/"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
