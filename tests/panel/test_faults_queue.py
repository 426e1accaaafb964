"""Faults around the job queue, with real worker processes, a real Redis and the real engine:

 - Redis stops while tenants click: the pages still load and say that operations are delayed,
   what is asked for meanwhile is kept in the database (the outbox), and runs once Redis is
   back, once;
 - one operation queued twice runs once (the database claim makes duplicates harmless);
 - two operations at once on one server run one after the other, in the order asked for: the
   job of the second one returns at once, and the worker running the first one takes it;
 - a hundred operations on twenty servers, through two workers, all finish correctly.
"""

from __future__ import annotations

import os
import signal

import pytest
from django.db import transaction
from django.urls import reverse
from rq import Worker

from tests.panel import faults
from tests.panel.faults import assert_tells_the_truth, kernel_state, server_leaks, wait_until
from vservers.actions import JOB_FUNCTION, enqueue, request_operation
from vservers.jobs import LEFT
from vservers.models import GuestAccount, Operation, OperationKind, OperationStatus, State
from vservers.models.operations import FINISHED, QUEUE_DELAYED
from vservers.queues import get_queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.both_databases]

# The shared fixtures (tests/panel/faults.py).
file_database = faults.file_database
fault_world = faults.fault_world
workers = faults.workers
own_redis = faults.own_redis

PASSWORD = "Correct-horse-7-battery"


def all_finished(operations) -> bool:
    return not Operation.objects.filter(pk__in=[o.pk for o in operations]).exclude(status__in=FINISHED).exists()


def job_results(queue, job_id: str) -> list:
    job = queue.fetch_job(job_id)
    return [result.return_value for result in job.results()] if job else []


def use_redis(settings, url: str) -> None:
    """This process (the web side) queues on the Redis at URL."""
    settings.REDIS_URL = url
    settings.RQ_QUEUES = {"default": {"URL": url, "DEFAULT_TIMEOUT": 600,
                                      "SERIALIZER": "rq.serializers.JSONSerializer"}}


def registered_workers(count: int):
    connection = get_queue("default").connection
    return lambda: len(Worker.all(connection=connection)) >= count


# --- 4. Redis stops while tenants click ------------------------------------------------------


def test_redis_down_while_tenants_click_pages_load_and_nothing_is_lost_or_run_twice(
    fault_world, provision, workers, own_redis, settings, client
):
    world, engine = fault_world, fault_world.engine
    web, db = provision("web", "db")
    use_redis(settings, own_redis.url)
    worker = workers(redis_url=own_redis.url)
    wait_until(registered_workers(1), lambda: f"the worker to start:\n{worker.log_tail()}")

    own_redis.stop()

    client.force_login(world.alice)
    for url in (reverse("server_list"), reverse("server_detail", kwargs={"uuid": web.uuid})):
        assert client.get(url).status_code == 200
    clicks = [
        (reverse("server_action", kwargs={"uuid": web.uuid, "kind": "stop"}), {}),
        (reverse("server_action", kwargs={"uuid": db.uuid, "kind": "restart"}), {}),
        (reverse("account_add", kwargs={"uuid": db.uuid}), {"user": "carol", "password": PASSWORD, "ssh_key": ""}),
    ]
    for url, data in clicks:
        response = client.post(url, data)
        assert response.status_code == 302, response.content[-2000:]
    asked = list(Operation.objects.filter(requested_by=world.alice).order_by("pk"))
    assert [o.kind for o in asked] == [OperationKind.STOP, OperationKind.RESTART, OperationKind.ACCOUNT_ADD]
    for operation in asked:  # kept in the outbox, saying why
        assert (operation.status, operation.job_id, operation.error) == (OperationStatus.QUEUED, "", QUEUE_DELAYED)
    page = client.get(reverse("server_detail", kwargs={"uuid": db.uuid}))
    assert page.status_code == 200
    assert b'id="queue-delayed"' in page.content
    assert b"Operations are delayed:" in page.content
    assert client.get(reverse("healthz")).json() == {"ok": True, "redis": False}
    client.force_login(world.operator)
    for name in ("op_dashboard", "op_operations", "op_servers"):
        page = client.get(reverse(name))
        assert page.status_code == 200
        assert b'id="queue-delayed"' in page.content
    assert worker.alive(), worker.log_tail()  # it waits for Redis, it does not give up

    own_redis.start()  # empty, as after a restart without a dump

    wait_until(lambda: all_finished(asked), lambda: f"the delayed operations to run:\n{worker.log_tail()}")
    queue = get_queue("default")
    for operation in asked:
        operation.refresh_from_db()
        assert operation.status == OperationStatus.SUCCEEDED, operation.error + operation.output
        assert operation.error == ""
    # Run once each: by its own job, or (the account) by the job of the restart before it on
    # the same server, whose worker went on with it; its own job then found it done. That job
    # may still be on its way when the rows say finished: wait for every job's result.
    wait_until(lambda: all(job_results(queue, o.job_id) for o in asked),
               lambda: f"every job to have run:\n{worker.log_tail()}")
    assert [job_results(queue, o.job_id) for o in asked] == [["succeeded"], ["succeeded"], ["skipped"]]
    web.refresh_from_db()
    db.refresh_from_db()
    assert (web.state, db.state) == (State.STOPPED, State.RUNNING)
    assert_tells_the_truth(engine, web)
    assert_tells_the_truth(engine, db)
    assert [a.name for a in engine.accounts(db.engine_name).list()].count("carol") == 1
    assert GuestAccount.objects.filter(server=db, name="carol").exists()
    client.force_login(world.alice)
    assert b'id="queue-delayed"' not in client.get(reverse("server_list")).content
    # The worker is whole again: registered with the Redis that forgot it.
    wait_until(registered_workers(1), lambda: f"the worker to register again:\n{worker.log_tail(200)}")
    worker.stop()


def test_one_operation_queued_twice_runs_once(fault_world, provision, drain):
    server = provision("web")
    operation = request_operation(server, OperationKind.ACCOUNT_ADD, None, account="carol", password=PASSWORD)
    enqueue(operation)  # the same job again, as a web process and a reconciler both might
    queue = get_queue("default")
    other = queue.enqueue(JOB_FUNCTION, operation.pk, job_id=f"op-{operation.uuid}-again")  # and another job

    drain()

    operation.refresh_from_db()
    assert operation.status == OperationStatus.SUCCEEDED, operation.error
    results = job_results(queue, operation.job_id) + job_results(queue, other.id)
    assert sorted(results) == ["skipped", "skipped", "succeeded"]
    # Adding an account twice would have failed ("already exists") and said so on the row.
    assert [a.name for a in fault_world.engine.accounts(server.engine_name).list()].count("carol") == 1


# --- 5. operations at once ------------------------------------------------------------------


def test_two_operations_at_once_on_one_server_run_one_after_the_other(fault_world, provision, workers):
    engine = fault_world.engine
    server = provision("web")
    # The first worker stops itself in the middle of a restart (after the engine's part)...
    first = workers(fault=f"{OperationKind.RESTART}:after-engine")
    restart = request_operation(server, OperationKind.RESTART, None)
    first.wait_paused()
    second = workers()
    wait_until(registered_workers(2), lambda: f"the second worker to start:\n{second.log_tail()}")
    # ... while the second is asked to stop the same server, and to add an account after that.
    stop = request_operation(server, OperationKind.STOP, None)
    add = Operation.objects.create(server=server, kind=OperationKind.ACCOUNT_ADD,
                                   params={"account": "carol", "password": PASSWORD})
    enqueue(add)
    # The second worker takes their jobs and leaves them at once: their server is busy.
    queue = get_queue("default")
    stop.refresh_from_db()
    add.refresh_from_db()
    wait_until(lambda: [job_results(queue, o.job_id) for o in (stop, add)] == [[LEFT], [LEFT]],
               lambda: f"the jobs to be left to the first worker:\n{second.log_tail()}")
    restart.refresh_from_db()
    assert [o.status for o in (restart, stop, add)] == [OperationStatus.RUNNING, OperationStatus.QUEUED,
                                                        OperationStatus.QUEUED]
    assert kernel_state(engine, server) == "running"

    os.kill(first.pid, signal.SIGCONT)
    wait_until(lambda: all_finished([restart, stop, add]),
               lambda: f"the operations to finish:\n{first.log_tail()}\n{second.log_tail()}")

    ops = [Operation.objects.get(pk=o.pk) for o in (restart, stop, add)]
    assert [o.status for o in ops] == [OperationStatus.SUCCEEDED, OperationStatus.SUCCEEDED,
                                       OperationStatus.FAILED]
    # One after the other, in the order asked: the account could not be added to a stopped server.
    assert ops[0].finished <= ops[1].started and ops[1].finished <= ops[2].started
    assert ops[2].error == "cannot add account while the server is stopped"
    assert ops[0].runner == ops[1].runner == ops[2].runner  # the first worker went on with them
    assert_tells_the_truth(engine, server)
    assert server.state == State.STOPPED
    first.stop()
    second.stop()


def test_a_hundred_operations_on_twenty_servers_through_two_workers_all_finish_correctly(
    fault_world, provision, workers, drain
):
    """Through one `nodeworker --processes 2`, a group as a node runs by default
    (PANEL_NODE_WORKERS): its two processes share the operations, a process killed is
    replaced, and a stop of the group stops both."""
    engine = fault_world.engine
    names = [f"s{i:02d}" for i in range(20)]
    servers = provision(*names)
    uid_bases = [engine.spec(s.engine_name).uid_base for s in servers]
    plans = {
        0: [OperationKind.STOP, OperationKind.START, OperationKind.RESTART, OperationKind.ACCOUNT_ADD,
            OperationKind.STOP],
        1: [OperationKind.RESTART, OperationKind.ACCOUNT_ADD, OperationKind.STOP, OperationKind.START,
            OperationKind.RESTART],
    }
    expected = {0: State.STOPPED, 1: State.RUNNING}
    group = workers(processes=2)
    pool = [group]
    wait_until(lambda: len(group.python_children()) == 2, group.log_tail)
    wait_until(registered_workers(2), group.log_tail)
    # One of its processes dies (the OOM killer): the group starts another in its place.
    killed = group.python_children()[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: killed not in group.python_children() and len(group.python_children()) == 2,
               group.log_tail)
    children = group.python_children()

    # All at once: every server's first operation, then every second one, ... (each valid
    # only after the ones before it on its server), committed together.
    with transaction.atomic():
        operations = []
        for step in range(5):
            for i, server in enumerate(servers):
                kind = plans[i % 2][step]
                params = {"account": f"u{i}", "password": PASSWORD} if kind == OperationKind.ACCOUNT_ADD else {}
                operation = Operation.objects.create(server=server, kind=kind, params=params)
                enqueue(operation)
                operations.append(operation)
    assert len(operations) == 100

    wait_until(lambda: all_finished(operations), lambda: "\n".join(w.log_tail() for w in pool), timeout=900)

    done = list(Operation.objects.filter(pk__in=[o.pk for o in operations]).order_by("pk"))
    failed = [(o.server.name, o.kind, o.error) for o in done if o.status != OperationStatus.SUCCEEDED]
    assert not failed, failed
    assert {o.runner.split(":")[2] for o in done} == {str(pid) for pid in children}  # both took their share
    for i, server in enumerate(servers):
        mine = [o for o in done if o.server_id == server.pk]
        assert [o.kind for o in mine] == plans[i % 2]
        for before, after in zip(mine, mine[1:], strict=False):
            assert before.finished <= after.started, (server.name, before.kind, after.kind)
        server.refresh_from_db()
        assert server.state == expected[i % 2], (server.name, server.state, server.state_reason)
        assert_tells_the_truth(engine, server)
        assert GuestAccount.objects.filter(server=server, name=f"u{i}").exists()
        if server.state == State.RUNNING:
            assert f"u{i}" in [a.name for a in engine.accounts(server.engine_name).list()]
    for worker in pool:
        worker.stop()
    assert group.proc.returncode == 0
    assert not [pid for pid in children if faults.process_state(pid) not in (None, "Z")]  # both ended with it

    # Nothing stays behind once they are gone.
    for server in servers:
        request_operation(server, OperationKind.DELETE, None)
    drain()
    for server in servers:
        server.refresh_from_db()
        assert server.state == State.DELETED
    assert not server_leaks(uid_bases), server_leaks(uid_bases)
