"""Forms of the operator area: filters, approvals, and the catalogue an operator keeps
(tenants and their members, plans, templates, address pools, servers created directly)."""

from __future__ import annotations

import ipaddress
import secrets
import uuid

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db.models import Q

from accounts.models import Membership, Tenant

from .engine import validate as engine_validate
from .engine.errors import InvalidInput
from .forms import engine_check
from .models import IPPool, Node, OperationKind, OperationStatus, Plan, State, Template, VirtualServer


def validate_server_name(value: str) -> None:
    engine_check(engine_validate.server_name, value)


def validate_hostname(value: str) -> None:
    engine_check(engine_validate.hostname, value)


def validate_template_name(value: str) -> None:
    engine_check(engine_validate.template_name, value)


# -- lists: filters (GET) ------------------------------------------------------------------


class ServerFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search", max_length=100,
                        widget=forms.TextInput(attrs={"placeholder": "name or hostname", "type": "search"}))
    tenant = forms.ModelChoiceField(Tenant.objects.all(), required=False, to_field_name="slug",
                                    empty_label="all tenants")
    state = forms.ChoiceField(choices=[("", "all states"), *State.choices], required=False)
    node = forms.ModelChoiceField(Node.objects.all(), required=False, to_field_name="name", empty_label="all nodes")

    def filter(self, servers):
        """SERVERS narrowed by the valid filters (an invalid one is ignored, and shown)."""
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("q"):
            servers = servers.filter(Q(name__icontains=data["q"]) | Q(hostname__icontains=data["q"]))
        if data.get("tenant"):
            servers = servers.filter(tenant=data["tenant"])
        if data.get("state"):
            servers = servers.filter(state=data["state"])
        if data.get("node"):
            servers = servers.filter(node=data["node"])
        return servers


# The bulk actions of the server list (vservers.actions.BULK_ACTIONS), as the page names them.
BULK_LABELS = {"start": "Start", "stop": "Stop", "restart": "Restart", "retry": "Retry", "delete": "Delete"}


class BulkForm(forms.Form):
    """A bulk action on the operator's server list: the action, and the servers ticked (their
    UUIDs, "server") or all that match the filter posted along with it ("all", with
    ServerFilterForm's fields). "confirmed" says the count was confirmed already (by the page's
    dialog, or by the confirmation page the panel shows without script)."""

    action = forms.ChoiceField(choices=list(BULK_LABELS.items()))
    all = forms.BooleanField(required=False)
    confirmed = forms.BooleanField(required=False)

    def clean(self):
        data = super().clean()
        chosen = []
        for value in self.data.getlist("server") if hasattr(self.data, "getlist") else []:
            try:
                chosen.append(uuid.UUID(value))
            except ValueError:
                raise ValidationError("A chosen server is not one of the list.") from None
        data["servers"] = chosen
        if not chosen and not data.get("all"):
            raise ValidationError("Choose the servers first: tick them, or all that match the filter.")
        return data

    @property
    def label(self) -> str:
        return BULK_LABELS[self.cleaned_data["action"]]

    def chosen(self, listing, filtered) -> list:
        """The servers chosen: every one of FILTERED (LISTING narrowed by the filter), or the
        ticked ones of LISTING."""
        if self.cleaned_data["all"]:
            return list(filtered)
        return list(listing.filter(uuid__in=self.cleaned_data["servers"]))

    def question(self, count: int) -> str:
        """The one confirmation, naming the count: "Stop 4 servers?"."""
        servers = "server" if count == 1 else "servers"
        if self.cleaned_data["action"] == "delete":
            return f"Delete {count} {servers} and everything in {'it' if count == 1 else 'them'}?"
        return f"{self.label} {count} {servers}?"


class OperationFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "all statuses"), *OperationStatus.choices], required=False)
    kind = forms.ChoiceField(choices=[("", "all kinds"), *OperationKind.choices], required=False)

    def filter(self, operations):
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("status"):
            operations = operations.filter(status=data["status"])
        if data.get("kind"):
            operations = operations.filter(kind=data["kind"])
        return operations


class AuditFilterForm(forms.Form):
    tenant = forms.ModelChoiceField(Tenant.objects.all(), required=False, to_field_name="slug",
                                    empty_label="all tenants")
    action = forms.CharField(required=False, max_length=60,
                             widget=forms.TextInput(attrs={"placeholder": "e.g. server. or auth.login"}))

    def filter(self, entries):
        data = self.cleaned_data if self.is_valid() else {}
        if data.get("tenant"):
            entries = entries.filter(tenant=data["tenant"])
        if data.get("action"):
            entries = entries.filter(action__startswith=data["action"])
        return entries


# -- approvals -----------------------------------------------------------------------------


class ApproveForm(forms.Form):
    node = forms.ModelChoiceField(Node.objects.filter(is_active=True), required=False,
                                  empty_label="chosen by placement", to_field_name="name")


class RejectForm(forms.Form):
    reason = forms.CharField(max_length=500, strip=True, help_text="The tenant sees this reason.",
                             widget=forms.TextInput(attrs={"placeholder": "shown to the tenant"}))


# -- servers -------------------------------------------------------------------------------


class ServerCreateForm(forms.ModelForm):
    """A server an operator sets up for a tenant; it is approved as soon as it is saved."""

    node = forms.ModelChoiceField(Node.objects.filter(is_active=True), required=False,
                                  empty_label="chosen by placement")

    class Meta:
        model = VirtualServer
        fields = ["tenant", "name", "hostname", "plan", "template", "node", "autostart"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan"].queryset = Plan.objects.filter(is_active=True)
        self.fields["template"].queryset = Template.objects.filter(is_active=True)
        self.fields["name"].validators.append(validate_server_name)
        self.fields["hostname"].validators.append(validate_hostname)

    def clean_hostname(self) -> str:
        # What the engine will use: it drops a trailing dot ("a." is "a").
        return engine_validate.hostname(self.cleaned_data["hostname"])

    def clean(self):
        data = super().clean()
        tenant, name = data.get("tenant"), data.get("name")
        # The model's constraint covers live servers only; say it in words before the database does.
        if tenant and name and VirtualServer.objects.visible().filter(tenant=tenant, name=name).exists():
            self.add_error("name", f"{tenant} already has a server named {name}")
        return data


# -- tenants and members -------------------------------------------------------------------


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["name", "slug", "contact_email", "max_servers", "max_cpus", "max_memory_mb", "max_disk_mb"]
        labels = {"max_cpus": "Max CPUs", "max_memory_mb": "Max memory (MB)", "max_disk_mb": "Max disk (MB)"}


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=Membership.ROLES, initial=Membership.ADMIN)
    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to generate one; it is shown once.",
    )

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        user_model = get_user_model()
        user_model.username_validator(username)
        if user_model.objects.filter(username__iexact=username).exists():
            raise ValidationError("a user with this name exists already")
        return username

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("username"):
            user = get_user_model()(username=data["username"], email=data.get("email", ""))
            try:
                validate_password(data["password"], user)
            except ValidationError as exc:
                self.add_error("password", exc)
        return data

    def save(self, tenant: Tenant) -> tuple[Membership, str | None]:
        """Create the user and the membership; return the generated password, if any."""
        generated = None if self.cleaned_data["password"] else secrets.token_urlsafe(12)
        user = get_user_model().objects.create_user(
            self.cleaned_data["username"], self.cleaned_data["email"], self.cleaned_data["password"] or generated
        )
        membership = Membership.objects.create(user=user, tenant=tenant, role=self.cleaned_data["role"])
        return membership, generated


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.ROLES)


# -- catalogue -----------------------------------------------------------------------------


def _at_least(low: int):
    def check(value) -> None:
        if value is not None and value < low:
            raise ValidationError(f"must be at least {low}")

    return check


def _engine_size(maximum: int):
    """A size in MB that the engine takes in bytes (vservers.jobs.plan_limits)."""

    def check(value) -> None:
        if value is not None:
            try:
                engine_validate.size(value * 2**20, maximum=maximum)
            except InvalidInput:
                raise ValidationError(f"must be at most {maximum // 2**20} MB") from None

    return check


def _engine_rule(check):
    """The engine's validator as a field's, keeping its reason: an IntegerField would replace
    the message of an error coded "invalid" (engine_check's) with "Enter a whole number"."""

    def run(value) -> None:
        try:
            check(value)
        except InvalidInput as exc:
            message = str(exc)
            raise ValidationError(message[:1].upper() + message[1:], code="engine") from None

    return run


def _io_mbps(value) -> None:
    """A plan's MB/s, which the engine takes in bytes per second (vservers.jobs.plan_limits)."""
    try:
        engine_validate.io_bps(value * 10**6)
    except InvalidInput:
        low, high = engine_validate.MIN_IO_BPS // 10**6, engine_validate.MAX_IO_BPS // 10**6
        raise ValidationError(f"Must be between {low} and {high} MB/s; leave it empty for no limit",
                              code="engine") from None


class _IntegerOrDefault(forms.IntegerField):
    """Empty means DEFAULT (the model field's): a form or client that leaves the field out
    keeps it, and it does not count as changed."""

    def __init__(self, *, default: int, **kwargs) -> None:
        self.default = default
        super().__init__(**kwargs)

    def to_python(self, value):
        number = super().to_python(value)
        return self.default if number is None else number


class PlanForm(forms.ModelForm):
    io_weight = _IntegerOrDefault(
        default=Plan._meta.get_field("io_weight").get_default(), required=False, label="Disk I/O weight",
        help_text=Plan._meta.get_field("io_weight").help_text + "; empty: 100",
    )

    class Meta:
        model = Plan
        fields = ["name", "cpus", "memory_mb", "disk_mb", "pids", "io_weight", "io_read_mbps", "io_write_mbps",
                  "io_read_iops", "io_write_iops", "is_active", "description"]
        labels = {"cpus": "CPUs", "memory_mb": "Memory (MB)", "disk_mb": "Disk (MB)", "pids": "Processes",
                  "io_read_mbps": "Disk reads (MB/s)",
                  "io_write_mbps": "Disk writes (MB/s)", "io_read_iops": "Disk reads (operations/s)",
                  "io_write_iops": "Disk writes (operations/s)", "is_active": "Offered to tenants"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["cpus"].validators.append(lambda value: engine_check(engine_validate.cpus, value))
        self.fields["pids"].validators.append(lambda value: engine_check(engine_validate.pids, value))
        # Below these a guest's init and a filesystem do not fit.
        self.fields["memory_mb"].validators.append(_at_least(16))
        self.fields["disk_mb"].validators.append(_at_least(64))
        # Above these the engine refuses the plan's limits (its CLI's bounds; the disk is one ext4 image).
        self.fields["memory_mb"].validators.append(_engine_size(maximum=2**50))
        self.fields["disk_mb"].validators.append(_engine_size(maximum=2**44))
        # The engine's bounds for disk I/O (vservers.jobs.plan_limits turns MB/s into bytes/s).
        self.fields["io_weight"].validators.append(_engine_rule(engine_validate.io_weight))
        for name in ("io_read_mbps", "io_write_mbps"):
            self.fields[name].validators.append(_io_mbps)
        for name in ("io_read_iops", "io_write_iops"):
            self.fields[name].validators.append(_engine_rule(engine_validate.io_iops))


class NodeForm(forms.ModelForm):
    """What a node physically has and its overcommit ratios (vservers.capacity)."""

    class Meta:
        model = Node
        fields = ["cpus", "memory_mb", "disk_mb", "cpu_ratio", "memory_ratio", "disk_ratio", "is_active",
                  "draining"]
        labels = {"cpus": "CPUs", "memory_mb": "Memory (MB)", "disk_mb": "Disk (MB)", "cpu_ratio": "CPU overcommit",
                  "memory_ratio": "Memory overcommit", "disk_ratio": "Disk overcommit",
                  "is_active": "Takes new servers", "draining": "Draining"}
        help_texts = {"draining": "placement puts no new server here; the servers it has stay (evacuate moves them)"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("cpus", "memory_mb", "disk_mb"):
            self.fields[name].validators.append(_at_least(1))


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = ["name", "display_name", "description", "is_active"]
        labels = {"is_active": "Offered to tenants"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].validators.append(validate_template_name)
        self.fields["name"].help_text = "the engine's template name, e.g. busybox"


def _last_host(network):
    """What hosts() would end with, without walking it (an IPv6 /64 is long)."""
    if network.num_addresses == 1:
        return network.network_address
    if network.version == 4 and network.prefixlen < 31:
        return network.broadcast_address - 1
    return network.broadcast_address


class PoolShareForm(forms.ModelForm):
    """The other nodes a pool is shared with (PoolForm's field, after the pool is made). A node
    whose servers hold addresses of the pool keeps it: taking it away would leave them with
    addresses their node may no longer give."""

    class Meta:
        model = IPPool
        fields = ["shared_with"]
        widgets = {"shared_with": forms.CheckboxSelectMultiple}
        labels = {"shared_with": "Shared with"}

    def clean_shared_with(self):
        shared = self.cleaned_data["shared_with"]
        pool = self.instance
        if pool.node_id in {node.pk for node in shared}:
            raise forms.ValidationError(f"node {pool.node.name} is the pool's own node; share it with other nodes")
        dropped = pool.shared_with.exclude(pk__in=[node.pk for node in shared])
        holding = sorted(pool.addresses.filter(server__node__in=dropped).values_list("server__node__name", flat=True)
                         .distinct())
        if holding:
            raise forms.ValidationError(f"servers on {', '.join(holding)} hold addresses of this pool; "
                                        "the pool stays shared with " + ("it" if len(holding) == 1 else "them"))
        return shared


class PoolForm(forms.ModelForm):
    class Meta:
        model = IPPool
        fields = ["name", "node", "network", "gateway", "shared_with"]
        widgets = {"shared_with": forms.CheckboxSelectMultiple}
        labels = {"shared_with": "Shared with"}
        help_texts = {"shared_with": "other nodes on the same layer-2 network: they may give its addresses to "
                                     "their servers too, and a server moving between them keeps its addresses"}

    def clean(self):
        data = super().clean()
        node, shared = data.get("node"), data.get("shared_with")
        if node is not None and shared is not None and node in shared:
            self.add_error("shared_with", f"node {node.name} is the pool's own node; share it with other nodes")
        network = data.get("network")
        if network and not self.has_error("network"):
            try:
                new = ipaddress.ip_network(network, strict=True)
            except ValueError:
                return data  # the field's validator reports it
            # Addresses are unique across pools, so two overlapping pools would hand out each
            # other's addresses and fail on the constraint instead.
            for other in IPPool.objects.exclude(pk=self.instance.pk).only("name", "network"):
                theirs = ipaddress.ip_network(other.network)
                if theirs.version == new.version and theirs.overlaps(new):
                    self.add_error("network", f"overlaps pool {other.name} ({other.network})")
                    break
            else:
                self._check_with_the_engine(new, data.get("gateway"))
        return data

    def _check_with_the_engine(self, network, gateway) -> None:
        """The engine must take the addresses this pool hands out (its first and last: the
        engine refuses loopback, link-local, multicast, a network's own and broadcast address,
        and single-address networks) and the gateway with the network's prefix."""
        hosts = [host for host in (next(iter(network.hosts()), None), _last_host(network)) if host is not None]
        for host in hosts:
            try:
                engine_validate.guest_address(f"{host}/{network.prefixlen}")
            except InvalidInput as exc:
                self.add_error("network", f"the engine cannot give servers these addresses: {exc}")
                return
        if not hosts:
            self.add_error("network", "this network has no address to hand out")
        if gateway and not self.has_error("gateway"):
            try:
                engine_validate.gateway_interface(f"{gateway}/{network.prefixlen}", version=network.version)
            except InvalidInput as exc:
                self.add_error("gateway", str(exc))

    def _post_clean(self):
        # IPPool.clean() parses network and gateway unguarded: with a gateway that is not an
        # address it would raise ValueError (a 500). The fields' own errors say enough then.
        if self.has_error("network") or self.has_error("gateway"):
            return
        super()._post_clean()
