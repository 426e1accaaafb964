"""`manage.py demo` fills an empty database, and only an empty one."""

from __future__ import annotations

import io
import logging

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.models import Membership, Tenant
from vservers.models import IPAddress, IPPool, Node, Operation, OperationKind, Plan, State, Template, VirtualServer
from vservers.queues import get_queue

PASSWORD = "demo-password-1"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    # Three users, each hashed and checked: the real hasher's cost is not what is tested here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def demo(*args, **options) -> str:
    out = io.StringIO()
    call_command("demo", *args, stdout=out, **options)
    return out.getvalue()


@pytest.mark.django_db
def test_it_fills_an_empty_database_with_the_demo_world():
    demo(password=PASSWORD)

    User = get_user_model()
    operator = User.objects.get(username="operator")
    assert operator.is_staff and operator.is_superuser and operator.check_password(PASSWORD)
    for name, tenant in (("alice", "acme"), ("bob", "globex")):
        user = User.objects.get(username=name)
        assert user.check_password(PASSWORD) and not user.is_staff
        assert user.membership.tenant.slug == tenant and user.membership.role == Membership.ADMIN
    small, medium = Plan.objects.get(name="small"), Plan.objects.get(name="medium")
    assert (float(small.cpus), small.memory_mb, small.disk_mb, small.pids) == (0.5, 64, 256, 128)
    assert (float(medium.cpus), medium.memory_mb, medium.disk_mb, medium.pids) == (1.0, 256, 1024, 512)
    assert Template.objects.get().name == "busybox"
    node = Node.objects.get()
    assert (node.name, node.queue_name) == ("local", "default")
    pool = IPPool.objects.get()
    assert (pool.name, pool.network, pool.gateway, pool.node) == ("demo", "198.18.0.0/16", "198.18.0.1", node)
    for tenant in Tenant.objects.all():
        servers = tenant.servers.all()
        assert sorted(s.state for s in servers) == [State.REQUESTED, State.RUNNING]
        running = servers.get(state=State.RUNNING)
        assert running.node == node and len(running.ip_list()) == 1
    assert IPAddress.objects.count() == 2
    assert not Operation.objects.exists()  # without --provision nothing goes to the worker


@pytest.mark.django_db
def test_it_refuses_a_database_that_has_data():
    demo(password=PASSWORD)
    before = VirtualServer.objects.count(), get_user_model().objects.count()

    with pytest.raises(CommandError, match="the database is not empty"):
        demo(password="other-password")
    assert "No demo data added" in demo("--if-empty", password="other-password")

    assert (VirtualServer.objects.count(), get_user_model().objects.count()) == before
    assert get_user_model().objects.get(username="alice").check_password(PASSWORD)


@pytest.mark.django_db
def test_it_prints_the_password_it_generates():
    out = demo()

    password = out.split("(shown only now): ")[1].split()[0]
    assert get_user_model().objects.get(username="bob").check_password(password)


@pytest.mark.django_db(transaction=True)
def test_provision_queues_every_server_for_the_worker(rq_redis):
    demo("--provision", password=PASSWORD)

    operations = Operation.objects.filter(kind=OperationKind.PROVISION)
    assert operations.count() == 4
    assert all(o.job_id == f"op-{o.uuid}" and not o.error for o in operations)
    assert sorted(get_queue("default").get_job_ids()) == sorted(o.job_id for o in operations)
    assert VirtualServer.objects.filter(state=State.APPROVED).count() == 2
    assert IPAddress.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_provision_without_redis_leaves_the_operations_for_the_worker(settings, tmp_path, caplog):
    settings.RQ_QUEUES = {"default": {"URL": f"unix://{tmp_path}/absent.sock?db=0"}}

    with caplog.at_level(logging.WARNING):
        out = demo("--provision", password=PASSWORD)
    # One line of the command's own, not a warning per operation (make run starts Redis after).
    assert not [r for r in caplog.records if "outbox" in r.getMessage()]

    operations = Operation.objects.filter(kind=OperationKind.PROVISION)
    assert operations.count() == 4
    assert all(o.error.startswith("queueing delayed") and not o.job_id for o in operations)
    assert "4 of them wait for Redis" in out
