"""Who may open which URL, for every URL there is: the patterns under /servers/ (tenants) and
/operator/ (operators) are read from the URL resolver when the tests are collected, so a new
view is covered the day it is added, without touching this file.

1. alice (acme) asking for anything of globex by its ids gets 404, with GET and with POST
   (405 is fine where a view takes only the other method); bob, who owns it, does not;
2. alice gets 403 from every operator URL, GET and POST;
3. an anonymous user is sent to the login page from all of them;
4. every other URL pattern, anywhere in the urlconf, is either public by name (the sign-in
   pages, healthz), for any signed-in user by name (home, sign-out, password change), the
   admin's, or the REST API's (5.): a view outside these fails test_every_view_has_a_case until
   it is given one.
5. the REST API (/api/), with bearer tokens, by the same rules from the same functions
   (vservers.access): alice's token gets 404 for globex's objects with every method, 403 from
   every operator endpoint (/api/v1/operator/), and her lists show nothing of globex; without
   a token everything is 401; a read-only member's token and a read-only token get 403 for
   every write on the member's own objects, and change nothing.
   Public pages show nothing of globex to anybody, the signed-in ones nothing to alice, and
   the admin (every pattern in it) lets neither alice nor an anonymous user in.

Placeholders get real values: a <uuid> is globex's server or one of its operations, an <int>
the id of one of its addresses, accounts, services or operations, a <str>/<slug> a name
that exists on that server or an action verb; every combination is tried.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.converters import IntConverter, UUIDConverter

from accounts.models import Membership
from tests.panel.routes import ADMIN_PREFIX, API_OPERATOR_PREFIX, API_PREFIX, PUBLIC, SIGNED_IN, all_routes
from tests.panel.routes import candidates as placeholder_values
from vservers.models import (
    Backup,
    GuestAccount,
    Operation,
    OperationKind,
    Service,
    Snapshot,
    State,
    VirtualServer,
)

TENANT_PREFIX = "servers/"
OPERATOR_PREFIX = "operator/"
LOGIN = "/accounts/login/"
# Verbs a <kind>, <action> or <decision> placeholder may stand for.
VERBS = sorted({"start", "stop", "restart", "delete", "refresh", "approve", "reject", *OperationKind.values})
GUEST_NAME = "www"  # an account and a service of globex's server
SECRET_NAME = "globex-secret"  # globex's server: must never show up for alice

OPERATOR_URL_NAMES = {
    "op_dashboard",
    "op_approvals",
    "op_approve",
    "op_reject",
    "op_plan_change",
    "op_servers",
    "op_servers_bulk",
    "op_server_detail",
    "op_server_action",
    "op_server_create",
    "op_tenants",
    "op_tenant_detail",
    "op_member_add",
    "op_member_2fa_reset",
    "op_member_remove",
    "op_member_role",
    "op_plans",
    "op_plan_edit",
    "op_templates",
    "op_template_toggle",
    "op_template_build",
    "op_pools",
    "op_pool_detail",
    "op_nodes",
    "op_node_edit",
    "op_node_add",
    "op_node_token",
    "op_operations",
    "op_operation_retry",
    "op_audit",
}


@dataclass(frozen=True)
class Route:
    route: str  # e.g. "servers/<uuid:uuid>/action/<slug:kind>/"
    name: str
    converters: dict

    def __str__(self) -> str:
        return self.name or self.route

    @property
    def placeholders(self) -> list[str]:
        return re.findall(r"<(?:\w+:)?(\w+)>", self.route)

    def url(self, **values) -> str:
        def fill(match: re.Match) -> str:
            param = match.group(1)
            return quote(self.converters[param].to_url(values[param]), safe="")

        return "/" + re.sub(r"<(?:\w+:)?(\w+)>", fill, self.route)


def _walk(patterns, prefix: str = "", namespace: str = "", converters: dict | None = None):
    for entry in patterns:
        found = {**(converters or {}), **getattr(entry.pattern, "converters", {})}
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner, found)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}{entry.name}" if entry.name else ""
            yield Route(prefix + str(entry.pattern), name, found)


def routes(prefix: str) -> list[Route]:
    return [r for r in _walk(get_resolver().url_patterns) if r.route.startswith(prefix)]


TENANT_ROUTES = routes(TENANT_PREFIX)
OPERATOR_ROUTES = routes(OPERATOR_PREFIX)


# -- the world ------------------------------------------------------------------------------


@pytest.fixture
def world(offline_world):
    """conftest's offline_world, with a running server for each tenant: acme-web and globex's
    SECRET_NAME, each with an address, a provision operation, a guest account and a service.
    Returns alice, bob, operator and globex (that server's objects)."""
    w = offline_world

    def server(tenant, name):
        made = VirtualServer.objects.create(
            tenant=tenant,
            name=name,
            hostname=f"{name}.example.test",
            plan=w.small,
            template=w.busybox,
            node=w.node,
            state=State.RUNNING,
            requested_plan=w.medium,
        )
        address = w.pool.allocate(made)
        operation = Operation.objects.create(server=made, kind=OperationKind.PROVISION, requested_by=w.operator)
        account = GuestAccount.objects.create(  # noqa: S604 - a login shell, not subprocess's shell=
            server=made, name=GUEST_NAME, uid=1000, home="/home/www", shell="/bin/sh"
        )
        service = Service.objects.create(server=made, name=GUEST_NAME, state="run", pid=42)
        Snapshot.objects.create(server=made, name=GUEST_NAME, size_bytes=2**20)  # <slug:name> of a snapshot too
        return SimpleNamespace(server=made, address=address, operation=operation, account=account, service=service)

    server(w.acme, "acme-web")  # alice has a server of her own: her pages are not empty
    theirs = server(w.globex, SECRET_NAME)
    theirs.backup = Backup.objects.create(tenant=w.globex, server=theirs.server, server_name=SECRET_NAME,
                                          node=w.node, name="vs-0123456789ab-20261206T000000Z.tar.zst")
    return SimpleNamespace(alice=w.alice, bob=w.bob, operator=w.operator, globex=theirs)


def candidates(route: Route, param: str, world) -> list:
    """Real values of globex's objects for the placeholder PARAM of ROUTE."""
    converter = route.converters[param]
    theirs = world.globex
    if isinstance(converter, UUIDConverter):
        return [theirs.server.uuid, theirs.operation.uuid, theirs.backup.uuid]
    if isinstance(converter, IntConverter):
        return [theirs.address.pk, theirs.account.pk, theirs.service.pk, theirs.operation.pk]
    if param in ("kind", "action", "decision", "verb"):
        return VERBS
    return [GUEST_NAME]


def combinations(route: Route, world, first_only: bool = False) -> list[str]:
    params = route.placeholders
    choices = [candidates(route, p, world) for p in params]
    if first_only:
        choices = [c[:1] for c in choices]
    return [route.url(**dict(zip(params, values, strict=True))) for values in itertools.product(*choices)]


# -- the URLs are there ---------------------------------------------------------------------


def test_the_matrix_covers_every_operator_url():
    names = {r.name for r in OPERATOR_ROUTES}
    assert OPERATOR_URL_NAMES <= names, f"operator URLs not found: {OPERATOR_URL_NAMES - names}"
    assert all(r.name.startswith("op_") for r in OPERATOR_ROUTES), [r.route for r in OPERATOR_ROUTES]


def test_the_matrix_sees_the_tenant_urls_there_are():
    # Empty while the tenant area is being written; then every one of them is covered below.
    assert all(r.route.startswith(TENANT_PREFIX) for r in TENANT_ROUTES)
    assert len({r.route for r in TENANT_ROUTES}) == len(TENANT_ROUTES)


# -- 1. another tenant's objects are not found ----------------------------------------------


OBJECT_ROUTES = [r for r in TENANT_ROUTES if r.placeholders]
LIST_ROUTES = [r for r in TENANT_ROUTES if not r.placeholders]


@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=str)
def test_another_tenants_objects_are_not_found(client, world, route):
    client.force_login(world.alice)
    urls = combinations(route, world)
    for url in urls:
        answers = {"GET": client.get(url).status_code, "POST": client.post(url).status_code}
        assert set(answers.values()) <= {404, 405} and 404 in answers.values(), f"{url}: {answers}"
    assert not world.globex.server.operations.exclude(pk=world.globex.operation.pk).exists()

    # The control: for bob, who owns them, the same URLs lead somewhere, so the 404s above
    # come from the tenant check and not from values that fit no object.
    client.force_login(world.bob)
    found = [url for url in urls if client.get(url).status_code != 404 or client.post(url).status_code != 404]
    assert found, f"no value for {route.route} reaches globex's objects even for bob: the test needs one"


@pytest.mark.parametrize("route", LIST_ROUTES, ids=str)
def test_tenant_lists_show_nothing_of_another_tenant(client, world, route):
    client.force_login(world.alice)
    response = client.get("/" + route.route)
    assert response.status_code in (200, 302, 405), response.status_code
    assert SECRET_NAME.encode() not in response.content
    assert str(world.globex.server.uuid).encode() not in response.content


# -- 2. tenants are not operators -----------------------------------------------------------


@pytest.mark.parametrize("route", OPERATOR_ROUTES, ids=str)
def test_operator_urls_are_forbidden_to_tenants(client, world, route):
    client.force_login(world.alice)
    for url in combinations(route, world, first_only=True):
        assert client.get(url).status_code == 403, url
        assert client.post(url).status_code == 403, url
    assert not world.globex.server.operations.exclude(pk=world.globex.operation.pk).exists()


# -- 3. anonymous users log in first --------------------------------------------------------


@pytest.mark.parametrize("route", TENANT_ROUTES + OPERATOR_ROUTES, ids=str)
def test_anonymous_users_are_sent_to_login(client, world, route):
    for url in combinations(route, world, first_only=True):
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code == 302, f"{method.__name__.upper()} {url}: {response.status_code}"
            assert response["Location"].startswith(f"{LOGIN}?next="), response["Location"]
    assert not world.globex.server.operations.exclude(pk=world.globex.operation.pk).exists()


# -- 4. every other view --------------------------------------------------------------------

ALL_ROUTES = all_routes()
ADMIN_ROUTES = [r for r in ALL_ROUTES if r.route.startswith(ADMIN_PREFIX) and r.name not in PUBLIC]
PUBLIC_ROUTES = [r for r in ALL_ROUTES if r.name in PUBLIC]
SIGNED_IN_ROUTES = [r for r in ALL_ROUTES if r.name in SIGNED_IN]
ADMIN_LOGIN = "/admin/login/"


def test_every_view_has_a_case():
    covered = {id(r) for r in ADMIN_ROUTES + PUBLIC_ROUTES + SIGNED_IN_ROUTES}
    areas = (TENANT_PREFIX, OPERATOR_PREFIX, API_PREFIX)
    without = [str(r) for r in ALL_ROUTES if id(r) not in covered and not r.route.startswith(areas)]
    assert not without, (
        "views outside /servers/ and /operator/ that no test here covers; name them in "
        f"tests/panel/routes.py (PUBLIC or SIGNED_IN) or move them: {without}"
    )
    named = {r.name for r in ALL_ROUTES}
    assert PUBLIC <= named and SIGNED_IN <= named, (PUBLIC | SIGNED_IN) - named


def security_candidates(route, world) -> dict:
    """The placeholders of tests/panel/routes.py, with globex's server and operation."""
    values = placeholder_values(route, SimpleNamespace(
        running=world.globex.server, pending=world.globex.server, stopped=world.globex.server,
        operation=world.globex.operation, globex=world.globex.server.tenant, small=world.globex.server.plan,
        pool=world.globex.address.pool, busybox=world.globex.server.template, bob=world.bob,
        backup=world.globex.backup,
    ))
    return values


@pytest.mark.parametrize("route", PUBLIC_ROUTES, ids=str)
def test_public_views_show_nothing_of_a_tenant(client, world, route):
    for url in route.urls(security_candidates(route, world)):
        response = client.get(url)
        # 405: a public view that takes only POST (the node join's endpoint) shows nothing to GET.
        assert response.status_code in (200, 302, 405), f"{url}: {response.status_code}"
        if response.status_code == 302:
            assert not response["Location"].startswith(LOGIN), f"{url} is public but asks to log in"
        assert SECRET_NAME.encode() not in response.content


@pytest.mark.parametrize("route", SIGNED_IN_ROUTES, ids=str)
def test_signed_in_views_need_a_user_and_show_only_their_own(client, world, route):
    urls = route.urls(security_candidates(route, world))
    for url in urls:
        for method in (client.get, client.post):
            response = method(url)
            assert response.status_code in (302, 405), f"{method.__name__.upper()} {url}: {response.status_code}"
            if response.status_code == 302:
                assert response["Location"].startswith(LOGIN), response["Location"]
    client.force_login(world.alice)
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 302, 405), f"{url}: {response.status_code}"
        assert SECRET_NAME.encode() not in response.content
        assert str(world.globex.server.uuid).encode() not in response.content


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=str)
def test_the_admin_lets_neither_tenants_nor_strangers_in(client, world, route):
    urls = route.urls(security_candidates(route, world), first_only=True)
    for who in (None, world.alice):
        if who is not None:
            client.force_login(who)
        for url in urls:
            for method in (client.get, client.post):
                response = method(url)
                where = f"{method.__name__.upper()} {url} as {who or 'anonymous'}"
                # 401: django-rq's statistics (JSON) for a missing or wrong API token.
                assert response.status_code in (302, 401, 403, 405), f"{where}: {response.status_code}"
                if response.status_code == 302 and not response["Location"].startswith(ADMIN_LOGIN):
                    # The admin's short object URLs: to another admin URL, which then sends
                    # to the login.
                    assert response["Location"].startswith("/admin/"), f"{where}: {response['Location']}"
                    response = method(response["Location"])
                    assert response.status_code in (302, 405), f"{where}, then: {response.status_code}"
                if response.status_code == 302:
                    assert response["Location"].startswith(ADMIN_LOGIN), f"{where}: {response['Location']}"
    assert not world.globex.server.operations.exclude(pk=world.globex.operation.pk).exists()


# -- 5. the REST API ------------------------------------------------------------------------

API_ROUTES = [r for r in routes(API_PREFIX) if r.name not in SIGNED_IN]  # the docs page is a page
API_OPERATOR_ROUTES = [r for r in API_ROUTES if r.route.startswith(API_OPERATOR_PREFIX)]
API_OBJECT_ROUTES = [r for r in API_ROUTES if r.placeholders and r not in API_OPERATOR_ROUTES]
API_LIST_ROUTES = [r for r in API_ROUTES if not r.placeholders and r not in API_OPERATOR_ROUTES]
API_METHODS = ("get", "post", "put", "patch", "delete")
# What a write sends: enough to pass the input checks where a view has them, so that a
# refusal comes from the access rules and not from missing fields.
API_BODY = {
    "name": "newsrv", "hostname": "newsrv.example.test", "plan": "medium", "template": "busybox",
    "user": "newuser", "password": "guest password 1", "ssh_key": "", "reason": "no", "node": "local",
    "slug": "newco", "is_active": True, "cpus": "1", "memory_mb": 256, "disk_mb": 1024,
    "network": "198.19.200.0/24", "gateway": "198.19.200.1", "tenant": "acme", "username": "newmember",
}


def test_the_matrix_sees_the_api():
    names = {r.name for r in API_ROUTES}
    assert {"api-servers", "api-server", "api-server-start", "api-operation", "api-op-approve", "api-op-tenants",
            "api-op-audit", "api-schema"} <= names
    assert len(API_OPERATOR_ROUTES) >= 15 and len(API_OBJECT_ROUTES) >= 15


def _api_client(user, scope: str = "write"):
    from rest_framework.test import APIClient

    from api import actions

    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {actions.create(user, name='matrix', scope=scope, days=1)[1]}")
    return client


def _api_answers(client, url: str) -> dict[str, int]:
    return {method: getattr(client, method)(url, API_BODY, format="json").status_code for method in API_METHODS}


def _nothing_done(world) -> bool:
    return not world.globex.server.operations.exclude(pk=world.globex.operation.pk).exists()


@pytest.mark.parametrize("route", API_OBJECT_ROUTES, ids=str)
def test_api_another_tenants_objects_are_not_found(world, route):
    alice = _api_client(world.alice)
    urls = combinations(route, world)
    for url in urls:
        answers = _api_answers(alice, url)
        assert set(answers.values()) <= {404, 405} and 404 in answers.values(), f"{url}: {answers}"
    assert _nothing_done(world)

    # The control: bob's token reaches the same objects with some value, so the 404s above
    # come from the tenant check.
    bob = _api_client(world.bob, scope="read")
    found = [url for url in urls if bob.get(url).status_code not in (404, 405) or bob.post(url).status_code != 404]
    assert found, f"no value for {route.route} reaches globex's objects even for bob: the test needs one"


@pytest.mark.parametrize("route", API_LIST_ROUTES, ids=str)
def test_api_lists_show_nothing_of_another_tenant(world, route):
    response = _api_client(world.alice).get("/" + route.route)
    assert response.status_code == 200, response.status_code
    assert SECRET_NAME.encode() not in response.content
    assert str(world.globex.server.uuid).encode() not in response.content


@pytest.mark.parametrize("route", API_OPERATOR_ROUTES, ids=str)
def test_api_operator_endpoints_are_forbidden_to_tenants(world, route):
    alice = _api_client(world.alice)
    for url in combinations(route, world, first_only=True):
        answers = _api_answers(alice, url)
        assert set(answers.values()) == {403}, f"{url}: {answers}"
    assert _nothing_done(world)

    # The control: the operator's token gets past the check.
    operator = _api_client(world.operator, scope="read")
    url = combinations(route, world, first_only=True)[0]
    assert operator.get(url).status_code != 403 or operator.post(url).status_code != 403, url


@pytest.mark.parametrize("route", API_ROUTES, ids=str)
def test_api_without_a_token_is_401(world, route):
    anonymous = _api_client(None)
    for url in combinations(route, world, first_only=True):
        for method in API_METHODS:
            response = getattr(anonymous, method)(url, API_BODY, format="json")
            assert response.status_code == 401, f"{method.upper()} {url}: {response.status_code}"
            assert response["WWW-Authenticate"].startswith("Bearer"), url
    assert _nothing_done(world)


@pytest.fixture
def readonly_member(world, django_user_model):
    """carol, a read-only member of globex (bob's tenant)."""
    carol = django_user_model.objects.create_user("carol", "carol@globex.test")
    Membership.objects.create(user=carol, tenant=world.globex.server.tenant, role=Membership.READONLY)
    return carol


API_WRITE_ROUTES = [r for r in API_ROUTES if r not in API_OPERATOR_ROUTES and r.name != "api-schema"]


@pytest.mark.parametrize("route", API_WRITE_ROUTES, ids=str)
def test_api_read_only_members_and_tokens_cannot_write(world, readonly_member, route):
    if route.name == "api-rejected-dismiss":  # it acts on rejected requests only
        VirtualServer.objects.filter(pk=world.globex.server.pk).update(state=State.REJECTED)
    before = {model: model.objects.count() for model in (VirtualServer, Operation)}
    for client in (_api_client(readonly_member), _api_client(world.bob, scope="read")):
        wrote, looked = set(), set()
        for url in combinations(route, world):
            for method in ("post", "patch", "delete"):
                wrote.add(getattr(client, method)(url, API_BODY, format="json").status_code)
            looked.add(client.get(url).status_code)
        # 404: a value that fits no object of that kind (an operation's id as a server's).
        assert wrote <= {403, 404, 405} and (403 in wrote or wrote == {405}), f"{route}: {wrote}"
        assert looked & {200, 405}, f"{route}: {looked}"  # and they may look
    assert before == {model: model.objects.count() for model in (VirtualServer, Operation)}
    assert _nothing_done(world)
