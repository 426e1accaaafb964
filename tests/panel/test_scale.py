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
# What panel.js sends with a live page's poll (vservers/views/live.py).
POLL = {"X-Live": "1"}


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


# Each page against the same crowd, in one test: making the crowd (1,000 servers, 10,000
# operations) took 2.6 s, once per page as parameters.
LIST_PAGES = [("alice", "server_list"), ("operator", "op_servers"), ("operator", "op_operations"),
              ("operator", "op_dashboard"), ("operator", "op_approvals"), ("operator", "op_audit")]


def test_list_pages_make_a_bounded_number_of_queries(client, crowd, django_assert_max_num_queries):
    alice, operator = crowd
    for who, url_name in LIST_PAGES:
        client.force_login(alice if who == "alice" else operator)
        with django_assert_max_num_queries(20, info=f"{url_name} as {who}"):
            response = client.get(reverse(url_name))
        assert response.status_code == 200, (who, url_name)
        if url_name == "server_list":  # the first page of alice's tenant's 250, none of the others'
            names = set(re.findall(rb"\bs(\d+)\.example", response.content))
            assert len(names) == 50 and all(int(n) % 4 == 0 for n in names)


# -- paged lists: a page holds PER_PAGE rows, whatever the number of servers ------------------


def _crowd_names(content: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"\bs(\d+)\.example", content)]


def test_the_tenant_list_is_paged(client, crowd, django_assert_max_num_queries):
    from vservers.views.tenant import PER_PAGE

    alice, _operator = crowd
    client.force_login(alice)
    seen = []
    for number in range(1, 6):
        # 14: the page's rows take four queries (views.tenant.lists.server_page), the CPU
        # sparklines' one among them; the quota meter one more for the snapshots' space.
        with django_assert_max_num_queries(14):
            response = client.get(reverse("server_list"), {"page": number})
        names = _crowd_names(response.content)
        assert len(names) == PER_PAGE and all(n % 4 == 0 for n in names)
        assert f"page {number} of 5" in response.content.decode()
        seen += names
    assert len(set(seen)) == 250  # the pages add up to every server of alice's, once each
    # Out of range: the last page; not a number: the first.
    assert _crowd_names(client.get(reverse("server_list"), {"page": 99}).content) == seen[-PER_PAGE:]
    assert _crowd_names(client.get(reverse("server_list"), {"page": "x"}).content) == seen[:PER_PAGE]


def test_a_page_of_the_list_polls_itself(client, crowd, django_assert_max_num_queries):
    alice, _operator = crowd
    client.force_login(alice)
    page = client.get(reverse("server_list"), {"page": 3}).content.decode()
    poll = re.search(r'data-live-url="([^"]+)"', page)[1]
    assert poll == reverse("server_list") + "?page=3"
    with django_assert_max_num_queries(14):
        rows = client.get(poll, headers=POLL)
    assert rows.status_code == 200
    assert _crowd_names(rows.content) == _crowd_names(page.encode())
    assert 'data-live-url="/servers/?page=3"' in rows.content.decode()  # it polls the same page again
    assert rows.content.count(b"<tr") == 51  # 50 rows and the head


def test_operators_get_the_list_paged_too(client, crowd, django_assert_max_num_queries):
    _alice, operator = crowd
    client.force_login(operator)
    with django_assert_max_num_queries(12):
        response = client.get(reverse("server_list"))
    names = _crowd_names(response.content)
    assert len(names) == 50
    assert {n % 4 for n in names} == {0}  # tenant T0 comes first in the list's order
    assert "page 1 of 20" in response.content.decode()
    last = client.get(reverse("server_list"), {"page": 20})
    assert len(_crowd_names(last.content)) == 50 and b"T3" in last.content


def test_an_unchanged_poll_is_a_304_after_one_query_of_its_own(client, crowd, django_assert_max_num_queries):
    """panel.js asks with If-None-Match; while nothing changed, the answer has no body and
    the view makes one query (the others are the session's, the user's and her role's)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    alice, _operator = crowd
    client.force_login(alice)
    url = reverse("server_list")
    first = client.get(url, headers=POLL)
    etag = first["ETag"]
    assert first.status_code == 200 and etag
    with CaptureQueriesContext(connection) as captured:
        again = client.get(url, headers={**POLL, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == etag
    ours = [q["sql"] for q in captured.captured_queries if "vservers_virtualserver" in q["sql"]]
    assert len(ours) == 1 and "LIMIT" not in ours[0]  # the aggregate, no rows
    assert len(captured.captured_queries) <= 5
    # Another page has another ETag.
    assert client.get(url, {"page": 2}, headers={**POLL, "If-None-Match": etag}).status_code == 200


def _poll(client, etag):
    return client.get(reverse("server_list"), headers={**POLL, "If-None-Match": etag})


def test_a_poll_brings_what_changed(client, crowd):
    """Whatever a row shows moves the ETag: a state change, a usage sample, an address, a plan
    change request, a new or a deleted server."""
    from django.utils import timezone

    alice, _operator = crowd
    client.force_login(alice)
    etag = client.get(reverse("server_list"), headers=POLL)["ETag"]
    server = VirtualServer.objects.get(name="s0")
    pool, plan = IPPool.objects.get(), Plan.objects.get()
    larger = Plan.objects.create(name="larger", cpus="1", memory_mb=128, disk_mb=256, pids=128)
    Tenant.objects.filter(pk=server.tenant_id).update(max_cpus=1000, max_memory_mb=10**6, max_disk_mb=10**6)
    changes = [
        lambda: server.move([server.state], State.STOPPED, "tested"),
        lambda: VirtualServer.objects.filter(pk=server.pk).update(memory_bytes=5 << 20, sampled_at=timezone.now()),
        lambda: pool.allocate(server),
        lambda: client.post(reverse("plan_change", args=[server.uuid]), {"plan": larger.pk}),
        lambda: server.addresses.first().delete(),
        lambda: VirtualServer.objects.create(tenant=server.tenant, name="new", hostname="new.example", plan=plan,
                                             template=server.template),
        lambda: VirtualServer.objects.get(name="s4").move([State.RUNNING], State.DELETED),
    ]
    for number, change in enumerate(changes):
        change()
        response = _poll(client, etag)
        assert response.status_code == 200, f"change {number}"
        assert response["ETag"] != etag
        etag = response["ETag"]
        assert _poll(client, etag).status_code == 304
    assert b"s4.example" not in response.content and b"new.example" in response.content


def test_a_poll_from_another_user_does_not_match(client, crowd, django_user_model):
    alice, _operator = crowd
    client.force_login(alice)
    etag = client.get(reverse("server_list"), headers=POLL)["ETag"]
    carol = django_user_model.objects.create_user("carol", password="pw-carol-long")
    Membership.objects.create(user=carol, tenant=Tenant.objects.get(slug="t0"), role=Membership.READONLY)
    client.force_login(carol)
    response = _poll(client, etag)
    assert response.status_code == 200  # the same servers, but another user: the ETag differs
