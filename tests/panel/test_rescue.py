"""Reinstall, rescue mode and root's password from the panel (issue 15, 3.-5.).

The views and the API with the queue recorded (offline_world): the forms refuse a name typed
wrong and passwords that differ, another tenant gets 404, a read-only member 403, and the
password never reaches the audit log. Then the worker with the real engine (world): a
reinstall wipes a file the tenant wrote and keeps the address; rescue is a state of its own
that the reconciler keeps and the sampler samples; root's password is set in the system at
/mnt, and wiped from the operation's row."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import AuditEntry, Membership
from vservers import actions_rescue
from vservers.models import Operation, OperationKind, OperationStatus, State, Template, VirtualServer
from vservers.passwords import matches

PASSWORD = "n3w-Root-passw0rd"


# --- views and API, with the queue recorded ------------------------------------------------------


def _server(world, tenant, name="web", state=State.RUNNING) -> VirtualServer:
    server = VirtualServer.objects.create(tenant=tenant, name=name, hostname=f"{name}.example", plan=world.small,
                                          template=world.busybox, node=world.node, state=state)
    world.pool.allocate(server)
    return server


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _kinds(server) -> list[str]:
    return list(Operation.objects.filter(server=server).order_by("pk").values_list("kind", flat=True))


@pytest.fixture
def ro(offline_world, django_user_model):
    user = django_user_model.objects.create_user("ro", "ro@acme.test", None)
    Membership.objects.create(user=user, tenant=offline_world.acme, role=Membership.READONLY)
    return user


def test_reinstall_wants_the_name_typed_exactly(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    client = _client(w.alice)
    url = f"/servers/{server.uuid}/reinstall/"

    for typed in ("", "Web", "web ", "other"):
        response = client.post(url, {"template": "busybox", "confirm": typed}, follow=True)
        assert response.status_code == 200
        assert _kinds(server) == []
    assert "exactly: nothing was reinstalled" in response.content.decode()

    client.post(url, {"template": "busybox", "confirm": "web"})
    assert _kinds(server) == [OperationKind.REINSTALL]
    assert Operation.objects.get(server=server).params == {"template": "busybox"}
    assert AuditEntry.objects.filter(action="server.reinstall").exists()


def test_reinstall_with_a_snapshot_first_queues_the_snapshot_before_it(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    page = _client(w.alice).get(f"/servers/{server.uuid}/").content.decode()
    assert 'id="rescue"' in page and "Take a snapshot first" in page  # the plan keeps snapshots
    _client(w.alice).post(f"/servers/{server.uuid}/reinstall/",
                          {"template": "busybox", "confirm": "web", "snapshot_first": "on"})
    snapshot, reinstall = Operation.objects.filter(server=server).order_by("pk")
    assert (snapshot.kind, reinstall.kind) == (OperationKind.SNAPSHOT_CREATE, OperationKind.REINSTALL)
    assert reinstall.params["after"] == str(snapshot.uuid)

    w.small.snapshots_max = 0
    w.small.save()
    other = _server(w, w.acme, "two")
    assert "Take a snapshot first" not in _client(w.alice).get(f"/servers/{other.uuid}/").content.decode()


def test_inactive_templates_are_not_offered(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    Template.objects.create(name="old", display_name="Old system", is_active=False)
    _client(w.alice).post(f"/servers/{server.uuid}/reinstall/", {"template": "old", "confirm": "web"})
    assert _kinds(server) == []


def test_rescue_enter_and_leave_follow_the_state_table(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    client = _client(w.alice)
    client.post(f"/servers/{server.uuid}/rescue/leave/")  # not in rescue: refused
    assert _kinds(server) == []
    client.post(f"/servers/{server.uuid}/rescue/")
    assert _kinds(server) == [OperationKind.RESCUE_ENTER]

    server.move([State.RUNNING], State.RESCUE)
    page = client.get(f"/servers/{server.uuid}/").content.decode()
    assert "Running the rescue system:</strong> your files are at /mnt" in page
    assert ">Leave rescue</button>" in page and ">Start in rescue</button>" not in page
    client.post(f"/servers/{server.uuid}/rescue/leave/")
    assert _kinds(server)[-1] == OperationKind.RESCUE_LEAVE


def test_root_password_twice_and_kept_out_of_the_audit_log(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    client = _client(w.alice)
    url = f"/servers/{server.uuid}/root-password/"
    client.post(url, {"rootpw-password": PASSWORD, "rootpw-password2": PASSWORD + "x"})
    client.post(url, {"rootpw-password": "short", "rootpw-password2": "short"})
    assert _kinds(server) == []
    client.post(url, {"rootpw-password": PASSWORD, "rootpw-password2": PASSWORD})
    operation = Operation.objects.get(server=server)
    assert operation.kind == OperationKind.ROOT_PASSWORD and operation.params == {"password": PASSWORD}
    entry = AuditEntry.objects.get(action="server.root_password")
    assert PASSWORD not in str(entry.__dict__)


@pytest.mark.parametrize("path", ["reinstall/", "rescue/", "rescue/leave/", "root-password/"])
def test_another_tenant_gets_404_and_a_read_only_member_403(offline_world, ro, path):
    w = offline_world
    server = _server(w, w.acme, state=State.RESCUE if path == "rescue/leave/" else State.RUNNING)
    data = {"template": "busybox", "confirm": "web", "rootpw-password": PASSWORD, "rootpw-password2": PASSWORD}
    assert _client(w.bob).post(f"/servers/{server.uuid}/{path}", data).status_code == 404
    assert _client(ro).post(f"/servers/{server.uuid}/{path}", data).status_code == 403
    api_data = {"confirm": "web", "password": PASSWORD}
    assert _api(w.bob).post(f"/api/v1/servers/{server.uuid}/{path}", api_data, format="json").status_code == 404
    assert _api(ro).post(f"/api/v1/servers/{server.uuid}/{path}", api_data, format="json").status_code == 403
    assert _kinds(server) == []
    # The operator acts from the operator's page, and goes back there.
    response = _client(w.operator).post(f"/servers/{server.uuid}/{path}", data)
    assert response.status_code == 302 and response["Location"] == f"/operator/servers/{server.uuid}/#rescue"
    assert len(_kinds(server)) == 1


def _api(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_queues_each_and_checks_like_the_forms(offline_world):
    w = offline_world
    server = _server(w, w.acme)
    api = _api(w.alice)
    base = f"/api/v1/servers/{server.uuid}/"
    actions = api.get(base).json()["actions"]
    assert (actions["reinstall"], actions["rescue"], actions["rescue_leave"], actions["root_password"]) == (
        True, True, False, True)
    wrong = api.post(base + "reinstall/", {"confirm": "nope"}, format="json")
    assert wrong.status_code == 400 and "confirm" in wrong.json()["fields"]
    done = api.post(base + "reinstall/", {"confirm": "web"}, format="json")
    assert done.status_code == 202 and done.json()["kind"] == OperationKind.REINSTALL
    assert api.post(base + "root-password/", {"password": "x"}, format="json").status_code == 400
    assert api.post(base + "root-password/", {"password": PASSWORD}, format="json").status_code == 202
    assert api.post(base + "rescue/leave/", format="json").status_code == 409  # not in rescue
    assert api.post(base + "rescue/", format="json").status_code == 202
    assert _kinds(server) == [OperationKind.REINSTALL, OperationKind.ROOT_PASSWORD, OperationKind.RESCUE_ENTER]


# --- the worker, with the real engine ------------------------------------------------------------


def _run(world, drain, server, ask) -> Operation:
    operation = ask()
    drain()
    operation.refresh_from_db()
    server.refresh_from_db()
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output
    return operation


def test_reinstall_and_rescue_through_the_worker(world, provision, drain, http):
    from vservers.reconcile import reconcile_node
    from vservers.usage.sampler import sample

    server = provision("web")
    name, address = server.engine_name, server.ip_list()[0]
    assert world.engine.run(name, ["/bin/sh", "-c", "echo mine > /root/mine"]).returncode == 0

    # Reinstall, with a snapshot first: the file is gone, the address answers again, and the
    # snapshot taken before holds the file.
    _run(world, drain, server, lambda: actions_rescue.reinstall(server, world.alice, world.busybox,
                                                                snapshot_first=True))
    snapshot_op = Operation.objects.get(server=server, kind=OperationKind.SNAPSHOT_CREATE)
    assert snapshot_op.status == OperationStatus.SUCCEEDED, snapshot_op.error
    assert server.state == State.RUNNING and server.ip_list() == [address]
    assert world.engine.run(name, ["test", "-e", "/root/mine"]).returncode != 0
    http.wait(address)
    (snap,) = world.engine.snapshot_list(name)
    assert snap.name == snapshot_op.params["snapshot"]

    # A snapshot first that does not succeed (none can be taken of a server in error): nothing
    # is reinstalled.
    assert world.engine.run(name, ["/bin/sh", "-c", "echo again > /root/mine"]).returncode == 0
    snapshot = Operation.objects.create(server=server, kind=OperationKind.SNAPSHOT_CREATE,
                                        status=OperationStatus.FAILED, params={"snapshot": "never"})
    refused = actions_rescue.reinstall(server, world.alice, world.busybox)
    Operation.objects.filter(pk=refused.pk).update(params={"template": "busybox", "after": str(snapshot.uuid)})
    drain()
    refused.refresh_from_db()
    assert refused.status == OperationStatus.FAILED and "nothing was reinstalled" in refused.error
    assert world.engine.run(name, ["cat", "/root/mine"]).stdout == "again\n"

    # Rescue: its own state, kept by the reconciler, sampled like a running server.
    _run(world, drain, server, lambda: actions_rescue.rescue_enter(server, world.alice))
    assert server.state == State.RESCUE and world.engine.status(name).rescue
    reconcile_node(world.node.pk)
    server.refresh_from_db()
    assert server.state == State.RESCUE
    sample(world.node)
    server.refresh_from_db()
    assert server.sampled_at is not None and server.pids > 0

    # Root's password in rescue is that of its own system at /mnt; the row forgets it.
    operation = _run(world, drain, server, lambda: actions_rescue.root_password(server, world.alice, PASSWORD))
    assert "password" not in operation.params and PASSWORD not in operation.output

    def root_hash(path):
        lines = world.engine.run(name, ["cat", path]).stdout.splitlines()
        return next(line.split(":")[1] for line in lines if line.startswith("root:"))

    assert matches(PASSWORD, root_hash("/mnt/etc/shadow"))
    assert world.engine.run(name, ["cat", "/mnt/root/mine"]).stdout == "again\n"

    _run(world, drain, server, lambda: actions_rescue.rescue_leave(server, world.alice))
    assert server.state == State.RUNNING and not world.engine.status(name).rescue
    assert matches(PASSWORD, root_hash("/etc/shadow"))
    http.wait(address)
