"""The worker runs operations with the real engine: rows first, jobs through a real Redis, a
real PanelWorker, real servers on the tests' own bridge (vspanel0)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from vservers.actions import approve, request_operation, request_server
from vservers.forms import ServerRequestForm
from vservers.jobs import LEFT, OrderNotApplied, claim_next, run_operation
from vservers.models import (
    GuestAccount,
    IPAddress,
    Operation,
    OperationKind,
    OperationStatus,
    Service,
    State,
    Template,
    VirtualServer,
)
from vservers.passwords import matches, sha512_crypt
from vservers.usage.sampler import sample

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "Tr0ub4dor&3-horse"


def run(server, kind, drain, **params) -> Operation:
    """Request KIND on SERVER as its tenant's admin, let the worker run it, return the row."""
    operation = request_operation(server, kind, None, **params)
    drain()
    operation.refresh_from_db()
    server.refresh_from_db()
    return operation


def assert_ok(operation: Operation) -> None:
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output


def test_approval_provisions_a_running_server_that_answers_http(world, make_server, drain, http):
    server = make_server("web")
    operation = approve(server, world.operator)
    operation.refresh_from_db()
    assert operation.job_id == f"op-{operation.uuid}"  # queued when approve() committed

    drain()

    operation.refresh_from_db()
    server.refresh_from_db()
    assert_ok(operation)
    assert operation.started <= operation.finished
    assert "Started" in operation.output
    assert server.state == State.RUNNING
    assert server.ip_list() == ["198.19.128.2"]
    status = world.engine.status(server.engine_name)
    assert status.state == "running"
    assert status.limits.memory_bytes == 64 * 2**20
    http.wait("198.19.128.2")
    assert http.get("198.19.128.2")[0] == 200
    # The tenant's first look at the server: its accounts and services.
    assert GuestAccount.objects.filter(server=server, name="root").exists()
    assert Service.objects.filter(server=server, name="httpd").exists()


def test_stop_start_restart_and_plan_change_follow_the_kernel(world, provision, drain, http):
    server = provision("web")
    name = server.engine_name
    first_init = world.engine.status(name).init_pid
    sample(world.node)  # a usage sample of the running server
    server.refresh_from_db()
    assert server.memory_bytes > 0 and server.pids > 0
    assert Service.objects.get(server=server, name="httpd").pid is not None

    assert_ok(run(server, OperationKind.STOP, drain))
    assert server.state == State.STOPPED
    assert world.engine.status(name).state == "stopped"
    # What the pages show of it follows at once: nothing runs in a stopped server (the last
    # listing said httpd was running with its pid, the last sample that memory was in use).
    server.refresh_from_db()
    assert (server.memory_bytes, server.pids) == (0, 0) and server.disk_used_bytes > 0
    assert list(Service.objects.filter(server=server).values_list("state", "pid").distinct()) == [("stopped", None)]

    assert_ok(run(server, OperationKind.START, drain))
    assert server.state == State.RUNNING
    http.wait(server.ip_list()[0])

    before = world.engine.status(name).init_pid
    assert_ok(run(server, OperationKind.RESTART, drain))
    assert server.state == State.RUNNING
    assert world.engine.status(name).init_pid not in (before, first_init)
    http.wait(server.ip_list()[0])

    operation = run(server, OperationKind.CHANGE_PLAN, drain, plan_id=world.medium.pk)
    assert_ok(operation)
    assert server.plan == world.medium
    assert "apply to the running server now" in operation.output
    assert "The disk grows to 512 MB" in operation.output  # online, or at the next start
    assert world.engine.status(name).limits.memory_bytes == 256 * 2**20
    # The plan change went through the engine's update: the engine keeps the new limits, so
    # a restart by hand (`vserver restart`) does not bring back the old ones.
    world.engine.restart(name)
    limits = world.engine.status(name).limits
    assert (limits.memory_bytes, limits.pids, limits.cpus, limits.disk_bytes) == (
        256 * 2**20, 512, 1.0, 512 * 2**20)
    assert not world.engine.status(name).extra.get("disk_grow_pending")
    assert_ok(run(server, OperationKind.RESTART, drain))
    limits = world.engine.status(name).limits
    assert (limits.memory_bytes, limits.pids, limits.cpus) == (256 * 2**20, 512, 1.0)


def test_account_operations_show_up_and_no_password_is_kept(world, provision, drain, rq_redis):
    server = provision("web")

    operation = run(server, OperationKind.ACCOUNT_ADD, drain, account="carol", password=PASSWORD)
    assert_ok(operation)
    assert GuestAccount.objects.filter(server=server, name="carol", is_system=False).exists()
    assert [a.name for a in world.engine.accounts(server.engine_name).list()].count("carol") == 1

    changed = run(server, OperationKind.ACCOUNT_PASSWORD, drain, account="carol", password=PASSWORD + "!")
    assert_ok(changed)
    refused = run(server, OperationKind.ACCOUNT_ADD, drain, account="carol", password=PASSWORD)
    assert refused.status == OperationStatus.FAILED
    assert "already exists" in refused.error

    for row in Operation.objects.filter(server=server):
        assert "password" not in row.params
        for text in (row.output, row.error, str(row.params)):
            assert PASSWORD not in text
    # Only operation ids travel through Redis.
    for key in rq_redis.scan_iter():
        kind = rq_redis.type(key)
        values = rq_redis.hvals(key) if kind == b"hash" else [rq_redis.get(key)] if kind == b"string" else []
        assert not any(PASSWORD.encode() in (v or b"") for v in values), key

    assert_ok(run(server, OperationKind.ACCOUNT_DELETE, drain, account="carol"))
    assert not GuestAccount.objects.filter(server=server, name="carol").exists()


def test_stopping_a_service_closes_its_port_until_it_starts_again(world, provision, drain, http):
    server = provision("web")
    address = server.ip_list()[0]

    operation = run(server, OperationKind.SERVICE_STOP, drain, service="httpd")
    assert_ok(operation)
    assert Service.objects.get(server=server, name="httpd").state == "stopped"
    with pytest.raises(ConnectionRefusedError):
        http.get(address, timeout=2)

    assert_ok(run(server, OperationKind.SERVICE_START, drain, service="httpd"))
    assert Service.objects.get(server=server, name="httpd").state == "running"
    http.wait(address)


@pytest.mark.both_databases
def test_delete_releases_the_address_and_removes_the_server(world, provision, drain):
    server = provision("web")

    operation = run(server, OperationKind.DELETE, drain)

    assert_ok(operation)
    assert server.state == State.DELETED
    assert not IPAddress.objects.exists()
    assert server.engine_name not in world.engine.names()
    assert not GuestAccount.objects.filter(server=server).exists()


def test_a_failed_provision_says_why_and_the_server_can_still_be_deleted(world, make_server, drain):
    server = make_server("broken", template=Template.objects.create(name="nosuch", display_name="No such"))
    operation = approve(server, world.operator, node=world.node)  # pinned: placement would refuse it
    drain()

    operation.refresh_from_db()
    server.refresh_from_db()
    assert operation.status == OperationStatus.FAILED
    # The tenant reads a plain sentence; the engine's message and the traceback are the
    # operator's.
    assert operation.error == "The server could not be set up; the operator has been told."
    assert "template 'nosuch' is not built" in operation.detail
    assert "Traceback" in operation.detail and "Traceback" not in operation.output
    assert server.state == State.ERROR
    assert server.state_reason == operation.error

    deleted = run(server, OperationKind.DELETE, drain)
    assert_ok(deleted)
    assert server.state == State.DELETED
    assert not IPAddress.objects.exists()


def root_key() -> str:
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} alice@laptop"


def roots_login(world, server) -> tuple[list[str], str]:
    """root's authorized keys and its password hash in /etc/shadow, read inside the guest."""
    name = server.engine_name
    keys = world.engine.run(name, ["cat", "/root/.ssh/authorized_keys"]).stdout.splitlines()
    shadow = world.engine.run(name, ["cat", "/etc/shadow"]).stdout
    return keys, next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]


def test_roots_key_and_password_given_with_the_request_are_set_at_provision(world, drain):
    key = root_key()
    form = ServerRequestForm({"name": "keyed", "hostname": "keyed.acme.example", "plan": world.small.pk,
                              "template": world.busybox.pk, "ssh_key": key, "root_password": PASSWORD},
                             tenant=world.acme)
    assert form.is_valid(), form.errors
    data = form.cleaned_data
    server = request_server(world.acme, world.alice, name=data["name"], hostname=data["hostname"],
                            plan=data["plan"], template=data["template"], ssh_key=data["ssh_key"],
                            password_hash=data["root_password_hash"])
    hashed = server.root_password_hash
    operation = approve(server, world.operator)
    drain()
    operation.refresh_from_db()
    server.refresh_from_db()
    assert_ok(operation)
    assert server.state == State.RUNNING
    assert "Set root's password given with the request." in operation.output
    assert "Added the SSH key given with the request to root's authorized keys." in operation.output

    keys, in_shadow = roots_login(world, server)
    assert keys == [key]
    assert in_shadow == hashed and matches(PASSWORD, in_shadow)
    owner = world.engine.run(server.engine_name, ["stat", "-c", "%U %a", "/root/.ssh/authorized_keys"]).stdout
    assert owner.split() == ["root", "600"]
    # Applied, they are gone from the row; nothing of the password was ever in an operation.
    assert (server.root_ssh_key, server.root_password_hash) == ("", "")
    assert PASSWORD not in str(list(Operation.objects.values()))


def test_a_login_that_cannot_be_applied_fails_the_provisioning_clearly(world, make_server, drain):
    key = root_key()
    server = make_server("keyed", root_ssh_key=key, root_password_hash="$6$not-a-crypt-hash")
    operation = approve(server, world.operator)
    drain()
    operation.refresh_from_db()
    server.refresh_from_db()
    assert operation.status == OperationStatus.FAILED
    assert operation.error == OrderNotApplied.PUBLIC
    assert "SHA-512 crypt" in operation.detail
    assert (server.state, server.state_reason) == (State.ERROR, OrderNotApplied.PUBLIC)
    assert server.root_ssh_key == key  # nothing applied, nothing forgotten

    # Fixed, a retry applies what is left, the key once.
    hashed = sha512_crypt(PASSWORD)
    VirtualServer.objects.filter(pk=server.pk).update(root_password_hash=hashed)
    assert_ok(run(server, OperationKind.PROVISION, drain))
    assert server.state == State.RUNNING
    assert roots_login(world, server) == ([key], hashed)
    assert (server.root_ssh_key, server.root_password_hash) == ("", "")


def leave_marker(job, connection, *args) -> None:
    """A callback that would show it ran: it makes the file named in the job's meta."""
    Path(job.meta["marker"]).touch()


def test_the_worker_refuses_jobs_outside_its_allow_list(world, drain, tmp_path):
    from rq import Callback

    from vservers.queues import get_queue

    marker = tmp_path / "ran"
    queue = get_queue("default")
    foreign = queue.enqueue("os.system", f"touch {marker}")
    # An allowed name, but as a method of an object the job brings along.
    bound = queue.enqueue("vservers.jobs.run_operation", 0)
    bound.instance = {"not": "a plain function"}
    bound.save()
    # Any callback a job names, on success or failure, is neither imported nor called (had it
    # been imported, the marker would exist; had the import failed, the job would have failed).
    callback = Callback(f"{__name__}.leave_marker")
    callbacks = {"on_success": callback, "on_failure": callback, "on_stopped": callback,
                 "meta": {"marker": str(marker)}}
    succeeding = queue.enqueue("vservers.jobs.run_operation", 0, **callbacks)
    failing = queue.enqueue("vservers.jobs.run_operation", "not an id", **callbacks)

    drain()

    assert not marker.exists()
    for refused, name in ((foreign, "os.system"), (bound, "run_operation")):
        assert refused.get_status() == "failed"
        assert "JobRefused: function" in refused.latest_result().exc_string
        assert f"{name}' is not one the panel's worker runs" in refused.latest_result().exc_string
    assert (succeeding.get_status(), succeeding.latest_result().return_value) == ("finished", "missing")
    assert failing.get_status() == "failed"
    assert "JobRefused" not in failing.latest_result().exc_string  # run_operation itself failed


@pytest.mark.both_databases
def test_an_operation_whose_server_is_busy_is_left_to_the_worker_running_it(world, make_server):
    server = make_server("web", state=State.STOPPED, node=world.node)
    first = Operation.objects.create(server=server, kind=OperationKind.START)
    assert claim_next(server.pk) == first  # a worker runs it
    waiting = Operation.objects.create(server=server, kind=OperationKind.STOP)

    assert run_operation(waiting.pk) == LEFT  # at once, without touching it

    waiting.refresh_from_db()
    assert waiting.status == OperationStatus.QUEUED
    server.refresh_from_db()
    assert server.state == State.STOPPED
    # The worker running the first one finishes it, and then takes the waiting one.
    first.finish(True, output="done")
    assert claim_next(server.pk) == waiting
    waiting.refresh_from_db()
    first.refresh_from_db()  # the claim's runner, which the claim recorded on the row
    assert (waiting.status, waiting.runner) == (OperationStatus.RUNNING, first.runner)
    assert claim_next(server.pk) is None  # it runs: nothing more for anyone


@pytest.mark.both_databases
def test_a_job_runs_its_servers_queued_operations_in_order_from_the_oldest(world, make_server):
    server = make_server("web", state=State.STOPPED, node=world.node)
    older, newer = (Operation.objects.create(server=server, kind=OperationKind.ACCOUNT_ADD,
                                             params={"account": name}) for name in ("carol", "dave"))

    assert run_operation(newer.pk) == "failed"  # a stopped server has no accounts to add to
    assert run_operation(older.pk) == "skipped"  # the first job ran it, before the newer one

    older.refresh_from_db()
    newer.refresh_from_db()
    for operation in (older, newer):
        assert operation.status == OperationStatus.FAILED
        assert operation.error == "cannot add account while the server is stopped"
    assert older.finished <= newer.started


@pytest.mark.both_databases
def test_missing_and_finished_operations_are_skipped(world, make_server):
    server = make_server("web", state=State.RUNNING, node=world.node)
    done = Operation.objects.create(server=server, kind=OperationKind.STOP, status=OperationStatus.SUCCEEDED)

    assert run_operation(done.pk + 1000) == "missing"
    assert run_operation(done.pk) == "skipped"
    server.refresh_from_db()
    assert server.state == State.RUNNING
