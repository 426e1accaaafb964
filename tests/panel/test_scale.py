"""List pages stay flat with 1,000 servers and 10,000 operations in the database: their query
count does not depend on how many rows there are (no per-row queries). Counting queries, not
timing them: the benchmarks measure time."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from accounts.models import Membership, Tenant
from vservers.models import IPAddress, IPPool, Node, Operation, Plan, State, Template, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def crowd(django_user_model):
    node = Node.objects.create(name="local", queue_name="default")
    pool = IPPool.objects.create(name="big", node=node, network="198.19.128.0/18", gateway="198.19.128.1")
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    tenants = [Tenant.objects.create(name=f"T{i}", slug=f"t{i}", max_servers=1000) for i in range(4)]
    alice = django_user_model.objects.create_user("alice", password="pw-alice-long")
    Membership.objects.create(user=alice, tenant=tenants[0])
    operator = django_user_model.objects.create_user("operator", password="pw-operator-long", is_staff=True)
    states = [State.RUNNING, State.STOPPED, State.REQUESTED, State.ERROR]
    servers = VirtualServer.objects.bulk_create(
        VirtualServer(tenant=tenants[i % 4], name=f"s{i}", hostname=f"s{i}.example", plan=plan, template=template,
                      node=node, state=states[i % 4])
        for i in range(1000)
    )
    hosts = pool.iter_hosts()
    IPAddress.objects.bulk_create(IPAddress(pool=pool, address=str(next(hosts)), server=s) for s in servers)
    Operation.objects.bulk_create(
        Operation(server=servers[i % 1000], kind="start", status="succeeded", output="ok") for i in range(10_000)
    )
    return alice, operator


@pytest.mark.parametrize(
    "who, url_name",
    [("alice", "server_list"), ("alice", "server_list_rows"), ("operator", "op_servers"),
     ("operator", "op_operations"), ("operator", "op_dashboard"), ("operator", "op_approvals"),
     ("operator", "op_audit")],
)
def test_list_pages_make_a_bounded_number_of_queries(client, crowd, django_assert_max_num_queries, who, url_name):
    alice, operator = crowd
    client.force_login(alice if who == "alice" else operator)
    with django_assert_max_num_queries(20):
        response = client.get(reverse(url_name))
    assert response.status_code == 200
    if url_name == "server_list":  # all 250 of alice's tenant, none of the others'
        names = set(re.findall(rb"\bs(\d+)\.example", response.content))
        assert len(names) == 250 and all(int(n) % 4 == 0 for n in names)
