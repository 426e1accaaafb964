"""What the API shows (output serializers) and what it takes (input serializers).

Inputs are checked twice, each for its own reason: the serializer checks types and shapes (and
describes them in the OpenAPI schema), then the panel's own form checks what the value may be
(the engine's validators, unique names, quotas' wording) through `run_form`, so the API and the
pages accept exactly the same input and say the same thing about what they refuse. No domain
decision is made here; vservers.actions makes them.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Membership, Tenant
from vservers.models import ON_NODE, OperationKind, OperationStatus, State
from vservers.nodes import status as node_status

from .models import ApiToken

# -- forms as validators ------------------------------------------------------------------------


def run_form(form: forms.BaseForm) -> dict:
    """FORM's cleaned data, or a ValidationError with its messages by field (the form's
    non-field errors as "non_field_errors", DRF's name for them)."""
    if form.is_valid():
        return form.cleaned_data
    errors: dict[str, list[str]] = {}
    for field, messages in form.errors.items():
        errors["non_field_errors" if field == NON_FIELD_ERRORS else field] = [str(m) for m in messages]
    raise serializers.ValidationError(errors)


def by_name(form: forms.BaseForm, **fields: str) -> forms.BaseForm:
    """Let FORM's choice fields take the API's names (a plan's name, a tenant's slug) where
    the page's select sends a primary key."""
    for field, attribute in fields.items():
        form.fields[field].to_field_name = attribute  # type: ignore[attr-defined]
    return form


# -- outputs ------------------------------------------------------------------------------------


class PlanBriefSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField()


class PlanSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField()
    cpus = serializers.DecimalField(max_digits=5, decimal_places=2, coerce_to_string=True)
    memory_mb = serializers.IntegerField()
    disk_mb = serializers.IntegerField()
    pids = serializers.IntegerField()
    is_active = serializers.BooleanField()
    description = serializers.CharField(allow_blank=True)


class TemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField(allow_blank=True)
    description = serializers.CharField(allow_blank=True)
    is_active = serializers.BooleanField()


class UsageSerializer(serializers.Serializer):
    cpu_seconds = serializers.FloatField()
    memory_bytes = serializers.IntegerField()
    pids = serializers.IntegerField()
    disk_used_bytes = serializers.IntegerField()
    sampled_at = serializers.DateTimeField(allow_null=True)


# Server actions as the API names them, and the operation kind each asks for.
SERVER_ACTIONS = {
    "start": OperationKind.START,
    "stop": OperationKind.STOP,
    "restart": OperationKind.RESTART,
    "delete": OperationKind.DELETE,
    "refresh": OperationKind.REFRESH,
    "retry": OperationKind.PROVISION,
}


class ServerActionsSerializer(serializers.Serializer):
    """Which actions the server's state allows now (models.transitions), as the page's buttons."""

    start = serializers.BooleanField()
    stop = serializers.BooleanField()
    restart = serializers.BooleanField()
    delete = serializers.BooleanField()
    refresh = serializers.BooleanField()
    retry = serializers.BooleanField()
    cancel = serializers.BooleanField()
    change_plan = serializers.BooleanField()
    # Reinstall, rescue and root's password (api/views/rescue.py).
    reinstall = serializers.BooleanField()
    rescue = serializers.BooleanField()
    rescue_leave = serializers.BooleanField()
    root_password = serializers.BooleanField()


class ServerSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField()
    hostname = serializers.CharField()
    tenant = serializers.CharField(source="tenant.slug")
    state = serializers.SerializerMethodField(
        help_text='"unknown" while its node is unreachable (no heartbeat): what it last was is not known to hold')
    state_reason = serializers.CharField(allow_blank=True)
    plan = PlanBriefSerializer()
    requested_plan = PlanBriefSerializer(allow_null=True, help_text="a plan change waiting for an operator")
    template = serializers.CharField(source="template.name")
    node = serializers.SerializerMethodField(help_text="operators only; null for tenants")
    addresses = serializers.SerializerMethodField()
    autostart = serializers.BooleanField()
    in_progress = serializers.BooleanField()
    actions = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()
    created = serializers.DateTimeField()
    updated = serializers.DateTimeField()

    @extend_schema_field(serializers.ChoiceField(choices=node_status.SHOWN_STATE_CHOICES))
    def get_state(self, server) -> str:
        return node_status.shown_state(server.state, node_status.server_online(server))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_node(self, server) -> str | None:
        request = self.context.get("request")
        if request is None or not request.user.is_staff or server.node is None:
            return None
        return server.node.name

    def get_addresses(self, server) -> list[str]:
        return [f"{a.address}/{a.pool.prefixlen}" for a in server.addresses.all()]

    @extend_schema_field(ServerActionsSerializer)
    def get_actions(self, server) -> dict:
        found = {name: server.may(kind) for name, kind in SERVER_ACTIONS.items()}
        found["retry"] = server.state == State.ERROR and found["retry"]
        found["cancel"] = server.state == State.REQUESTED
        found["change_plan"] = server.may(OperationKind.CHANGE_PLAN)
        found.update({name: server.may(kind) for name, kind in (
            ("reinstall", OperationKind.REINSTALL), ("rescue", OperationKind.RESCUE_ENTER),
            ("rescue_leave", OperationKind.RESCUE_LEAVE), ("root_password", OperationKind.ROOT_PASSWORD))})
        return found

    @extend_schema_field(UsageSerializer(allow_null=True))
    def get_usage(self, server) -> dict | None:
        if server.state not in ON_NODE and server.sampled_at is None:
            return None
        return UsageSerializer(server).data


class RejectedSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField()
    hostname = serializers.CharField()
    reason = serializers.CharField(source="state_reason", allow_blank=True)
    rejected = serializers.DateTimeField(source="updated")


class OperationSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    server = serializers.UUIDField(source="server.uuid")
    server_name = serializers.CharField(source="server.name")
    kind = serializers.ChoiceField(choices=OperationKind.choices)
    status = serializers.ChoiceField(choices=OperationStatus.choices)
    subject = serializers.CharField(allow_blank=True, help_text="the account or service it acts on, if any")
    requested_by = serializers.SerializerMethodField()
    retry_of = serializers.SerializerMethodField(help_text="the failed operation this one retries, if any")
    created = serializers.DateTimeField()
    started = serializers.DateTimeField(allow_null=True)
    finished = serializers.DateTimeField(allow_null=True)
    output = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True, help_text="what went wrong, in one plain sentence")
    detail = serializers.CharField(
        allow_blank=True, required=False,
        help_text="what went wrong in full (the engine's message, the traceback): operators only, absent for tenants",
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_requested_by(self, operation) -> str | None:
        return operation.requested_by.get_username() if operation.requested_by else None

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_retry_of(self, operation) -> str | None:
        return str(operation.retry_of.uuid) if operation.retry_of_id else None

    def to_representation(self, operation) -> dict:
        data = super().to_representation(operation)
        request = self.context.get("request")
        if request is None or not request.user.is_staff:
            data.pop("detail", None)
        return data


class AccountSerializer(serializers.Serializer):
    name = serializers.CharField()
    uid = serializers.IntegerField()
    home = serializers.CharField(allow_blank=True)
    shell = serializers.CharField(allow_blank=True)
    is_system = serializers.BooleanField()


class ServiceSerializer(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    seconds = serializers.IntegerField(source="seconds_now", allow_null=True)  # in its state, now


class TenantSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    contact_email = serializers.CharField(allow_blank=True)
    max_servers = serializers.IntegerField()
    max_cpus = serializers.DecimalField(max_digits=6, decimal_places=2)
    max_memory_mb = serializers.IntegerField()
    max_disk_mb = serializers.IntegerField()
    created = serializers.DateTimeField()


class QuotaUsageSerializer(serializers.Serializer):
    servers = serializers.IntegerField()
    cpus = serializers.DecimalField(max_digits=8, decimal_places=2)
    memory_mb = serializers.IntegerField()
    disk_mb = serializers.IntegerField()


class MemberSerializer(serializers.Serializer):
    user_id = serializers.IntegerField(source="user.pk", help_text="names the member in .../members/{user_id}/")
    username = serializers.CharField(source="user.username")
    email = serializers.CharField(source="user.email", allow_blank=True)
    role = serializers.ChoiceField(choices=Membership.ROLES)


class NewMemberSerializer(MemberSerializer):
    password = serializers.CharField(
        allow_null=True, help_text="the generated password, shown this once; null when one was given"
    )


class TokenBriefSerializer(serializers.Serializer):
    name = serializers.CharField()
    prefix = serializers.CharField()
    scope = serializers.ChoiceField(choices=ApiToken.SCOPES)
    expires = serializers.DateTimeField()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_operator = serializers.BooleanField()
    tenant = serializers.CharField(allow_null=True, help_text="the tenant's slug; null for operators")
    role = serializers.CharField(allow_null=True)
    can_act = serializers.BooleanField(help_text="whether this user, with this token, may change anything")
    quota = TenantSerializer(allow_null=True)
    usage = QuotaUsageSerializer(allow_null=True)
    token = TokenBriefSerializer(allow_null=True, help_text="the token of this request; null for a session")


class NodeSerializer(serializers.Serializer):
    name = serializers.CharField()
    is_active = serializers.BooleanField()
    cpus = serializers.IntegerField()
    memory_mb = serializers.IntegerField()
    disk_mb = serializers.IntegerField()
    cpu_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="CPU overcommit allowed")
    memory_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="memory overcommit allowed")
    disk_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="disk overcommit allowed")
    last_seen = serializers.DateTimeField(allow_null=True, help_text="its worker's last heartbeat")
    status = serializers.SerializerMethodField(
        help_text='"unreachable": no heartbeat within PANEL_NODE_TIMEOUT_SECONDS; its servers\' state is "unknown"')
    draining = serializers.BooleanField(help_text="placement puts no new server here")
    servers = serializers.IntegerField(source="server_count")
    cpus_allocated = serializers.DecimalField(max_digits=8, decimal_places=2)
    memory_allocated_mb = serializers.IntegerField(source="memory_allocated")
    disk_allocated_mb = serializers.IntegerField(source="disk_allocated")


    @extend_schema_field(serializers.ChoiceField(choices=[("online", "online"), ("unreachable", "unreachable")]))
    def get_status(self, node) -> str:
        return "online" if node.is_online else "unreachable"


class PoolSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    node = serializers.CharField(source="node.name")
    network = serializers.CharField()
    gateway = serializers.CharField()
    size = serializers.IntegerField(help_text="how many addresses it hands out")
    used = serializers.IntegerField()
    shared_with = serializers.SerializerMethodField(
        help_text="other nodes on the same layer-2 network that may allocate from it too")

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_shared_with(self, pool) -> list[str]:
        return [node.name for node in pool.shared_with.all()]  # prefetched


class AddressSerializer(serializers.Serializer):
    address = serializers.CharField()
    server = serializers.UUIDField(source="server.uuid", allow_null=True)
    tenant = serializers.CharField(source="server.tenant.slug", allow_null=True)
    allocated = serializers.DateTimeField()


class AuditEntrySerializer(serializers.Serializer):
    created = serializers.DateTimeField()
    actor = serializers.CharField(source="actor.username", allow_null=True)
    tenant = serializers.CharField(source="tenant.slug", allow_null=True)
    action = serializers.CharField()
    object_type = serializers.CharField(allow_blank=True)
    object_id = serializers.CharField(allow_blank=True)
    object_repr = serializers.CharField(allow_blank=True)
    remote_addr = serializers.CharField(allow_null=True)
    details = serializers.DictField()


class PlanChangeResultSerializer(serializers.Serializer):
    requested_plan = serializers.CharField(allow_null=True, help_text="the plan waiting for an operator; null: none")


# -- inputs -------------------------------------------------------------------------------------


class _ServerInput(serializers.Serializer):
    name = serializers.CharField(max_length=32, help_text="lowercase letters, digits and '-', starting with a letter")
    hostname = serializers.CharField(max_length=253)
    plan = serializers.CharField(max_length=60, help_text="a plan's name (GET /api/v1/plans/)")
    template = serializers.CharField(max_length=32, help_text="a template's name (GET /api/v1/templates/)")


class ServerRequestInput(_ServerInput):
    ssh_key = serializers.CharField(required=False, allow_blank=True, max_length=16384, default="",
                                    help_text="an OpenSSH public key for root, added at provisioning")
    root_password = serializers.CharField(
        max_length=128, required=False, allow_blank=True, default="", trim_whitespace=False,
        help_text="root's password, set at provisioning; kept only as a SHA-512 crypt hash until then",
    )


class ServerCreateInput(_ServerInput):
    tenant = serializers.CharField(max_length=40, help_text="the tenant's slug")
    node = serializers.CharField(max_length=40, required=False, allow_blank=True,
                                 help_text="a node's name (pinned: the placement rules are not applied); "
                                 "empty: placement chooses the node")
    autostart = serializers.BooleanField(default=True)


class PlanChangeInput(serializers.Serializer):
    plan = serializers.CharField(max_length=60, help_text="the plan's name; the current plan withdraws a request")


class AccountAddInput(serializers.Serializer):
    user = serializers.CharField(max_length=32)
    password = serializers.CharField(max_length=128, required=False, allow_blank=True, trim_whitespace=False)
    ssh_key = serializers.CharField(required=False, allow_blank=True, max_length=16384)


class AccountPasswordInput(serializers.Serializer):
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class AccountKeyInput(serializers.Serializer):
    ssh_key = serializers.CharField(max_length=16384)


class ApproveInput(serializers.Serializer):
    node = serializers.CharField(max_length=40, required=False, allow_blank=True,
                                 help_text="a node's name (pinned: the placement rules are not applied); "
                                 "empty: placement chooses the node")


class ApprovalSerializer(OperationSerializer):
    """The provisioning operation an approval queued, with where it was placed and why."""

    node = serializers.CharField(help_text="the node the server was placed on")
    placement = serializers.CharField(help_text="why this node: the one pinned, or what placement found")
    warnings = serializers.ListField(child=serializers.CharField(),
                                     help_text="the ratio limits a pinned node passes with this server")

    def to_representation(self, approval) -> dict:  # an actions.Approval
        data = OperationSerializer(approval.operation, context=self.context).data
        return {**data, "node": approval.placement.node.name, "placement": approval.placement.reason,
                "warnings": approval.warnings}


class RejectInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500, help_text="the tenant sees this reason")


def _tenant_default(field: str):
    """The model's default quota, as the operator's form starts with it."""
    model_field = Tenant._meta.get_field(field)
    assert isinstance(model_field, models.Field)
    return model_field.default


class TenantInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    slug = serializers.CharField(max_length=40)
    contact_email = serializers.CharField(max_length=254, required=False, allow_blank=True, default="")
    max_servers = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=_tenant_default("max_servers"))
    max_cpus = serializers.DecimalField(max_digits=6, decimal_places=2, min_value=0,
                                        default=_tenant_default("max_cpus"))
    max_memory_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1,
                                             default=_tenant_default("max_memory_mb"))
    max_disk_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=_tenant_default("max_disk_mb"))


class MemberAddInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    email = serializers.CharField(max_length=254, required=False, allow_blank=True, default="")
    role = serializers.ChoiceField(choices=Membership.ROLES, default=Membership.ADMIN)
    password = serializers.CharField(max_length=128, required=False, allow_blank=True, default="",
                                     trim_whitespace=False, help_text="empty: one is generated and shown once")


class MemberRoleInput(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.ROLES)


class NodeInput(serializers.Serializer):
    cpus = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    memory_mb = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    disk_mb = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    cpu_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="CPU overcommit allowed")
    memory_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="memory overcommit allowed")
    disk_ratio = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="disk overcommit allowed")
    is_active = serializers.BooleanField(help_text="takes new servers")
    draining = serializers.BooleanField(help_text="placement puts no new server here; its servers stay")


class PlanInput(serializers.Serializer):
    name = serializers.CharField(max_length=60)
    cpus = serializers.DecimalField(max_digits=5, decimal_places=2)
    memory_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    disk_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    pids = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=256)
    is_active = serializers.BooleanField(default=True)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class TemplateInput(serializers.Serializer):
    name = serializers.CharField(max_length=32, help_text="the engine's template name, e.g. busybox")
    display_name = serializers.CharField(max_length=60)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    is_active = serializers.BooleanField(default=True)


class TemplateChangeInput(serializers.Serializer):
    is_active = serializers.BooleanField(help_text="offered to tenants for new servers")


class PoolInput(serializers.Serializer):
    name = serializers.CharField(max_length=60)
    node = serializers.CharField(max_length=40, help_text="the node's name")
    network = serializers.CharField(max_length=50, help_text="e.g. 198.18.0.0/16")
    gateway = serializers.CharField(max_length=45, help_text="the node's bridge address in this network")
    shared_with = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, default=list,
        help_text="names of other nodes on the same layer-2 network that may allocate from it too")


class PoolShareInput(serializers.Serializer):
    shared_with = serializers.ListField(
        child=serializers.CharField(max_length=40),
        help_text="names of the other nodes that may allocate from it (all of them: the list replaces the old)")


class TemplateBuildSerializer(serializers.Serializer):
    """One build of a template on a node (operators only): output and error as the Templates
    page shows them, and the operator's detail."""

    uuid = serializers.UUIDField()
    template = serializers.CharField(source="template.name")
    node = serializers.CharField(source="node.name")
    status = serializers.CharField()
    created = serializers.DateTimeField()
    started = serializers.DateTimeField(allow_null=True)
    finished = serializers.DateTimeField(allow_null=True)
    output = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    detail = serializers.CharField(allow_blank=True)


class TemplateBuildOutcome(serializers.Serializer):
    """What asking for a build did: a build queued per node, or why a node got none."""

    queued = TemplateBuildSerializer(many=True)
    refused = serializers.ListField(child=serializers.CharField())
