"""Property-based: a form of the panel never accepts what the engine's validator rejects.

tests/engine/test_validate.py shows that what the engine's validators accept is safe to hand
to a program. Here, the other side: whatever anybody types into a form (or a URL), the value
the panel goes on with (cleaned_data, or the name it queues) passes the engine's validator
unchanged, so the worker never gets input that the engine would refuse or read differently.
Where the form promises to accept exactly what the engine accepts, that is checked too.

Inputs: arbitrary text, and values close to valid ones (so that the accepting side is
reached, not only the refusing one), padded, upper-cased, with stray characters.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest
from django.test import Client
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from vservers.engine import validate
from vservers.engine.errors import InvalidInput
from vservers.forms import AccountAddForm, AccountKeyForm, AccountPasswordForm, ServerRequestForm
from vservers.models import (
    GuestAccount,
    IPPool,
    Operation,
    OperationKind,
    OperationStatus,
    Service,
    State,
    VirtualServer,
)
from vservers.operator_forms import PlanForm, PoolForm, ServerCreateForm, TemplateForm

# The examples share the test's database (one transaction per test, not per example).
DB = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PURE = settings(max_examples=300, deadline=None)

# The engine's limits on sizes, as its CLI applies them (vservers/engine/cli.py).
MIB = 2**20
MEMORY_MIN, DISK_MIN, DISK_MAX = 4 * MIB, 16 * MIB, 2**44


def engine_accepts(check, value, **kwargs) -> bool:
    try:
        return check(value, **kwargs) == value
    except InvalidInput:
        return False


def noisy(strategy):
    """Near-valid values, sometimes padded, upper-cased or with one odd character added."""
    odd = st.sampled_from([" ", "\t", "\n", "\x00", ":", ";", "$", "/", "..", "-", ".", "é", "\u200b", "A"])
    return st.one_of(
        strategy,
        strategy.map(lambda v: f"  {v} "),
        strategy.map(str.upper),
        st.tuples(strategy, odd, st.booleans()).map(lambda t: t[1] + t[0] if t[2] else t[0] + t[1]),
    )


SERVER_NAMES = st.one_of(st.text(max_size=40), noisy(st.from_regex(r"[a-z][a-z0-9-]{0,33}", fullmatch=True)))
LABEL = st.from_regex(r"[a-z0-9][a-z0-9-]{0,64}", fullmatch=True)
HOSTNAMES = st.one_of(
    st.text(max_size=80),
    noisy(st.lists(LABEL, min_size=1, max_size=5).map(".".join)),
    st.lists(st.text(alphabet="ab-", min_size=1, max_size=70), min_size=2, max_size=5).map(".".join),
)
USER_NAMES = st.one_of(
    st.text(max_size=40),
    noisy(st.from_regex(r"[a-z_][a-z0-9_-]{0,33}", fullmatch=True)),
    st.sampled_from(sorted(validate.RESERVED_USERS)),
)
PASSWORDS = st.one_of(
    st.text(max_size=140), noisy(st.text(alphabet=st.characters(codec="ascii"), min_size=6, max_size=130))
)
TEMPLATE_NAMES = st.one_of(st.text(max_size=40), noisy(st.from_regex(r"[a-zA-Z_][a-z0-9_-]{0,34}", fullmatch=True)))
SERVICE_NAMES = st.one_of(st.text(max_size=70), noisy(st.from_regex(r"[a-z0-9][a-z0-9_.@-]{0,64}", fullmatch=True)))


@st.composite
def ssh_keys(draw) -> str:
    """Keys whose blob names their type, or another type, or is cut short; with comments."""
    key_type = draw(st.sampled_from(sorted(validate._SSH_KEY_TYPES) + ["ssh-dss", "ssh-ed448", ""]))
    inner = draw(st.one_of(st.just(key_type), st.sampled_from(sorted(validate._SSH_KEY_TYPES))))
    name = inner.encode()
    blob = draw(st.one_of(
        st.binary(max_size=64).map(lambda b: len(name).to_bytes(4, "big") + name + b),
        st.binary(max_size=8),
    ))
    body = base64.b64encode(blob).decode()
    body = draw(st.one_of(st.just(body), st.just(body.rstrip("=")), st.just(body + "!")))
    comment = draw(st.one_of(st.just(""), st.text(max_size=20)))
    line = " ".join(part for part in (key_type, body, comment) if part)
    return draw(st.one_of(st.just(line), noisy(st.just(line)), st.text(max_size=100)))


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def world(offline_world):
    return offline_world


def request_form(world, **data) -> ServerRequestForm:
    fields = {"name": "web", "hostname": "web.example.test", "plan": world.small.pk, "template": world.busybox.pk}
    return ServerRequestForm({**fields, **data}, tenant=world.acme)


# -- server and host names ----------------------------------------------------------------------


@DB
@given(value=SERVER_NAMES)
@example(value="web-")
@example(value=" web ")
def test_server_names_the_tenant_may_request(world, value):
    form = request_form(world, name=value)
    form.is_valid()
    if "name" not in form.errors:
        assert engine_accepts(validate.server_name, form.cleaned_data["name"])
    # ... and the form accepts what the engine accepts, once surrounding blanks are gone.
    assert ("name" not in form.errors) == engine_accepts(validate.server_name, value.strip())


@DB
@given(value=HOSTNAMES)
@example(value="WWW.Example.COM.")
@example(value="1.2.3.4")
def test_host_names_the_tenant_may_request(world, value):
    form = request_form(world, hostname=value)
    form.is_valid()
    if "hostname" not in form.errors:
        assert engine_accepts(validate.hostname, form.cleaned_data["hostname"])


@DB
@given(name=SERVER_NAMES, hostname=HOSTNAMES)
def test_names_an_operator_may_give_a_server(world, name, hostname):
    form = ServerCreateForm({
        "tenant": world.acme.pk, "name": name, "hostname": hostname, "plan": world.small.pk,
        "template": world.busybox.pk,
    })
    form.is_valid()
    if "name" not in form.errors:
        assert engine_accepts(validate.server_name, form.cleaned_data["name"])
    if "hostname" not in form.errors:
        assert engine_accepts(validate.hostname, form.cleaned_data["hostname"])


# -- guest accounts -----------------------------------------------------------------------------


@PURE
@given(user=USER_NAMES, password=PASSWORDS, key=ssh_keys())
@example(user="root", password="long enough", key="")
@example(user="www", password="with: colon", key="")
def test_new_guest_accounts(user, password, key):
    form = AccountAddForm({"user": user, "password": password, "ssh_key": key})
    form.is_valid()
    data = form.cleaned_data
    if "user" not in form.errors:
        assert engine_accepts(validate.user_name, data["user"])
    if "password" not in form.errors and data["password"]:
        assert engine_accepts(validate.password, data["password"])
    if "ssh_key" not in form.errors and data["ssh_key"]:
        assert engine_accepts(validate.ssh_public_key, data["ssh_key"])
    if form.is_valid():
        assert data["password"] or data["ssh_key"]


@PURE
@given(password=PASSWORDS)
@example(password="x" * 129)
@example(password="tab\tinside")
def test_guest_passwords_are_kept_as_typed_and_the_engines(password):
    form = AccountPasswordForm({"password": password})
    if form.is_valid():
        assert form.cleaned_data["password"] == password
        assert engine_accepts(validate.password, password)
    assert form.is_valid() == engine_accepts(validate.password, password)


@PURE
@given(key=ssh_keys())
def test_guest_ssh_keys(key):
    form = AccountKeyForm({"ssh_key": key})
    if form.is_valid():
        assert engine_accepts(validate.ssh_public_key, form.cleaned_data["ssh_key"])


# -- the operator's catalogue: plans (sizes), templates, address pools -------------------------


@DB
@given(
    cpus=st.one_of(st.decimals(min_value=-1, max_value=2000, places=2), st.text(max_size=8)),
    memory=st.one_of(st.integers(min_value=-5, max_value=2**31), st.sampled_from([16, 2**30, 2**31 - 1])),
    disk=st.one_of(st.integers(min_value=-5, max_value=2**31), st.sampled_from([64, 2**24, 2**24 + 1])),
    pids=st.one_of(st.integers(min_value=-5, max_value=2**23), st.text(max_size=6)),
)
def test_plan_sizes(world, cpus, memory, disk, pids):
    form = PlanForm({"name": "p", "cpus": str(cpus), "memory_mb": memory, "disk_mb": disk, "pids": pids})
    form.is_valid()
    data = form.cleaned_data
    if "cpus" not in form.errors:
        validate.cpus(data["cpus"])
    if "pids" not in form.errors:
        validate.pids(data["pids"])
    # The worker hands the engine memory_mb and disk_mb in bytes (vservers.jobs.plan_limits).
    if "memory_mb" not in form.errors:
        validate.size(data["memory_mb"] * MIB, minimum=MEMORY_MIN)
    if "disk_mb" not in form.errors:
        validate.size(data["disk_mb"] * MIB, minimum=DISK_MIN, maximum=DISK_MAX)


@DB
@given(name=TEMPLATE_NAMES)
@example(name="Busybox")
@example(name="debian_12")
def test_template_names(world, name):
    form = TemplateForm({"name": name, "display_name": "Some system"})
    form.is_valid()
    if "name" not in form.errors:
        assert engine_accepts(validate.template_name, form.cleaned_data["name"])


@st.composite
def pools(draw) -> tuple[str, str]:
    """A network in CIDR form and a gateway, mostly inside it."""
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    address = draw(st.ip_addresses(v=version))
    prefix = draw(st.integers(min_value=max(0, bits - 20), max_value=bits))
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    offset = draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    gateway = draw(st.one_of(st.just(network.network_address + offset), st.ip_addresses(v=version)))
    return str(network), str(gateway)


@pytest.mark.both_databases
@DB
@given(pool=pools())
@example(pool=("198.19.200.0/31", "198.19.200.0"))
@example(pool=("198.19.200.8/32", "198.19.200.8"))
@example(pool=("127.0.0.0/24", "127.0.0.1"))
@example(pool=("fe80::/120", "fe80::1"))
@example(pool=("224.0.0.0/24", "224.0.0.1"))
def test_address_pools_hand_out_addresses_the_engine_takes(world, pool):
    network, gateway = pool
    IPPool.objects.exclude(pk=world.pool.pk).delete()
    form = PoolForm({"name": "new", "node": world.node.pk, "network": network, "gateway": gateway})
    assume(form.is_valid())
    made = form.save()
    prefix = made.prefixlen
    version = made.ip_network.version
    validate.gateway_interface(f"{made.gateway}/{prefix}", version=version)
    hosts = made.iter_hosts()
    first = next(hosts, None)
    assert first is not None, f"pool {network} has no address to hand out"
    last = made.ip_network.broadcast_address - (1 if version == 4 and prefix < 31 else 0)
    if last == ipaddress.ip_address(made.gateway):
        last -= 1
    for host in {first, last}:
        assert engine_accepts(validate.guest_address, f"{host}/{prefix}")
    made.delete()


# -- names in URLs: the guest's accounts and services ------------------------------------------


@pytest.fixture
def guest(world):
    """A running server of acme's, signed-in alice, and a way to plant an account or a service
    of any name in it (the guest's root may name them as he likes; the worker lists them)."""
    server = VirtualServer.objects.create(
        tenant=world.acme, name="web", hostname="web.acme.test", plan=world.small, template=world.busybox,
        node=world.node, state=State.RUNNING,
    )
    client = Client()
    client.force_login(world.alice)
    return server, client



def _settle_earlier_examples(server) -> None:
    """Each example is a new request: the operations earlier examples queued count as done
    (a pending identical one would be returned instead of queued, and a tenant's pending
    operations are capped)."""
    Operation.objects.filter(server=server).update(status=OperationStatus.SUCCEEDED)

@DB
@given(name=SERVICE_NAMES)
@example(name="-rf")
@example(name="../../etc")
def test_service_actions_queue_only_names_the_engine_takes(world, guest, name):
    server, client = guest
    name = name[:64]
    assume(name and "/" not in name and "\x00" not in name and name not in (".", ".."))
    Service.objects.filter(server=server).delete()
    Service.objects.create(server=server, name=name, state="run")
    _settle_earlier_examples(server)
    queued = len(world.queued)
    client.post(f"/servers/{server.uuid}/services/{_quote(name)}/restart/")
    made = world.queued[queued:]
    for operation in made:
        assert engine_accepts(validate.service_name, operation.params["service"])
    # The control: a name the engine takes is queued (so the view was reached at all).
    assert bool(made) == engine_accepts(validate.service_name, name)


@DB
@given(name=USER_NAMES)
@example(name="-rf")
@example(name="Www")
@example(name="bin")
def test_account_actions_queue_only_names_the_engine_takes(world, guest, name):
    server, client = guest
    name = name[:32]
    assume(name and "/" not in name and "\x00" not in name and name not in (".", ".."))
    GuestAccount.objects.filter(server=server).delete()
    _settle_earlier_examples(server)
    account = GuestAccount(server=server, name=name, uid=1000, home="/home/x")
    account.shell = "/bin/sh"  # an attribute: ruff's S604 reads a shell= keyword as subprocess's
    account.save()
    queued = len(world.queued)
    path = f"/servers/{server.uuid}/accounts/{_quote(name)}"
    client.post(f"{path}/delete/")
    client.post(f"{path}/password/", {f"pw-{name}-password": "a good password"})
    made = world.queued[queued:]
    for operation in made:
        assert engine_accepts(validate.user_name, operation.params["account"], allow_reserved=True), operation.kind
    # The control: a name the engine takes is queued (so the views were reached): the password
    # for any name it takes, the delete only where it would delete the account (not a reserved
    # one such as root or bin: no Delete button, 403).
    kinds = [operation.kind for operation in made]
    assert kinds.count(OperationKind.ACCOUNT_PASSWORD) == engine_accepts(validate.user_name, name, allow_reserved=True)
    assert kinds.count(OperationKind.ACCOUNT_DELETE) == engine_accepts(validate.user_name, name)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
