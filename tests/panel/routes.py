"""Every URL pattern of the panel, read from the URL resolver, and concrete URLs for them.

For the tests that must cover every view there is (test_security_methods, test_authz_matrix,
test_security_audit): a view added tomorrow is in ROUTES without anyone touching a test.
Placeholders are filled from a mapping of parameter name to candidate values; a test says
which objects stand behind them.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import quote

from django.apps import apps
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

_ROUTE_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
_REGEX_PARAM = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)\??")
_ADMIN_MODEL = re.compile(r"admin/(\w+)/(\w+)/")


@dataclass(frozen=True)
class Route:
    route: str  # the whole pattern, e.g. "servers/<uuid:uuid>/action/<slug:kind>/"
    name: str  # with its namespace ("admin:index"); "" for an unnamed pattern
    view: str  # module.name of the view function, for messages

    def __str__(self) -> str:
        return f"{self.name or '(unnamed)'} {self.route}"

    @property
    def params(self) -> list[str]:
        return _ROUTE_PARAM.findall(self.route) + _REGEX_PARAM.findall(self.route)

    @property
    def admin_model(self):
        """The model an admin URL is about (admin/<app>/<model>/...), or None."""
        match = _ADMIN_MODEL.match(self.route)
        if not match:
            return None
        try:
            model = apps.get_model(match[1], match[2])
        except (LookupError, ValueError):
            return None
        return model if model._meta.managed else None  # django-rq's "dashboard" has no table

    def url(self, **values) -> str:
        def value(match: re.Match) -> str:
            return quote(str(values[match.group(1)]), safe="")

        text = _ROUTE_PARAM.sub(value, self.route)
        text = _REGEX_PARAM.sub(value, text)
        text = text.replace("^", "").replace("$", "").replace("/?", "/")
        return "/" + text

    def urls(self, candidates: dict[str, list], first_only: bool = False) -> list[str]:
        """One URL per combination of the candidate values of its parameters."""
        params = self.params
        choices = [list(candidates[p]) for p in params]
        if first_only:
            choices = [c[:1] for c in choices]
        return [self.url(**dict(zip(params, combo, strict=True))) for combo in itertools.product(*choices)]


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            callback = entry.callback
            view = f"{getattr(callback, '__module__', '?')}.{getattr(callback, '__name__', type(callback).__name__)}"
            yield Route(prefix + str(entry.pattern), f"{namespace}{entry.name}" if entry.name else "", view)


def all_routes() -> list[Route]:
    return list(_walk(get_resolver().url_patterns))


# The panel's own areas; everything else is Django's (accounts/ and admin/) or named below.
TENANT_PREFIX = "servers/"
OPERATOR_PREFIX = "operator/"
ADMIN_PREFIX = "admin/"
# The REST API (api/): its operator endpoints, and everything else (tenants and operators).
API_PREFIX = "api/"
API_OPERATOR_PREFIX = "api/v1/operator/"
# Views for anybody, signed in or not. Every other view needs a signed-in user; a view that
# belongs here must be added by name, on purpose.
PUBLIC = {
    "healthz",
    "login",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    "admin:login",
    # The code step of a sign-in: without a password given in this session, a page that says so.
    "login_code",
    # /favicon.ico: a redirect to the icon in static/.
    "favicon",
    # A joining node's one-time token is its only credential (api/nodes_join.py, throttled).
    "node_join",
}
# Views for any signed-in user, outside the tenant's and the operator's areas.
SIGNED_IN = {
    "home",
    "logout",
    "password_change",
    "password_change_done",
    "two_factor",
    "two_factor_start",
    "two_factor_confirm",
    "two_factor_recovery_codes",
    "two_factor_disable",
    "api_tokens",
    "api_token_revoke",
    "mail_settings",
    "api-docs",
}


# -- objects behind the placeholders --------------------------------------------------------

GUEST_NAME = "www"  # an account and a service on globex's running server
# Verbs a <kind>, <action> or <decision> placeholder may stand for.
VERBS = ["start", "stop", "restart", "delete", "refresh", "approve", "reject", "change_plan"]


def security_world(offline_world, django_user_model):
    """conftest's offline_world, and for globex (bob): a running server with an address, a
    provision operation, an account and a service named GUEST_NAME, and a plan change waiting;
    a server awaiting approval; a stopped server; a superuser "root" for the admin."""
    from types import SimpleNamespace

    from vservers.models import GuestAccount, Operation, OperationKind, Service, Snapshot, State, VirtualServer

    w = offline_world
    running = VirtualServer.objects.create(
        tenant=w.globex, name="globex-web", hostname="web.globex.test", plan=w.small, template=w.busybox,
        node=w.node, state=State.RUNNING, requested_plan=w.medium,
    )
    address = w.pool.allocate(running)
    operation = Operation.objects.create(server=running, kind=OperationKind.PROVISION, requested_by=w.operator)
    account = GuestAccount(server=running, name=GUEST_NAME, uid=1000, home="/home/www")
    account.shell = "/bin/sh"  # an attribute: ruff's S604 reads a shell= keyword as subprocess's
    account.save()
    service = Service.objects.create(server=running, name=GUEST_NAME, state="run", pid=42)
    Snapshot.objects.create(server=running, name=GUEST_NAME, size_bytes=2**20)  # a snapshot's <slug:name> too
    pending = VirtualServer.objects.create(
        tenant=w.globex, name="globex-new", hostname="new.globex.test", plan=w.small, template=w.busybox,
        state=State.REQUESTED,
    )
    stopped = VirtualServer.objects.create(
        tenant=w.globex, name="globex-off", hostname="off.globex.test", plan=w.small, template=w.busybox,
        node=w.node, state=State.STOPPED,
    )
    w.pool.allocate(stopped)
    # Running the rescue system (issue 15): only such a server may leave rescue.
    rescued = VirtualServer.objects.create(
        tenant=w.globex, name="globex-fix", hostname="fix.globex.test", plan=w.small, template=w.busybox,
        node=w.node, state=State.RESCUE,
    )
    w.pool.allocate(rescued)
    root = django_user_model.objects.create_superuser("root", "root@example.test", "root pw 1")
    # Issue 16: both nodes report in, so a server of "local" may move to "other" (own pool).
    from django.utils import timezone

    from vservers.models import IPPool, Node

    Node.objects.filter(pk=w.node.pk).update(last_seen=timezone.now())
    other = Node.objects.create(name="other", queue_name="node-other", last_seen=timezone.now())
    IPPool.objects.create(name="other-net", node=other, network="198.19.129.0/24", gateway="198.19.129.1")
    from vservers.models import Backup

    backup = Backup.objects.create(tenant=w.globex, server=running, server_name=running.name, node=w.node,
                                   name="vs-0123456789ab-20261206T000000Z.tar.zst", manifest={"template": "busybox"})
    return SimpleNamespace(
        **vars(w), running=running, address=address, operation=operation, account=account, service=service,
        pending=pending, stopped=stopped, rescued=rescued, root=root, backup=backup,
    )


def candidates(route: Route, w) -> dict[str, list]:
    """Values for each placeholder of ROUTE: globex's objects, any of which may fit."""
    from django.contrib.contenttypes.models import ContentType

    model = route.admin_model
    first = model._default_manager.order_by("pk").values_list("pk", flat=True).first() if model else None
    return {
        "uuid": [w.running.uuid, w.pending.uuid, w.stopped.uuid, w.operation.uuid, w.globex.uuid, w.small.uuid,
                 *([w.rescued.uuid] if hasattr(w, "rescued") else [])],
        "operation": [w.operation.uuid],
        "backup": [w.backup.uuid],
        "pk": [w.pool.pk],
        "kind": VERBS,
        "action": VERBS,
        "decision": VERBS,
        "name": [GUEST_NAME, w.busybox.name, "local"],  # an account or service, a template, a node
        "object_id": [first if first is not None else 1],
        "id": [w.bob.pk],
        "user_id": [w.bob.pk],
        "content_type_id": [ContentType.objects.get_for_model(type(w.running)).pk],
        "uidb64": ["Mg"],
        "token": ["set-password"],
        "app_label": ["vservers"],
        "url": ["no-such-page/"],
        "queue_index": [0],
        "scheduler_index": [0],
        "connection_index": [0],
        "job_id": ["no-such-job"],
        "result_id": ["no-such-result"],
        "key": ["no-such-worker"],
        "scheduler_name": ["no-such-scheduler"],
        "cron_job_name": ["no-such-cron-job"],
    }


def actor(route: Route, w):
    """Who may use ROUTE: nobody in particular for the public views (sign-in pages), the
    superuser in the admin, the operator in the operator's area, bob (globex's admin, who owns
    the objects) everywhere else."""
    if route.name in PUBLIC:
        return None
    if route.route.startswith(ADMIN_PREFIX):
        return w.root
    if route.route.startswith((OPERATOR_PREFIX, API_OPERATOR_PREFIX)):
        return w.operator
    return w.bob


# -- what a POST sends ----------------------------------------------------------------------


def ssh_key() -> str:
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} bob@laptop"


def payload(w) -> dict:
    """Fields for every form of the panel at once; each view takes what it knows. Valid, so
    that a POST with a token really acts where it can."""
    new_password = "a new long passphrase 7"
    return {
        # tenant: server request, plan change, guest accounts
        "name": "newsrv", "hostname": "newsrv.example.test", "plan": w.medium.pk, "template": w.busybox.pk,
        "user": "newuser", "password": "guest password 1", "ssh_key": ssh_key(),
        f"pw-{GUEST_NAME}-password": "guest password 1", f"key-{GUEST_NAME}-ssh_key": ssh_key(),
        # operator: approvals, tenants, members, plans, templates, pools
        "node": "local", "reason": "not now", "tenant": w.acme.pk, "autostart": "on",
        "slug": "newco", "max_servers": 5, "max_cpus": 4, "max_memory_mb": 4096, "max_disk_mb": 20480,
        "username": "newmember", "role": "admin",
        "cpus": "1", "memory_mb": 256, "disk_mb": 1024, "pids": 128, "is_active": "on",
        "display_name": "New", "network": "198.19.200.0/24", "gateway": "198.19.200.1",
        # accounts: password change and reset
        "old_password": "bob password 1", "new_password1": new_password, "new_password2": new_password,
        "email": "bob@globex.test",
        # API tokens (the token page)
        "scope": "read", "days": 30,
    }


# Where one field name means different things: a ModelChoiceField by primary key.
OVERRIDES = {
    "op_server_create": {"node": "NODE_PK"}, "op_pools": {"node": "NODE_PK"},
    # Reinstall: a template by name, and the running server's name typed to confirm.
    "server_reinstall": {"template": "busybox", "confirm": "globex-web", "snapshot_first": "on"},
    "api-server-reinstall": {"template": "busybox", "confirm": "globex-web"},
    # Moving a server (issue 16): to the world's second node, by name.
    "op_server_migrate": {"target": "other"}, "api-op-migrate": {"target": "other"},
    "server_root_password": {"rootpw-password": "guest password 1", "rootpw-password2": "guest password 1"},
}


def data_for(route, w) -> dict:
    data = payload(w)
    for key, value in OVERRIDES.get(route.name, {}).items():
        data[key] = w.node.pk if value == "NODE_PK" else value
    return data


class SignedIn:
    """One signed-in test client per user (and per set of client options), reused by a test
    that sends every URL a request inside a transaction it rolls back.

    Signing in for each request (a session row, last_login, the sign-in's own audit entry) was
    about a third of such a test's time. A client is signed in outside those transactions, so
    its session stays; before each use its cookies are put back as they were after the sign-in,
    so a request that signed it out or changed its session key (rows the rollback restores)
    does not carry over to the next."""

    def __init__(self, **options) -> None:
        self.options = options
        self._made: dict[tuple, tuple[Client, SimpleCookie]] = {}

    def client(self, user, **options) -> Client:
        """USER's client (None: a visitor's). Ask for it first outside the rolled-back
        transaction, or its sign-in is rolled back with the request."""
        key = (getattr(user, "pk", None), tuple(sorted(options.items())))
        if key not in self._made:
            made = Client(**self.options, **options)
            if user is not None:
                made.force_login(user)
            self._made[key] = (made, copy.deepcopy(made.cookies))
        made, cookies = self._made[key]
        made.cookies = copy.deepcopy(cookies)
        return made
