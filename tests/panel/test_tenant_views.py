"""The tenant's area (/servers/): alice (acme's admin) manages acme's servers, bob (globex's
admin) his own, ro (acme, read-only) only looks, charlie belongs to no tenant.

The queue is the outside world for a view: `enqueue` is replaced by a recorder, so these
tests need neither Redis nor the kernel (the worker's tests run the real queue)."""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from urllib.parse import quote

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import AuditEntry, Membership, Tenant
from vservers.models import (
    GuestAccount,
    Operation,
    OperationKind,
    OperationStatus,
    Service,
    State,
    VirtualServer,
)
from vservers.passwords import matches

LOGIN = "/accounts/login/"
PASSWORD = "s3cret-Passw0rd"

# What the views queue goes to conftest's recorder, never to Redis, in every test here.
pytestmark = pytest.mark.usefixtures("queued")


def ssh_key(key_type: str = "ssh-ed25519", comment: str = "alice@laptop") -> str:
    """A well-formed OpenSSH public key line (the blob names its own type)."""
    name = key_type.encode()
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes(range(32))
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}"


def make_server(world, tenant, name, state=State.RUNNING, plan=None, **fields) -> VirtualServer:
    server = VirtualServer.objects.create(
        tenant=tenant,
        name=name,
        hostname=f"{name}.{tenant.slug}.example",
        plan=plan or world.small,
        template=world.busybox,
        node=world.node,
        state=state,
        **fields,
    )
    if state not in (State.REQUESTED, State.REJECTED, State.DELETED):
        world.pool.allocate(server)
    return server


def guest_account(server, name, uid, home, login_shell, is_system=False) -> GuestAccount:
    account = GuestAccount(server=server, name=name, uid=uid, home=home, is_system=is_system)
    account.shell = login_shell  # (an attribute, not a keyword: ruff's S604 reads shell= as subprocess's)
    account.save()
    return account


@pytest.fixture
def offline_pool():
    """A /18, as the detail page shows the prefix."""
    return {"name": "panel-test", "network": "198.19.128.0/18", "gateway": "198.19.128.1"}


@pytest.fixture
def offline_plans():
    """small (its 512 MB count against the quotas), large, and a retired plan."""
    return {
        "small": {"cpus": Decimal("0.5"), "memory_mb": 512, "disk_mb": 2048, "pids": 128},
        "large": {"cpus": Decimal("2"), "memory_mb": 2048, "disk_mb": 8192, "pids": 512},
        "retired": {"cpus": 1, "memory_mb": 256, "disk_mb": 1024, "is_active": False},
    }


@pytest.fixture
def world(offline_world, django_user_model):
    """conftest's offline_world with this file's pool and plans (above), plus ro (acme, read
    only) and charlie (no tenant), and two servers: acme's web (with usage, accounts root,
    daemon and carol, service sshd) and globex's db (account dave, service postgres). The tests
    sign in with force_login."""
    w = offline_world

    w.ro = django_user_model.objects.create_user("ro", "ro@example.com", None)  # force_login: no password
    Membership.objects.create(user=w.ro, tenant=w.acme, role=Membership.READONLY)
    w.charlie = django_user_model.objects.create_user("charlie", "charlie@example.com", None)

    w.web = make_server(
        w,
        w.acme,
        "web",
        cpu_seconds=12.5,
        memory_bytes=64 * 2**20,
        pids=7,
        disk_used_bytes=300 * 2**20,
        sampled_at=timezone.now(),
    )
    # As the engine lists it: root (uid 0) is no system account (engine.accounts.Account.is_system).
    guest_account(w.web, "root", 0, "/root", "/bin/sh")
    guest_account(w.web, "daemon", 1, "/usr/sbin", "/bin/false", is_system=True)
    guest_account(w.web, "carol", 1000, "/home/carol", "/bin/sh")
    Service.objects.create(server=w.web, name="sshd", state="running", pid=42, seconds=3600)
    w.db = make_server(w, w.globex, "db")
    guest_account(w.db, "dave", 1000, "/home/dave", "/bin/sh")
    Service.objects.create(server=w.db, name="postgres", state="running", pid=50, seconds=60)
    return w


def login(client, user) -> Client:
    client.force_login(user)
    return client


def url(server, suffix: str = "") -> str:
    return f"/servers/{server.uuid}/{suffix}"


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# What panel.js sends with a live page's poll (vservers/views/live.py).
POLL = {"X-Live": "1"}


# -- anonymous users ------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, POLL])
def test_it_sends_anonymous_users_to_login(client, world, headers):
    response = client.get(url(world.web), headers=headers)
    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN}?next=/servers/")


@pytest.mark.parametrize("path", ["/servers/", "/servers/?page=2", "/servers/new/"])
def test_it_sends_anonymous_users_to_login_from_list_pages(client, world, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next={quote(path, safe='/')}"


@pytest.mark.parametrize(
    "suffix", ["action/start/", "accounts/add/", "accounts/carol/delete/", "services/sshd/stop/", "plan/"]
)
def test_anonymous_posts_do_nothing(client, world, queued, suffix):
    response = client.post(url(world.web, suffix), {"password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert not Operation.objects.exists()
    assert queued == []


def test_a_poll_after_the_session_ended_sends_the_page_to_login(client, world):
    """A live page polls its own URL: the login redirect brings the user back to it (panel.js
    follows a redirected poll)."""
    response = client.get("/servers/", headers={**POLL, "If-None-Match": '"anything"'})
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/servers/"


# -- the list -------------------------------------------------------------------------------


def test_list_shows_only_own_servers(client, world):
    response = login(client, world.alice).get("/servers/")
    assert response.status_code == 200
    body = response.content.decode()
    assert url(world.web) in body
    assert "web.acme.example" in body
    assert world.web.ip_list()[0] in body
    assert "db.globex.example" not in body
    assert url(world.db) not in body
    assert world.db.ip_list()[0] not in body
    # A live page: it polls itself, and its table is a region panel.js morphs in place.
    assert 'data-live-url="/servers/"' in body and re.search(r'data-live-etag="&quot;\w{32}&quot;"', body)
    assert '<div id="server-list" data-live>' in body
    assert "hx-get" not in body and "hx-trigger" not in body


def test_a_poll_of_the_list_shows_only_own_servers(client, world):
    response = login(client, world.bob).get("/servers/", headers=POLL)
    assert response.status_code == 200 and response["ETag"]
    body = response.content.decode()
    assert url(world.db) in body
    assert url(world.web) not in body


def test_list_shows_state_plan_template_and_usage(client, world):
    body = login(client, world.alice).get("/servers/").content.decode()
    assert 'class="badge state-running"' in body
    assert "small" in body and "BusyBox" in body
    assert "64.0\xa0MB" in body  # memory used of the plan's 512 MB
    assert "Request a server" in body


def test_list_hides_deleted_and_rejected_servers(client, world):
    make_server(world, world.acme, "gone", state=State.DELETED)
    make_server(world, world.acme, "nope", state=State.REJECTED)
    body = login(client, world.alice).get("/servers/").content.decode()
    assert "gone.acme.example" not in body
    assert "nope.acme.example" not in body


def test_home_is_the_server_list(client, world):
    response = login(client, world.alice).get("/")
    assert response.status_code == 200
    assert url(world.web) in response.content.decode()


def test_a_user_without_tenant_gets_a_page_saying_so(client, world):
    login(client, world.charlie)
    for path in ("/servers/", "/servers/new/"):
        response = client.get(path)
        assert response.status_code == 200
        assert b"does not belong to a customer account" in response.content
        assert url(world.web).encode() not in response.content
    response = client.post("/servers/new/", {"name": "x", "hostname": "x.example", "plan": world.small.pk})
    assert response.status_code == 200
    assert not VirtualServer.objects.filter(name="x").exists()
    assert client.get(url(world.web)).status_code == 404


def test_operators_see_every_server_and_the_operator_link(client, world):
    body = login(client, world.operator).get("/servers/").content.decode()
    assert url(world.web) in body and url(world.db) in body
    assert 'href="/operator/"' in body
    assert "Globex" in body  # the tenant column


def test_tenant_admins_get_no_operator_link(client, world):
    assert b'href="/operator/"' not in login(client, world.alice).get("/servers/").content


def test_pages_load_htmx_from_our_own_static_files_and_send_the_csrf_header(client, world):
    body = login(client, world.alice).get("/servers/").content.decode()
    assert '<script src="/static/vendor/htmx.min.js" defer></script>' in body
    assert '<script src="/static/vendor/idiomorph.min.js" defer></script>' in body
    assert re.search(r"""<body hx-headers='\{"X-CSRFToken": "\w+"\}' data-live-url=""", body)
    # No script or style from elsewhere (attributes only: a random CSRF token may spell "cdn").
    assert not re.search(r"""(src|href)=["'][^"']*(//|unpkg|cdn)""", body, re.IGNORECASE)


@pytest.mark.parametrize("path", ["/servers/", "/"])
def test_list_queries_do_not_grow_with_the_number_of_servers(client, world, django_assert_max_num_queries, path):
    login(client, world.alice)
    for i in range(5):
        make_server(world, world.acme, f"few-{i}", sampled_at=timezone.now())
    with CaptureQueriesContext(connection) as few:
        assert client.get(path).status_code == 200
    for i in range(45):
        make_server(world, world.acme, f"many-{i}", plan=world.large)
    assert VirtualServer.objects.filter(tenant=world.acme).count() == 51
    with django_assert_max_num_queries(len(few)):
        response = client.get(path)
    assert response.content.decode().count('class="badge state-running"') == 50  # a page
    with django_assert_max_num_queries(len(few)):
        response = client.get(path, {"page": "2"})
    assert response.content.decode().count('class="badge state-running"') == 1


# -- requesting a server --------------------------------------------------------------------


def request_server(client, **overrides):
    data = {"name": "api", "hostname": "api.acme.example", "plan": "", "template": ""}
    data.update(overrides)
    return client.post("/servers/new/", data)


def test_request_form_offers_only_active_plans(client, world):
    body = login(client, world.alice).get("/servers/new/").content.decode()
    assert "large" in body
    assert "retired" not in body


def test_requesting_creates_a_server_awaiting_approval(client, world, queued):
    login(client, world.alice)
    response = request_server(client, plan=world.small.pk, template=world.busybox.pk)
    server = VirtualServer.objects.get(name="api")
    assert response.status_code == 302
    assert response["Location"] == url(server)
    assert (server.tenant, server.state, server.requested_by) == (world.acme, State.REQUESTED, world.alice)
    assert (server.hostname, server.plan, server.node) == ("api.acme.example", world.small, None)
    assert not server.addresses.exists()  # addresses come with the operator's approval
    assert queued == []
    entry = AuditEntry.objects.get(action="server.request")
    assert (entry.actor, entry.tenant, entry.object_id) == (world.alice, world.acme, str(server.uuid))

    detail = client.get(url(server))
    assert "Requested api" in " ".join(messages_of(detail))
    assert b"Waiting for an operator" in detail.content


@pytest.mark.both_databases
def test_request_respects_the_server_count_quota(client, world):
    Tenant.objects.filter(pk=world.acme.pk).update(max_servers=1)
    response = request_server(login(client, world.alice), plan=world.small.pk, template=world.busybox.pk)
    assert response.status_code == 200
    assert "exceed the limit of 1" in response.content.decode()
    assert not VirtualServer.objects.filter(name="api").exists()


@pytest.mark.both_databases
def test_request_respects_the_memory_quota_summed_over_live_servers(client, world):
    Tenant.objects.filter(pk=world.acme.pk).update(max_memory_mb=2048)  # web takes 512 already
    login(client, world.alice)
    response = request_server(client, plan=world.large.pk, template=world.busybox.pk)
    assert response.status_code == 200
    assert "memory would add up to 2560 MB of at most 2048 MB" in response.content.decode()
    # A deleted server counts for nothing.
    VirtualServer.objects.filter(pk=world.web.pk).update(state=State.DELETED)
    response = request_server(client, plan=world.large.pk, template=world.busybox.pk)
    assert response.status_code == 302


def test_request_needs_a_name_unique_among_live_servers(client, world):
    login(client, world.alice)
    response = request_server(client, name="web", plan=world.small.pk, template=world.busybox.pk)
    assert response.status_code == 200
    assert "You already have a server named" in response.content.decode()
    # A name of a deleted server may be used again, and another tenant's name never mattered.
    VirtualServer.objects.filter(pk=world.web.pk).update(state=State.DELETED)
    assert request_server(client, name="web", plan=world.small.pk, template=world.busybox.pk).status_code == 302
    assert request_server(login(client, world.bob), name="web", plan=world.small.pk, template=world.busybox.pk)[
        "Location"
    ].startswith("/servers/")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hostname", "bad_host!.example", "Invalid hostname"),
        ("hostname", "-lead.example", "Invalid hostname"),
        ("name", "Web Server", "Invalid server name"),
        ("name", "9lives", "Invalid server name"),
        ("name", "trailing-", "Invalid server name"),
    ],
)
def test_request_shows_field_errors_for_bad_input(client, world, field, value, message):
    response = request_server(
        login(client, world.alice), plan=world.small.pk, template=world.busybox.pk, **{field: value}
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert 'class="field has-error"' in response.content.decode()


def test_request_refuses_an_inactive_plan(client, world):
    response = request_server(login(client, world.alice), plan=world.retired.pk, template=world.busybox.pk)
    assert response.status_code == 200
    assert "plan" in response.context["form"].errors


def test_hostnames_are_taken_in_lower_case(client, world):
    request_server(
        login(client, world.alice), hostname="API.Acme.Example", plan=world.small.pk, template=world.busybox.pk
    )
    assert VirtualServer.objects.get(name="api").hostname == "api.acme.example"


# -- one server: access ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "state/", "operations/"])
def test_another_tenants_server_is_not_found(client, world, suffix):
    assert login(client, world.alice).get(url(world.db, suffix)).status_code == 404
    assert login(client, world.charlie).get(url(world.db, suffix)).status_code == 404


@pytest.mark.parametrize(
    "suffix",
    [
        "action/start/",
        "action/delete/",
        "accounts/add/",
        "accounts/dave/delete/",
        "accounts/dave/password/",
        "accounts/dave/key/",
        "services/postgres/stop/",
        "plan/",
    ],
)
def test_posts_to_another_tenants_server_are_not_found(client, world, queued, suffix):
    data = {
        "user": "eve",
        "password": PASSWORD,
        "ssh_key": ssh_key(),
        "pw-dave-password": PASSWORD,
        "key-dave-ssh_key": ssh_key(),
        "plan": world.large.pk,
    }
    assert login(client, world.alice).post(url(world.db, suffix), data).status_code == 404
    assert not Operation.objects.exists()
    assert queued == []
    world.db.refresh_from_db()
    assert world.db.requested_plan is None


def test_a_poll_for_a_server_that_is_gone_sends_the_page_to_the_list(client, world):
    login(client, world.alice)
    page = client.get(url(world.web))
    VirtualServer.objects.filter(pk=world.web.pk).update(state=State.DELETED)
    response = client.get(url(world.web), headers={**POLL, "If-None-Match": page["ETag"]})
    assert response.status_code == 404
    assert response["X-Live-Gone"] == "/servers/"
    # Another tenant's server is just as gone for her.
    assert client.get(url(world.db), headers=POLL)["X-Live-Gone"] == "/servers/"
    assert client.get(url(world.db)).status_code == 404  # not a poll: the 404 page


def test_a_deleted_server_is_not_found(client, world):
    VirtualServer.objects.filter(pk=world.web.pk).update(state=State.DELETED)
    assert login(client, world.alice).get(url(world.web)).status_code == 404


def test_operators_may_open_any_server(client, world):
    assert login(client, world.operator).get(url(world.db)).status_code == 200


# -- one server: the page and its fragments -------------------------------------------------


def test_detail_shows_state_addresses_plan_usage_accounts_and_services(client, world):
    response = login(client, world.alice).get(url(world.web))
    assert response.status_code == 200
    body = response.content.decode()
    assert f"{world.web.ip_list()[0]}/18" in body
    assert 'class="badge state-running"' in body
    assert f'data-live-url="{url(world.web)}"' in body
    for region in ("server-state", "server-details", "accounts", "services", "operations"):
        assert re.search(rf'<section class="card[\w ]*" id="{region}" data-live>', body), region
    assert "12.5 s" in body  # cpu seconds
    assert re.search(r'Processes</span>\s*<span class="meter-value">7 <span class="muted">/ 128</span>', body)
    assert "Measured just now." in body
    assert "carol" in body and "/home/carol" in body
    assert "sshd" in body and "1 h" in body
    for kind in ("stop", "restart", "refresh", "delete"):
        assert f'action="{url(world.web, f"action/{kind}/")}"' in body
    assert f'action="{url(world.web, "action/start/")}"' not in body  # already running
    assert f'action="{url(world.web, "accounts/carol/delete/")}"' in body
    assert f'action="{url(world.web, "accounts/root/delete/")}' not in body  # the engine reserves the name
    # (the forms post to their section's anchor, where the answer lands without script)
    assert f'action="{url(world.web, "accounts/root/password/")}#accounts"' in body  # but root may get a password
    assert f'action="{url(world.web, "accounts/daemon/password/")}' not in body
    # The add form's fields are the only ones named plainly: each row's forms carry a prefix.
    assert body.count('name="password"') == 1
    assert 'name="pw-carol-password"' in body and 'name="key-carol-ssh_key"' in body
    # A running service can be stopped or restarted, not started.
    assert f'action="{url(world.web, "services/sshd/stop/")}"' in body
    assert f'action="{url(world.web, "services/sshd/start/")}"' not in body


def test_a_poll_brings_a_readable_error(client, world):
    login(client, world.alice)
    etag = client.get(url(world.web))["ETag"]
    world.web.fail("provisioning failed: no space left on device")
    response = client.get(url(world.web), headers={**POLL, "If-None-Match": etag})
    assert response.status_code == 200
    body = response.content.decode()
    assert 'class="badge state-error"' in body
    assert 'data-announce="web is now error"' in body
    assert "no space left on device" in body
    assert f'action="{url(world.web, "action/start/")}"' in body  # a retry from error


def test_a_poll_follows_an_operation_and_the_lists_it_changes(client, world):
    """Queued, started, finished: each moves the page's ETag, and so does the listing the
    worker stores after it; between them a poll is a 304."""
    login(client, world.alice)
    etag = client.get(url(world.web))["ETag"]

    def poll():
        nonlocal etag
        response = client.get(url(world.web), headers={**POLL, "If-None-Match": etag})
        if response.status_code == 200:
            assert response["ETag"] != etag
            etag = response["ETag"]
        return response

    op = Operation.objects.create(server=world.web, kind=OperationKind.START, requested_by=world.alice)
    assert 'data-announce="Start: queued"' in poll().content.decode()
    assert poll().status_code == 304
    op.claim()
    assert 'data-announce="Start: running"' in poll().content.decode()
    op.finish(False, output="step 1\n", error="engine: the template busybox is missing")
    body = poll().content.decode()
    assert "the template busybox is missing" in body and 'data-announce="Start: failed"' in body
    assert poll().status_code == 304
    Service.objects.filter(server=world.web).delete()
    Service.objects.create(server=world.web, name="crond", state="running", pid=9, seconds=5)
    body = poll().content.decode()
    assert "crond" in body and "sshd" not in body
    guest_account(world.web, "erin", 1005, "/home/erin", "/bin/sh")
    assert "/home/erin" in poll().content.decode()
    assert poll().status_code == 304


def test_history_shows_the_last_twenty_operations(client, world):
    for _ in range(25):
        Operation.objects.create(server=world.web, kind=OperationKind.REFRESH, status=OperationStatus.SUCCEEDED)
    response = login(client, world.alice).get(url(world.web))
    assert len(response.context["operations"]) == 20


# -- one server: actions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "state", "kind"),
    [
        ("start", State.STOPPED, OperationKind.START),
        ("stop", State.RUNNING, OperationKind.STOP),
        ("restart", State.RUNNING, OperationKind.RESTART),
        ("delete", State.RUNNING, OperationKind.DELETE),
        ("delete", State.REQUESTED, OperationKind.DELETE),
        ("refresh", State.RUNNING, OperationKind.REFRESH),
    ],
)
def test_server_actions_queue_an_operation(client, world, queued, action, state, kind):
    VirtualServer.objects.filter(pk=world.web.pk).update(state=state)
    response = login(client, world.alice).post(url(world.web, f"action/{action}/"))
    assert response.status_code == 302
    assert response["Location"] == url(world.web)
    op = Operation.objects.get()
    assert (op.server, op.kind, op.params, op.requested_by) == (world.web, kind, {}, world.alice)
    assert queued == [op]
    assert AuditEntry.objects.filter(action=f"server.{kind}", object_id=str(world.web.uuid)).exists()


def test_a_refused_action_shows_why_and_queues_nothing(client, world, queued):
    response = login(client, world.alice).post(url(world.web, "action/start/"), follow=True)
    assert response.status_code == 200
    assert "web: cannot start while the server is running." in messages_of(response)
    assert not Operation.objects.exists()
    assert queued == []


def test_an_unknown_action_is_not_found(client, world):
    assert login(client, world.alice).post(url(world.web, "action/reboot-host/")).status_code == 404


@pytest.mark.parametrize("suffix", ["action/stop/", "accounts/add/", "accounts/carol/delete/", "plan/"])
def test_action_urls_want_post(client, world, suffix):
    assert login(client, world.alice).get(url(world.web, suffix)).status_code == 405


def test_posts_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.alice)
    assert client.post(url(world.web, "action/stop/")).status_code == 403
    assert not Operation.objects.exists()


# -- accounts and services ------------------------------------------------------------------


def test_adding_an_account_queues_it_with_the_password_only_in_the_params(client, world, queued):
    key = ssh_key()
    response = login(client, world.alice).post(
        url(world.web, "accounts/add/"), {"user": "erin", "password": PASSWORD, "ssh_key": key}
    )
    assert response.status_code == 302
    op = Operation.objects.get()
    assert op.kind == OperationKind.ACCOUNT_ADD
    assert op.params == {"account": "erin", "password": PASSWORD, "ssh_key": key}
    assert queued == [op]
    entry = AuditEntry.objects.get(action="server.account_add")
    assert PASSWORD not in str(entry.details)
    assert entry.details["account"] == "erin"

    # The worker's finish() wipes it.
    op.claim()
    op.finish(True, output="added")
    assert op.params == {"account": "erin", "ssh_key": key}


def test_an_account_may_be_added_with_a_key_only(client, world):
    login(client, world.alice).post(url(world.web, "accounts/add/"), {"user": "erin", "ssh_key": ssh_key()})
    assert Operation.objects.get().params == {"account": "erin", "ssh_key": ssh_key()}


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"user": "Erin Smith", "password": PASSWORD}, "user", "Invalid user name"),
        ({"user": "root", "password": PASSWORD}, "user", "is reserved"),
        ({"user": "carol", "password": PASSWORD}, "user", "already has an account named"),
        ({"user": "erin", "password": "short"}, "password", "8-128 characters"),
        ({"user": "erin", "password": "with:colon"}, "password", "must not contain"),
        ({"user": "erin", "ssh_key": "ssh-ed25519 not-base64!"}, "ssh_key", "not valid base64"),
        ({"user": "erin", "ssh_key": "hello world"}, "ssh_key", "key type"),
        ({"user": "erin", "ssh_key": ssh_key().replace("ssh-ed25519", "ssh-rsa", 1)}, "ssh_key", "does not match"),
        ({"user": "erin"}, "__all__", "Give a password, an SSH key, or both"),
    ],
)
def test_adding_an_account_shows_field_errors(client, world, queued, data, field, message):
    response = login(client, world.alice).post(url(world.web, "accounts/add/"), data)
    assert response.status_code == 200
    form = response.context["add_form"]
    assert message in " ".join(form.errors[field])
    body = response.content.decode()
    assert message.replace("'", "&#x27;") in body
    assert PASSWORD not in body  # a password is never sent back
    assert not Operation.objects.exists()
    assert queued == []


def test_deleting_an_account_queues_it(client, world, queued):
    response = login(client, world.alice).post(url(world.web, "accounts/carol/delete/"))
    assert response.status_code == 302
    op = Operation.objects.get()
    assert (op.kind, op.params) == (OperationKind.ACCOUNT_DELETE, {"account": "carol"})
    assert queued == [op]


def test_no_delete_button_for_names_the_engine_reserves(client, world):
    """root, and a user account whose name the engine keeps for itself, would only fail
    ("user name 'root' is reserved"): no Delete button, and a POST is refused at once."""
    guest_account(world.web, "www-data", 1001, "/home/www-data", "/bin/sh")  # not a system uid
    body = login(client, world.alice).get(url(world.web)).content.decode()
    for name in ("root", "www-data"):
        assert f'action="{url(world.web, f"accounts/{name}/delete/")}' not in body
        assert client.post(url(world.web, f"accounts/{name}/delete/")).status_code == 403
    assert f'action="{url(world.web, "accounts/carol/delete/")}' in body  # the control
    assert f'action="{url(world.web, "accounts/root/password/")}' in body  # root still takes a password
    assert not Operation.objects.exists()


def test_system_accounts_cannot_be_deleted_and_unknown_ones_are_not_found(client, world):
    login(client, world.alice)
    assert client.post(url(world.web, "accounts/root/delete/")).status_code == 403
    assert client.post(url(world.web, "accounts/daemon/password/"), {"pw-daemon-password": PASSWORD}).status_code == 403
    assert client.post(url(world.web, "accounts/nobody-here/delete/")).status_code == 404
    assert client.post(url(world.web, "accounts/dave/delete/")).status_code == 404  # bob's server's account
    assert not Operation.objects.exists()


@pytest.mark.parametrize("name", ["carol", "root"])
def test_setting_a_password_queues_it(client, world, queued, name):
    response = login(client, world.alice).post(
        url(world.web, f"accounts/{name}/password/"), {f"pw-{name}-password": PASSWORD}
    )
    assert response.status_code == 302
    op = Operation.objects.get()
    assert (op.kind, op.params) == (OperationKind.ACCOUNT_PASSWORD, {"account": name, "password": PASSWORD})
    assert queued == [op]
    assert PASSWORD not in str(AuditEntry.objects.get(action="server.account_password").details)


def test_a_bad_password_is_shown_in_its_accounts_row(client, world):
    response = login(client, world.alice).post(url(world.web, "accounts/carol/password/"), {"pw-carol-password": "a:b"})
    assert response.status_code == 200
    row = next(r for r in response.context["account_rows"] if r["account"].name == "carol")
    assert row["open"]
    assert "must be 8-128 characters" in row["password_form"].errors["password"][0]
    assert not Operation.objects.exists()


def test_adding_a_key_queues_it(client, world, queued):
    key = ssh_key("ecdsa-sha2-nistp256")
    response = login(client, world.alice).post(url(world.web, "accounts/carol/key/"), {"key-carol-ssh_key": key})
    assert response.status_code == 302
    op = Operation.objects.get()
    assert (op.kind, op.params) == (OperationKind.ACCOUNT_KEY, {"account": "carol", "ssh_key": key})
    assert queued == [op]


def test_a_bad_key_shows_a_field_error(client, world):
    response = login(client, world.alice).post(
        url(world.web, "accounts/carol/key/"), {"key-carol-ssh_key": "ssh-ed25519"}
    )
    assert response.status_code == 200
    row = next(r for r in response.context["account_rows"] if r["account"].name == "carol")
    assert "key type" in row["key_form"].errors["ssh_key"][0]
    assert "key type" in response.content.decode()


def test_account_changes_need_a_running_server(client, world, queued):
    VirtualServer.objects.filter(pk=world.web.pk).update(state=State.STOPPED)
    response = login(client, world.alice).post(
        url(world.web, "accounts/add/"), {"user": "erin", "password": PASSWORD}, follow=True
    )
    assert "web: cannot add account while the server is stopped." in messages_of(response)
    assert not Operation.objects.exists()


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        ("start", OperationKind.SERVICE_START),
        ("stop", OperationKind.SERVICE_STOP),
        ("restart", OperationKind.SERVICE_RESTART),
    ],
)
def test_service_actions_queue_an_operation(client, world, queued, action, kind):
    response = login(client, world.alice).post(url(world.web, f"services/sshd/{action}/"))
    assert response.status_code == 302
    op = Operation.objects.get()
    assert (op.kind, op.params) == (kind, {"service": "sshd"})
    assert queued == [op]


def test_unknown_services_and_service_actions_are_not_found(client, world):
    login(client, world.alice)
    assert client.post(url(world.web, "services/sshd/kill/")).status_code == 404
    assert client.post(url(world.web, "services/postgres/stop/")).status_code == 404  # bob's
    assert not Operation.objects.exists()


# -- plan changes ---------------------------------------------------------------------------


def test_a_plan_change_is_recorded_for_an_operator(client, world, queued):
    response = login(client, world.alice).post(url(world.web, "plan/"), {"plan": world.large.pk})
    assert response.status_code == 302
    world.web.refresh_from_db()
    assert (world.web.plan, world.web.requested_plan) == (world.small, world.large)
    assert not Operation.objects.exists()  # an operator approves it later
    assert queued == []
    assert AuditEntry.objects.filter(action="server.plan_change_requested").exists()
    assert b"Change to large requested" in client.get(url(world.web)).content

    # Choosing the current plan withdraws the request.
    client.post(url(world.web, "plan/"), {"plan": world.small.pk})
    world.web.refresh_from_db()
    assert world.web.requested_plan is None


@pytest.mark.both_databases
def test_a_plan_change_must_fit_the_quota(client, world):
    Tenant.objects.filter(pk=world.acme.pk).update(max_memory_mb=1024)
    response = login(client, world.alice).post(url(world.web, "plan/"), {"plan": world.large.pk})
    assert response.status_code == 200
    assert "does not fit your quota" in response.context["plan_form"].errors["plan"][0]
    world.web.refresh_from_db()
    assert world.web.requested_plan is None


def test_a_plan_change_to_the_same_plan_is_refused(client, world):
    response = login(client, world.alice).post(url(world.web, "plan/"), {"plan": world.small.pk})
    assert response.status_code == 200
    assert "already has this plan" in response.context["plan_form"].errors["plan"][0]


# -- read-only members ----------------------------------------------------------------------


def test_read_only_members_see_their_tenants_servers_without_buttons(client, world):
    login(client, world.ro)
    body = client.get("/servers/").content.decode()
    assert url(world.web) in body
    assert "Request a server" not in body
    body = client.get(url(world.web)).content.decode()
    assert "carol" in body
    assert 'method="post" action="/servers/' not in body


@pytest.mark.parametrize(
    ("suffix", "data"),
    [
        ("action/stop/", {}),
        ("action/delete/", {}),
        ("accounts/add/", {"user": "erin", "password": PASSWORD}),
        ("accounts/carol/delete/", {}),
        ("accounts/carol/password/", {"pw-carol-password": PASSWORD}),
        ("accounts/carol/key/", {"key-carol-ssh_key": ssh_key()}),
        ("services/sshd/restart/", {}),
        ("plan/", {"plan": 0}),
    ],
)
def test_read_only_members_get_403_on_posts(client, world, queued, suffix, data):
    data = {**data, "plan": world.large.pk} if "plan" in data else data
    assert login(client, world.ro).post(url(world.web, suffix), data).status_code == 403
    assert not Operation.objects.exists()
    assert queued == []
    world.web.refresh_from_db()
    assert world.web.requested_plan is None


def test_read_only_members_cannot_request_servers(client, world):
    login(client, world.ro)
    assert client.get("/servers/new/").status_code == 403
    response = request_server(client, plan=world.small.pk, template=world.busybox.pk)
    assert response.status_code == 403
    assert not VirtualServer.objects.filter(name="api").exists()


# -- cancelling a request -------------------------------------------------------------------


@pytest.mark.both_databases
def test_a_pending_request_is_cancelled_not_deleted(client, world, queued):
    asked = make_server(world, world.acme, "asked", state=State.REQUESTED)
    body = login(client, world.alice).get(url(asked)).content.decode()
    assert f'action="{url(asked, "cancel/")}"' in body and 'data-confirm="Cancel this request?"' in body
    assert "Cancel request" in body
    assert "all its data" not in body and f'action="{url(asked, "action/delete/")}"' not in body

    assert login(client, world.ro).post(url(asked, "cancel/")).status_code == 403  # read-only
    assert login(client, world.bob).post(url(asked, "cancel/")).status_code == 404  # another tenant
    asked.refresh_from_db()
    assert asked.state == State.REQUESTED

    response = login(client, world.alice).post(url(asked, "cancel/"))
    assert response.status_code == 302 and response["Location"] == "/servers/"
    asked.refresh_from_db()
    assert (asked.state, asked.state_reason) == (State.DELETED, "withdrawn by the tenant")
    entry = AuditEntry.objects.get(action="server.cancel")
    assert (entry.actor, entry.object_id) == (world.alice, str(asked.uuid))
    assert not Operation.objects.exists() and not queued  # nothing exists on a node to delete

    # Once decided (or cancelled) it is no request any more: a clear refusal, nothing changes.
    running = world.web
    response = client.post(url(running, "cancel/"), follow=True)
    assert "only a request that waits for approval can be withdrawn" in " ".join(messages_of(response))
    running.refresh_from_db()
    assert running.state == State.RUNNING
    body = client.get(url(running)).content.decode()
    assert "Cancel request" not in body and f'action="{url(running, "action/delete/")}"' in body


# -- root's key and password with the request ----------------------------------------------


def test_a_request_keeps_roots_key_and_only_a_hash_of_the_password(client, world, queued):
    key = ssh_key()
    response = request_server(login(client, world.alice), plan=world.small.pk, template=world.busybox.pk,
                              ssh_key=f"  {key}\n", root_password=PASSWORD)
    assert response.status_code == 302
    server = VirtualServer.objects.get(name="api")
    assert server.root_ssh_key == key
    assert server.root_password_hash.startswith("$6$") and len(server.root_password_hash) > 90
    assert matches(PASSWORD, server.root_password_hash) and not matches(PASSWORD + "x", server.root_password_hash)
    # The plain password is nowhere: not in any row of the server, the audit or the session.
    for row in (VirtualServer.objects.filter(pk=server.pk).values().get(),
                *AuditEntry.objects.values("details")):
        assert PASSWORD not in str(row)
    assert AuditEntry.objects.get(action="server.request").details["root_password"] is True
    # Withdrawn, the request forgets them.
    client.post(url(server, "cancel/"))
    server.refresh_from_db()
    assert (server.root_ssh_key, server.root_password_hash) == ("", "")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"ssh_key": "ssh-ed25519 not-base64!"}, "ssh_key", "not valid base64"),
        ({"ssh_key": "ssh-dss AAAAB3NzaC1kc3M= me"}, "ssh_key", "key type"),
        ({"root_password": "short"}, "root_password", "8-128 characters"),
        ({"root_password": "has:colon here"}, "root_password", "must not contain ':'"),
    ],
)
def test_a_bad_key_or_weak_password_is_a_form_error(client, world, fields, field, message):
    response = request_server(login(client, world.alice), plan=world.small.pk, template=world.busybox.pk, **fields)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]
    assert not VirtualServer.objects.filter(name="api").exists()
    assert "short" not in response.content.decode().split('name="root_password"')[1][:200]  # not echoed back


def test_a_request_without_key_or_password_stores_none(client, world, queued):
    request_server(login(client, world.alice), plan=world.small.pk, template=world.busybox.pk)
    server = VirtualServer.objects.get(name="api")
    assert (server.root_ssh_key, server.root_password_hash) == ("", "")
    body = client.get("/servers/new/").content.decode()
    assert 'name="ssh_key"' in body and 'name="root_password"' in body


def test_a_service_is_up_for_as_long_as_it_has_run_not_as_long_as_when_it_was_read(client, world):
    """The worker reads the services right after a start, when httpd has run for 0 s; the
    page and the API count from the moment it started (Service.since), not from that read."""
    from datetime import timedelta

    from vservers.engine.services import Service as Read

    Service.objects.filter(server=world.web).delete()
    read = Service.from_guest(world.web, Read(name="httpd", state="running", pid=6, seconds=0))
    read.save()
    assert abs((timezone.now() - read.since).total_seconds()) < 60
    body = login(client, world.alice).get(url(world.web)).content.decode()
    assert re.search(r">httpd</td>.*?<td>0 s</td>", body, re.DOTALL)
    # Five minutes later, with no read in between:
    Service.objects.filter(pk=read.pk).update(since=read.since - timedelta(minutes=5))
    body = client.get(url(world.web)).content.decode()
    assert re.search(r">httpd</td>.*?<td>5 min</td>", body, re.DOTALL)
    assert Service.objects.get(pk=read.pk).seconds_now >= 300
    # A stopped service has no uptime.
    Service.objects.filter(pk=read.pk).update(state="stopped", pid=None)
    body = client.get(url(world.web)).content.decode()
    assert re.search(r">httpd</td>\s*<td><span class=\"badge service-stopped\">stopped</span></td>\s*"
                     r"<td class=\"mono[\w -]*\">—</td>\s*<td>—</td>", body)
