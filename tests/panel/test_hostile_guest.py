"""Data from inside a guest cannot break a page. The guest's root writes its /etc/passwd and
its service directories as he likes; the worker stores as rows only the names the engine's
own validators accept (vservers.models.guest.store_listing) and counts the rest. Tenants read
a plain sentence about those, operators the escaped names. And a name that reaches the
database some other way still renders and still gets working links (GuestNameConverter)."""

from __future__ import annotations

import html
import os
import re
import time

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from tests.panel.routes import OPERATOR_PREFIX, SIGNED_IN, TENANT_PREFIX, all_routes
from vservers import access
from vservers.engine.accounts import Account
from vservers.engine.services import Service as EngineService
from vservers.models import GuestAccount, OperationKind, OperationStatus, Service, State, VirtualServer
from vservers.models.guest import MAX_ROWS, UnlistedEntries, sample, store_listing

# Account names no engine validator accepts. A passwd name cannot hold a newline (the file is
# one account a line); the service directories below carry that one.
HOSTILE_ACCOUNTS = [
    b"/",
    b"..",
    b"a/../b",
    b"<img src=x onerror=alert(1)>",
    b"n" * 300,
    b"\xff\xfebad",  # not UTF-8
    b"ctl\x1b[31mred",
    b"tab\there",
]
# Service directories: a name cannot hold "/" or be "..", but anything else goes.
HOSTILE_SERVICES = [
    b"nl\nname",
    b"<b>bold",
    b"q\"'&amp;",
    b"y" * 250,
    b"svc\xff\xfe",  # not UTF-8
    b"-rf",
    b"Upper",
]
# Accounts the engine accepts but with a home and a shell no page may show raw.
ODD_FIELDS = [
    b"dave:x:1500:1500::/home/<i>dave</i>:/bin/sh",
    b"erin:x:1501:1501::/home/erin\x01<script>:/bin/sh\x00",
    # Not accounts at all (uids that pass str.isdigit() but not int()): skipped, not a crash.
    b"sup:x:\xc2\xb2:1::/:/bin/sh",
    b"long:x:" + b"9" * 5000 + b":1::/:/bin/sh",
]
EXTRA_ACCOUNTS = 250  # valid ones, more than MAX_ROWS with the template's own
# What the guest sent that must never reach a page as it is (HTML, control characters).
NEVER_RAW = ["<img", "<b>bold", "<i>dave", "<script>", "q\"'&amp;", "\x1b", "tab\there", "nl\nname", "\x01"]
ACCOUNTS_SENTENCE = f"{len(HOSTILE_ACCOUNTS)} accounts in the server have names the panel cannot show; " \
                    "manage them from inside the server."
SERVICES_SENTENCE = f"{len(HOSTILE_SERVICES)} services in the server have names the panel cannot show; " \
                    "manage them from inside the server."
BEYOND_SENTENCE = f"The panel lists only the first {MAX_ROWS} accounts of a server"


def _text(content: bytes) -> str:
    """A page's text with runs of white space as one blank, as a reader sees it."""
    return re.sub(r"\s+", " ", content.decode())


def _pages(client: Client, routes, values: dict) -> dict[str, bytes]:
    """GET every URL of ROUTES, plainly and as a live page's poll does; the bodies by URL. None may fail."""
    pages = {}
    for route in routes:
        for url in route.urls(values):
            for headers in ({}, {"X-Live": "1"}):
                response = client.get(url, headers=headers)
                assert response.status_code < 500, f"GET {url} {headers}: {response.status_code}"
                assert b"\xff" not in response.content, url
                pages[f"{url} {headers}"] = response.content
    return pages


@pytest.mark.slow
def test_hostile_names_in_a_real_guest_break_no_page(world, provision, drain):
    server = provision("web")
    engine, name = world.engine, server.engine_name

    # 1. From inside the guest: accounts appended to its /etc/passwd, directories made in
    #    its service directory (names as argv: the exec path passes them as bytes).
    lines = [b"carol:x:1001:1001::/home/carol:/bin/sh", *ODD_FIELDS]
    lines += [raw + b":x:%d:%d::/home/x:/bin/sh" % (1100 + i, 1100 + i) for i, raw in enumerate(HOSTILE_ACCOUNTS)]
    lines += [b"u%03d:x:%d:%d::/home/u:/bin/sh" % (i, 2000 + i, 2000 + i) for i in range(EXTRA_ACCOUNTS)]
    result = engine.run(name, ["/bin/sh", "-c", "cat >> /etc/passwd"], input=b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr
    result = engine.run(name, ["/bin/sh", "-c", 'cd /etc/service && for n; do mkdir -- "$n"; done', "sh",
                               *(os.fsdecode(raw) for raw in HOSTILE_SERVICES)])
    assert result.returncode == 0, result.stderr

    # 2. The tenant asks for a refresh; the real worker runs it.
    alice = Client(raise_request_exception=False)
    alice.force_login(world.alice)
    response = alice.post(reverse("server_action", args=[server.uuid, "refresh"]))
    assert response.status_code == 302
    drain()
    operation = server.operations.filter(kind=OperationKind.REFRESH).get()
    assert operation.status == OperationStatus.SUCCEEDED, operation.error + "\n" + operation.output

    names = set(GuestAccount.objects.filter(server=server).values_list("name", flat=True))
    assert {"root", "carol", "dave", "erin"} <= names and len(names) == MAX_ROWS
    assert not names & {"sup", "long"}
    assert GuestAccount.objects.get(server=server, name="erin").home == ascii("/home/erin\x01<script>")
    assert "httpd" in set(Service.objects.filter(server=server).values_list("name", flat=True))
    accounts = UnlistedEntries.objects.get(server=server, kind="accounts")
    assert accounts.refused == len(HOSTILE_ACCOUNTS) and accounts.beyond > 0
    services = UnlistedEntries.objects.get(server=server, kind="services")
    assert (services.refused, services.beyond) == (len(HOSTILE_SERVICES), 0)

    # 3. Every page of the tenant and of the operator, and their fragments.
    values = {
        "uuid": [server.uuid, world.acme.uuid, world.small.uuid],
        "operation": [server.operations.order_by("pk").first().uuid],  # operation_retry's
        "backup": [server.uuid],  # no backup of it: the backups' pages answer 404
        "pk": [world.pool.pk],
        "name": ["carol", "httpd", "busybox"],
        "kind": ["refresh"],
        "action": ["restart"],
        "decision": ["approve"],
        "user_id": [world.alice.pk],
    }
    routes = [r for r in all_routes() if r.name != "logout"]
    tenant_routes = [r for r in routes if r.route.startswith(TENANT_PREFIX) or r.name in SIGNED_IN]
    operator_routes = tenant_routes + [r for r in routes if r.route.startswith(OPERATOR_PREFIX)]
    operator = Client(raise_request_exception=False)
    operator.force_login(world.operator)
    tenant_pages = _pages(alice, tenant_routes, values)
    operator_pages = _pages(operator, operator_routes, values)
    for url, content in {**tenant_pages, **operator_pages}.items():
        for raw in NEVER_RAW:
            assert raw not in content.decode(), f"{raw!r} unescaped in {url}"

    # 4. The tenant reads a sentence, and nothing of the names.
    detail = _text(alice.get(reverse("server_detail", args=[server.uuid])).content)
    poll = _text(alice.get(reverse("server_detail", args=[server.uuid]), headers={"X-Live": "1"}).content)
    for page in (detail, poll):
        assert ACCOUNTS_SENTENCE in page and SERVICES_SENTENCE in page and BEYOND_SENTENCE in page
        assert "For operators" not in page
    for content in tenant_pages.values():
        assert "a/../b" not in content.decode() and "n" * 41 not in content.decode()

    # 5. The operator reads the names, escaped, on his server page and on the tenant's.
    shown = [sample(raw.decode(errors="replace")) for raw in HOSTILE_ACCOUNTS]
    shown += [sample(os.fsdecode(raw)) for raw in HOSTILE_SERVICES]
    for url in (reverse("op_server_detail", args=[server.uuid]), reverse("server_detail", args=[server.uuid])):
        page = _text(operator.get(url).content)
        assert ACCOUNTS_SENTENCE in page and SERVICES_SENTENCE in page and "For operators" in page
        for text in shown:
            assert escape(text) in page, f"{text} not on {url}"


@pytest.mark.slow
def test_what_the_worker_reads_from_a_guest_is_bounded(world, provision):
    """The guest's root cannot make the worker read without end: /etc/passwd as /dev/zero
    (the host-side read refuses it, and the guest's own `cat` stops at guest.OUTPUT_LIMIT),
    or a service directory of more entries than the engine looks at."""
    from vservers import jobs
    from vservers.engine import EngineError, guest
    from vservers.engine.services import LIST_LIMIT

    server = provision("web")
    engine, name = world.engine, server.engine_name
    script = "cd /etc/service && i=0; while [ $i -lt $1 ]; do mkdir s$i; i=$((i+1)); done; ln -sf /dev/zero /etc/passwd"
    result = engine.run(name, ["/bin/sh", "-c", script, "sh", str(LIST_LIMIT + 100)])
    assert result.returncode == 0, result.stderr

    started = time.monotonic()
    with pytest.raises(EngineError, match=f"more than {guest.OUTPUT_LIMIT} bytes"):
        jobs.store_accounts(server, engine)
    assert time.monotonic() - started < 10
    assert len(engine.services(name).list_from_files()) == LIST_LIMIT
    stored = jobs.store_services(server, engine)
    assert len(stored) == MAX_ROWS
    assert UnlistedEntries.objects.get(server=server, kind="services").beyond == LIST_LIMIT - MAX_ROWS


# -- without a guest: the rules, and names that got into the database some other way --------


def test_only_names_the_engine_accepts_become_rows(offline_world):
    w = offline_world
    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.example", plan=w.small,
                                          template=w.busybox, node=w.node, state=State.RUNNING)
    hostile = [raw.decode(errors="replace") for raw in HOSTILE_ACCOUNTS]
    listing = [Account(n, 1100 + i, 1100 + i, "/", "/bin/sh") for i, n in enumerate(hostile)]
    listing += [Account(f"u{i:03}", 2000 + i, 2000 + i, "/home/\x00", "/bin/sh") for i in range(MAX_ROWS + 5)]
    listing.append(Account("big", 2**32 - 2, 1, "/", "/bin/sh"))  # a uid no integer column holds

    stored = store_listing(server, GuestAccount, listing)

    assert [a.name for a in stored] == [f"u{i:03}" for i in range(MAX_ROWS)]
    assert GuestAccount.objects.filter(server=server).count() == MAX_ROWS
    assert GuestAccount.objects.filter(server=server).first().home == ascii("/home/\x00")
    unlisted = UnlistedEntries.objects.get(server=server, kind="accounts")
    assert (unlisted.refused, unlisted.beyond) == (len(HOSTILE_ACCOUNTS) + 1, 5)
    assert unlisted.samples[:3] == ["'/'", "'..'", "'a/../b'"]
    assert all(s.isascii() and s.isprintable() for s in unlisted.samples)
    assert unlisted.samples[4] == "'" + "n" * 40 + "' (the first 40 of 300 characters)"

    # The next listing replaces both; one the guest fixed leaves no note behind.
    services = [EngineService(os.fsdecode(raw), "running", 2**40, 2**70) for raw in HOSTILE_SERVICES]
    services.append(EngineService("httpd", "running", 2**40, 2**70))  # a status file can claim any pid
    assert [s.name for s in store_listing(server, Service, services)] == ["httpd"]
    httpd = Service.objects.get(server=server)
    assert (httpd.pid, httpd.seconds) == (None, None)
    assert UnlistedEntries.objects.get(server=server, kind="services").refused == len(HOSTILE_SERVICES)
    store_listing(server, GuestAccount, [Account("root", 0, 0, "/root", "/bin/sh")])
    assert not UnlistedEntries.objects.filter(server=server, kind="accounts").exists()


@pytest.mark.parametrize("name", ["a/../b", "/", "..", ".", "x\ny", "<b>&\"'", "%2F", "add", "getty@tty1"])
def test_any_stored_name_still_renders_and_links_to_its_row(offline_world, name):
    """Rows the worker would never write: the page renders, and each of its forms reaches the
    row it was made for (the view then refuses a name the engine would not act on)."""
    w = offline_world
    server = VirtualServer.objects.create(tenant=w.acme, name="web", hostname="web.acme.example", plan=w.small,
                                          template=w.busybox, node=w.node, state=State.RUNNING)
    account = GuestAccount(server=server, name=name, uid=1000, home="/")
    account.shell = "/bin/sh"  # an attribute: ruff's S604 reads a shell= keyword as subprocess's
    account.save()
    Service.objects.create(server=server, name=name, state="running", pid=1)
    client = Client(raise_request_exception=False)
    client.force_login(w.alice)

    page = client.get(reverse("server_detail", args=[server.uuid]))

    assert page.status_code == 200
    assert "<b>&" not in page.content.decode()
    found = re.findall(r'action="(/servers/[^"]*/(?:accounts|services)/[^"]*)"', page.content.decode())
    # Without the forms' section anchor (#accounts), which the browser keeps to itself.
    actions = [html.unescape(url).split("#")[0] for url in found]
    actions = [url for url in actions if not url.endswith("/accounts/add/")]
    # The account's password and key, and its delete where the engine would delete an account
    # of that name (access.deletable); the service's restart and stop.
    assert len(actions) == (5 if access.deletable(account) else 4)
    assert access.deletable(account) == (name == "add")
    for url in actions:
        # One path segment for the name, whatever it holds: no "/", and no "." or ".." step
        # for a browser to take.
        assert "/../" not in url and "/./" not in url and url.count("/") == 6, url
        # 403: the view found the row (else 404), and the engine's validator refused its
        # name; a name the engine takes is queued (302) or its empty form shown again (200).
        assert client.post(url).status_code in (200, 302, 403), url
    assert {name} == {op.params.get("account", op.params.get("service")) for op in w.queued} or not w.queued
    assert bool(w.queued) == (name in ("add", "getty@tty1"))


def test_names_that_cannot_be_stored_still_reverse():
    for name in ("svc\udcff", "\x00", "a" * 300):
        url = reverse("service_action", args=["8d4b5f36-9c7e-4b1a-9a51-0d1c8e7f6a21", name, "start"])
        assert url.count("/") == 6, url
