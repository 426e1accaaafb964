"""The operator's endpoints (/api/v1/operator/...): staff only (403 for anyone else, as the
operator's pages), checked by the operator's own forms (vservers.operator_forms) and saved by
vservers.actions, which records the audit entries."""

from __future__ import annotations

from django.db.models import Count, DecimalField, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.forms.models import model_to_dict
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.models import AuditEntry, Membership, Tenant
from vservers import access, actions
from vservers.models import TERMINAL, IPAddress, IPPool, Node, Plan, State, Template, TemplateBuild, VirtualServer
from vservers.operator_forms import (
    ApproveForm,
    AuditFilterForm,
    MemberAddForm,
    MemberRoleForm,
    NodeForm,
    PlanForm,
    PoolForm,
    PoolShareForm,
    RejectForm,
    ServerCreateForm,
    TemplateForm,
    TenantForm,
)

from ..serializers import (
    AddressSerializer,
    ApprovalSerializer,
    ApproveInput,
    AuditEntrySerializer,
    MemberAddInput,
    MemberRoleInput,
    MemberSerializer,
    NewMemberSerializer,
    NodeInput,
    NodeSerializer,
    OperationSerializer,
    PlanInput,
    PlanSerializer,
    PoolInput,
    PoolSerializer,
    PoolShareInput,
    RejectInput,
    ServerCreateInput,
    ServerSerializer,
    TemplateBuildOutcome,
    TemplateBuildSerializer,
    TemplateChangeInput,
    TemplateInput,
    TemplateSerializer,
    TenantInput,
    TenantSerializer,
    by_name,
    run_form,
)
from .base import OperatorView, PageQuery, queued
from .servers import server_rows

LIVE_STATES = [state for state in State if state not in TERMINAL]


def _input(serializer_class, request, partial: bool = False) -> dict:
    given = serializer_class(data=request.data, partial=partial)
    given.is_valid(raise_exception=True)
    return dict(given.validated_data)


def _with_current(form_class, instance, given: dict) -> dict:
    """A PATCH's fields over what INSTANCE has now, as the page's form would post them all."""
    current = model_to_dict(instance, fields=form_class._meta.fields)
    return {**{k: v for k, v in current.items() if v is not None}, **given}


def _server(request, server: VirtualServer, code: int = status.HTTP_200_OK) -> Response:
    fresh = server_rows(VirtualServer.objects.filter(pk=server.pk)).get()
    return Response(ServerSerializer(fresh, context={"request": request}).data, status=code)


# -- servers: create, approve, reject, plan changes ----------------------------------------------


class ServerCreateView(OperatorView):
    @extend_schema(request=ServerCreateInput, responses={201: ServerSerializer})
    def post(self, request):
        """A server for a tenant, requested and approved at once; provisioning is queued."""
        form = by_name(ServerCreateForm(data=_input(ServerCreateInput, request)), tenant="slug", plan="name",
                       template="name", node="name")
        data = run_form(form)
        try:
            server = actions.create_server(
                request.user, tenant=data["tenant"], name=data["name"], hostname=data["hostname"], plan=data["plan"],
                template=data["template"], node=data["node"], autostart=data["autostart"], request=request,
            )
        except actions.NameTaken:
            raise serializers.ValidationError({"name": ["this tenant has a server of this name already"]}) from None
        return _server(request, server, status.HTTP_201_CREATED)


class ApproveView(OperatorView):
    @extend_schema(request=ApproveInput, responses={202: ApprovalSerializer})
    def post(self, request, uuid):
        """Approve a requested server: placed on a node (or the one pinned), given an address,
        provisioning queued. The answer says which node and why."""
        server = access.operator_server(request.user, uuid)
        node = run_form(ApproveForm(data=_input(ApproveInput, request)))["node"]
        approval = actions.approve_placed(server, request.user, node=node, request=request)
        data = ApprovalSerializer(approval, context={"request": request}).data
        return Response(data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/operations/{approval.operation.uuid}/"})


class RejectView(OperatorView):
    @extend_schema(request=RejectInput, responses={200: ServerSerializer})
    def post(self, request, uuid):
        """Reject a requested server with a reason the tenant reads."""
        server = access.operator_server(request.user, uuid)
        reason = run_form(RejectForm(data=_input(RejectInput, request)))["reason"]
        actions.reject(server, reason, request=request)
        return _server(request, server)


class PlanChangeApproveView(OperatorView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Apply the plan change the tenant asked for (a change_plan operation is queued)."""
        server = access.operator_server(request.user, uuid)
        actions.decide_plan_change(server, True, request.user, request=request)
        operation = server.operations.order_by("-created", "-pk").first()
        return queued(request, operation)


class PlanChangeRejectView(OperatorView):
    @extend_schema(request=None, responses={200: ServerSerializer})
    def post(self, request, uuid):
        """Turn down the plan change the tenant asked for."""
        server = access.operator_server(request.user, uuid)
        actions.decide_plan_change(server, False, request.user, request=request)
        return _server(request, server)


# -- tenants and members ---------------------------------------------------------------------


class TenantListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: TenantSerializer(many=True)})
    def get(self, request):
        self.filters(PageQuery)
        return self.paged(Tenant.objects.order_by("name", "pk"), TenantSerializer)

    @extend_schema(request=TenantInput, responses={201: TenantSerializer})
    def post(self, request):
        tenant = actions.create_tenant(_form(TenantForm(data=_input(TenantInput, request))), request=request)
        return Response(TenantSerializer(tenant).data, status=status.HTTP_201_CREATED)


def _form(form):
    run_form(form)
    return form


class TenantDetailView(OperatorView):
    @extend_schema(responses={200: TenantSerializer})
    def get(self, request, uuid):
        return Response(TenantSerializer(get_object_or_404(Tenant, uuid=uuid)).data)

    @extend_schema(request=TenantInput(partial=True), responses={200: TenantSerializer})
    def patch(self, request, uuid):
        tenant = get_object_or_404(Tenant, uuid=uuid)
        data = _with_current(TenantForm, tenant, _input(TenantInput, request, partial=True))
        tenant = actions.update_tenant(_form(TenantForm(data=data, instance=tenant)), request=request)
        return Response(TenantSerializer(tenant).data)


class MemberListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: MemberSerializer(many=True)})
    def get(self, request, uuid):
        tenant = get_object_or_404(Tenant, uuid=uuid)
        self.filters(PageQuery)
        return self.paged(tenant.memberships.select_related("user").order_by("user__username", "pk"),
                          MemberSerializer)

    @extend_schema(request=MemberAddInput, responses={201: NewMemberSerializer})
    def post(self, request, uuid):
        """A new user in the tenant; a generated password is in this answer and nowhere else."""
        tenant = get_object_or_404(Tenant, uuid=uuid)
        form = _form(MemberAddForm(data=_input(MemberAddInput, request)))
        membership, generated = actions.add_member(form, tenant, request=request)
        data = {**MemberSerializer(membership).data, "password": generated}
        response = Response(data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class MemberDetailView(OperatorView):
    """One member of a tenant, named by their user id (the list's user_id), as on the tenant's
    page: change the role, or take them out (vservers.actions: the last admin stays)."""

    @staticmethod
    def _membership(uuid, user_id: int) -> Membership:
        return get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant__uuid=uuid,
                                 user_id=user_id)

    @extend_schema(responses={200: MemberSerializer})
    def get(self, request, uuid, user_id):
        return Response(MemberSerializer(self._membership(uuid, user_id)).data)

    @extend_schema(request=MemberRoleInput, responses={200: MemberSerializer})
    def patch(self, request, uuid, user_id):
        """Make the member an admin or read-only (409 for the tenant's last admin)."""
        membership = self._membership(uuid, user_id)
        form = _form(MemberRoleForm(data=_input(MemberRoleInput, request)))
        actions.set_member_role(membership, form.cleaned_data["role"], request=request)
        return Response(MemberSerializer(self._membership(uuid, user_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, uuid, user_id):
        """Take the member out of the tenant: their account is disabled, their sessions and
        tokens stop working (409 for the tenant's last admin)."""
        actions.remove_member(self._membership(uuid, user_id), request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- plans and templates ---------------------------------------------------------------------


class OperatorPlanListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: PlanSerializer(many=True)})
    def get(self, request):
        """Every plan, offered or not."""
        self.filters(PageQuery)
        return self.paged(Plan.objects.order_by("memory_mb", "name", "pk"), PlanSerializer)

    @extend_schema(request=PlanInput, responses={201: PlanSerializer})
    def post(self, request):
        plan = actions.create_plan(_form(PlanForm(data=_input(PlanInput, request))), request=request)
        return Response(PlanSerializer(plan).data, status=status.HTTP_201_CREATED)


class OperatorPlanDetailView(OperatorView):
    @extend_schema(responses={200: PlanSerializer})
    def get(self, request, uuid):
        return Response(PlanSerializer(get_object_or_404(Plan, uuid=uuid)).data)

    @extend_schema(request=PlanInput(partial=True), responses={200: PlanSerializer})
    def patch(self, request, uuid):
        """Running servers keep their limits until their plan is changed."""
        plan = get_object_or_404(Plan, uuid=uuid)
        data = _with_current(PlanForm, plan, _input(PlanInput, request, partial=True))
        plan = actions.update_plan(_form(PlanForm(data=data, instance=plan)), request=request)
        return Response(PlanSerializer(plan).data)


class OperatorTemplateListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: TemplateSerializer(many=True)})
    def get(self, request):
        self.filters(PageQuery)
        return self.paged(Template.objects.order_by("name", "pk"), TemplateSerializer)

    @extend_schema(request=TemplateInput, responses={201: TemplateSerializer})
    def post(self, request):
        template = actions.create_template(_form(TemplateForm(data=_input(TemplateInput, request))),
                                           request=request)
        return Response(TemplateSerializer(template).data, status=status.HTTP_201_CREATED)


class OperatorTemplateDetailView(OperatorView):
    @extend_schema(responses={200: TemplateSerializer})
    def get(self, request, name):
        return Response(TemplateSerializer(get_object_or_404(Template, name=name)).data)

    @extend_schema(request=TemplateChangeInput, responses={200: TemplateSerializer})
    def patch(self, request, name):
        """Offer the template for new servers, or stop offering it."""
        template = get_object_or_404(Template, name=name)
        active = _input(TemplateChangeInput, request)["is_active"]
        return Response(TemplateSerializer(actions.set_template_active(template, active, request=request)).data)


class TemplateBuildListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: TemplateBuildSerializer(many=True)})
    def get(self, request, name):
        """The template's builds on every node, newest first."""
        self.filters(PageQuery)
        template = get_object_or_404(Template, name=name)
        return self.paged(template.builds.select_related("template", "node").order_by("-created", "-pk"),
                          TemplateBuildSerializer)

    @extend_schema(request=None, responses={202: TemplateBuildOutcome})
    def post(self, request, name):
        """Build a new version on every active node (each node's worker builds its own copy);
        a node with a build of it queued or running keeps that one. 409 when no node got one."""
        template = get_object_or_404(Template, name=name)
        outcome = actions.build_template(template, request.user, request=request)
        queued = [o for o in outcome if isinstance(o, TemplateBuild)]
        refused = [o for o in outcome if isinstance(o, str)]
        if not queued:
            raise actions.ActionRefused("; ".join(refused))
        return Response(TemplateBuildOutcome({"queued": queued, "refused": refused}).data,
                        status=status.HTTP_202_ACCEPTED)


# -- address pools and nodes -----------------------------------------------------------------


def _pools():
    return IPPool.objects.select_related("node").prefetch_related("shared_with").annotate(
        used=Count("addresses")).order_by("name", "pk")


class PoolListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: PoolSerializer(many=True)})
    def get(self, request):
        self.filters(PageQuery)
        return self.paged(_pools(), PoolSerializer)

    @extend_schema(request=PoolInput, responses={201: PoolSerializer})
    def post(self, request):
        form = by_name(PoolForm(data=_input(PoolInput, request)), node="name", shared_with="name")
        pool = actions.create_pool(_form(form), request=request)
        return Response(PoolSerializer(_pools().get(pk=pool.pk)).data, status=status.HTTP_201_CREATED)


class PoolDetailView(OperatorView):
    @extend_schema(responses={200: PoolSerializer})
    def get(self, request, pk):
        return Response(PoolSerializer(get_object_or_404(_pools(), pk=pk)).data)

    @extend_schema(request=PoolShareInput, responses={200: PoolSerializer})
    def patch(self, request, pk):
        """The other nodes the pool is shared with (as the pool's page; the same form)."""
        pool = get_object_or_404(IPPool, pk=pk)
        form = by_name(PoolShareForm(data=_input(PoolShareInput, request), instance=pool), shared_with="name")
        actions.share_pool(_form(form), request=request)
        return Response(PoolSerializer(get_object_or_404(_pools(), pk=pk)).data)


class PoolAddressesView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: AddressSerializer(many=True)})
    def get(self, request, pk):
        """The pool's allocated addresses and their servers."""
        pool = get_object_or_404(IPPool, pk=pk)
        self.filters(PageQuery)
        found = IPAddress.objects.filter(pool=pool).select_related("server__tenant").order_by("allocated", "pk")
        return self.paged(found, AddressSerializer)


def _nodes():
    """Nodes with what their live servers' plans add up to."""
    live = Q(servers__state__in=LIVE_STATES)
    return Node.objects.annotate(
        server_count=Count("servers", filter=live),
        cpus_allocated=Coalesce(Sum("servers__plan__cpus", filter=live), Value(0), output_field=DecimalField()),
        memory_allocated=Coalesce(Sum("servers__plan__memory_mb", filter=live), Value(0)),
        disk_allocated=Coalesce(Sum("servers__plan__disk_mb", filter=live), Value(0)),
    ).order_by("name", "pk")


class NodeListView(OperatorView):
    @extend_schema(parameters=[PageQuery], responses={200: NodeSerializer(many=True)})
    def get(self, request):
        """Nodes with what their live servers' plans add up to."""
        self.filters(PageQuery)
        return self.paged(_nodes(), NodeSerializer)


class NodeDetailView(OperatorView):
    @extend_schema(responses={200: NodeSerializer})
    def get(self, request, name):
        return Response(NodeSerializer(get_object_or_404(_nodes(), name=name)).data)

    @extend_schema(request=NodeInput(partial=True), responses={200: NodeSerializer})
    def patch(self, request, name):
        """What the node physically has, its overcommit ratios, and whether it takes new
        servers (as the node's page; checked by the same form)."""
        node = get_object_or_404(Node, name=name)
        data = _with_current(NodeForm, node, _input(NodeInput, request, partial=True))
        actions.update_node(_form(NodeForm(data=data, instance=node)), request=request)
        return Response(NodeSerializer(get_object_or_404(_nodes(), name=name)).data)


# -- the audit log ---------------------------------------------------------------------------


class AuditQuery(PageQuery):
    tenant = serializers.CharField(max_length=40, required=False, help_text="a tenant's slug")
    action = serializers.CharField(max_length=60, required=False, help_text="the start of the action, e.g. server.")


class AuditListView(OperatorView):
    @extend_schema(parameters=[AuditQuery], responses={200: AuditEntrySerializer(many=True)})
    def get(self, request):
        """Who did what to which object, when, from where; newest first."""
        found = self.filters(AuditQuery)
        form = AuditFilterForm(data={k: found[k] for k in ("tenant", "action") if k in found})
        run_form(form)
        entries = form.filter(AuditEntry.objects.select_related("actor", "tenant").order_by("-created", "-pk"))
        return self.paged(entries, AuditEntrySerializer)
