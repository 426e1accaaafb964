"""Servers, their actions and plan changes, requests, and operations with their output.

Objects are found through vservers.access, as on the pages: another tenant's server or
operation is 404, a read-only member's write 403. Every change is a call of vservers.actions."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from vservers import access, actions
from vservers.forms import PlanChangeForm, ServerRequestForm
from vservers.models import OperationKind, OperationStatus, State, VirtualServer

from ..errors import ErrorSerializer
from ..serializers import (
    SERVER_ACTIONS,
    OperationSerializer,
    PlanChangeInput,
    PlanChangeResultSerializer,
    RejectedSerializer,
    ServerRequestInput,
    ServerSerializer,
    by_name,
    run_form,
)
from .base import ApiView, PageQuery, conditional, queued

NOT_MODIFIED = OpenApiResponse(description="not modified since the ETag given in If-None-Match")


def server_rows(queryset):
    return queryset.select_related("tenant", "plan", "template", "node", "requested_plan").prefetch_related(
        "addresses__pool"
    )


class ServerQuery(PageQuery):
    state = serializers.ChoiceField(choices=State.choices, required=False)
    q = serializers.CharField(max_length=100, required=False, help_text="part of the name or host name")
    plan_change = serializers.BooleanField(required=False, allow_null=True, default=None,
                                           help_text="true: only servers with a plan change waiting")
    tenant = serializers.CharField(max_length=40, required=False, help_text="a tenant's slug (operators)")
    node = serializers.CharField(max_length=40, required=False, help_text="a node's name (operators)")


class ServerListView(ApiView):
    @extend_schema(parameters=[ServerQuery], responses={200: ServerSerializer(many=True), 304: NOT_MODIFIED})
    def get(self, request):
        """The live servers this user sees (operators: every tenant's), paged. Answers carry an
        ETag: ask with If-None-Match to get a bodiless 304 while nothing changed."""
        found = self.filters(ServerQuery)
        servers = access.servers_for(request.user).order_by("tenant__name", "name", "pk")
        if "state" in found:
            servers = servers.filter(state=found["state"])
        if "q" in found:
            servers = servers.filter(Q(name__icontains=found["q"]) | Q(hostname__icontains=found["q"]))
        if "plan_change" in found:
            servers = servers.filter(requested_plan__isnull=not found["plan_change"])
        if "tenant" in found:
            servers = servers.filter(tenant__slug=found["tenant"])
        if "node" in found:
            servers = servers.filter(node__name=found["node"])
        return conditional(request, servers.fingerprint(), lambda: self.paged(server_rows(servers), ServerSerializer))

    @extend_schema(request=ServerRequestInput, responses={201: ServerSerializer})
    def post(self, request):
        """Request a server (tenant admins): it waits in state "requested" until an operator
        approves it. Operators create servers for a tenant with POST /api/v1/operator/servers/."""
        member = access.membership(request.user)
        if member is None:
            raise PermissionDenied(
                "only a tenant's members request servers; operators use /api/v1/operator/servers/"
            )
        access.require_act(request.user)
        given = ServerRequestInput(data=request.data)
        given.is_valid(raise_exception=True)
        form = by_name(ServerRequestForm(data=given.validated_data, tenant=member.tenant), plan="name",
                       template="name")
        data = run_form(form)
        try:
            server = actions.request_server(
                member.tenant, request.user, name=data["name"], hostname=data["hostname"], plan=data["plan"],
                template=data["template"], request=request, ssh_key=data["ssh_key"],
                password_hash=data.get("root_password_hash", ""),
            )
        except actions.NameTaken as exc:
            raise serializers.ValidationError({"name": [str(exc)]}) from None
        server = server_rows(VirtualServer.objects.filter(pk=server.pk)).get()
        return Response(ServerSerializer(server, context={"request": request}).data, status=status.HTTP_201_CREATED,
                        headers={"Location": f"/api/v1/servers/{server.uuid}/"})


class ServerDetailView(ApiView):
    @extend_schema(responses={200: ServerSerializer, 304: NOT_MODIFIED})
    def get(self, request, uuid):
        """One server, with the actions its state allows now. With an ETag, as the list."""
        server = access.get_server(request.user, uuid)
        one = VirtualServer.objects.filter(pk=server.pk)
        return conditional(
            request, one.fingerprint(),
            lambda: Response(ServerSerializer(server_rows(one).get(), context={"request": request}).data),
        )


class ServerActionView(ApiView):
    """POST /servers/{uuid}/<action>/: one view for each action (as_view(action_name=...))."""

    action_name = ""

    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid):
        server = access.get_server(request.user, uuid, act=True)
        if self.action_name == "retry":
            operation = actions.retry(server, request.user, request=request)
        else:
            operation = actions.request_operation(server, SERVER_ACTIONS[self.action_name], request.user,
                                                  request=request)
        return queued(request, operation)


ACTION_HELP = {
    "start": "Start the server.",
    "stop": "Stop the server.",
    "restart": "Restart the server.",
    "delete": "Delete the server and everything in it.",
    "refresh": "Read its accounts, services and usage again.",
    "retry": "A server in error tries again (provisioning is idempotent).",
}


def action_view(name: str):
    view: type[ServerActionView] = type(f"Server{name.title()}View", (ServerActionView,), {"action_name": name})
    return extend_schema(summary=ACTION_HELP[name], description=(
        "Queues the operation and answers 202 with it; GET /api/v1/operations/{uuid}/ tells how it went. "
        "409 when the server's state does not allow it now."
    ))(view).as_view()


class ServerCancelView(ApiView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request, uuid):
        """Withdraw a request no operator has decided yet."""
        actions.cancel(access.get_server(request.user, uuid, act=True), request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PlanChangeView(ApiView):
    @extend_schema(request=PlanChangeInput, responses={200: PlanChangeResultSerializer})
    def post(self, request, uuid):
        """Ask for another plan (an operator decides); asking for the current plan withdraws a
        waiting request."""
        server = access.get_server(request.user, uuid, act=True)
        given = PlanChangeInput(data=request.data)
        given.is_valid(raise_exception=True)
        plan = run_form(by_name(PlanChangeForm(data=given.validated_data, server=server), plan="name"))["plan"]
        waiting = actions.request_plan_change(server, plan, request.user, request=request)
        return Response({"requested_plan": plan.name if waiting else None})


# -- rejected requests ---------------------------------------------------------------------------


class RejectedListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: RejectedSerializer(many=True)})
    def get(self, request):
        """Requests of this tenant an operator rejected, with the reason, until dismissed."""
        self.filters(PageQuery)
        member = access.membership(request.user)
        found = VirtualServer.objects.none()
        if member is not None:
            found = VirtualServer.objects.filter(tenant=member.tenant).rejected_undismissed()
        return self.paged(found.order_by("-updated", "-pk"), RejectedSerializer)


class RejectedDismissView(ApiView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request, uuid):
        """The tenant has read the reason: stop listing the request."""
        actions.dismiss(access.get_rejected(request.user, uuid), request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- operations ---------------------------------------------------------------------------------


class OperationQuery(PageQuery):
    server = serializers.UUIDField(required=False, help_text="only this server's")
    status = serializers.ChoiceField(choices=OperationStatus.choices, required=False)
    kind = serializers.ChoiceField(choices=OperationKind.choices, required=False)


def _filtered(operations, found: dict):
    if "server" in found:
        operations = operations.filter(server__uuid=found["server"])
    if "status" in found:
        operations = operations.filter(status=found["status"])
    if "kind" in found:
        operations = operations.filter(kind=found["kind"])
    return operations.select_related("server", "requested_by").order_by("-created", "-pk")


class OperationListView(ApiView):
    @extend_schema(parameters=[OperationQuery], responses={200: OperationSerializer(many=True)})
    def get(self, request):
        """Operations of the servers this user sees, newest first, with their output. Tenants
        see the plain `error` sentence; `detail` (the full story) is for operators only."""
        return self.paged(_filtered(access.operations_for(request.user), self.filters(OperationQuery)),
                          OperationSerializer)


class ServerOperationsView(ApiView):
    @extend_schema(parameters=[OperationQuery], responses={200: OperationSerializer(many=True)})
    def get(self, request, uuid):
        """This server's operations, newest first."""
        server = access.get_server(request.user, uuid)
        found = self.filters(OperationQuery)
        found.pop("server", None)
        return self.paged(_filtered(server.operations.all(), found), OperationSerializer)


class OperationDetailView(ApiView):
    @extend_schema(responses={200: OperationSerializer, 404: ErrorSerializer})
    def get(self, request, uuid):
        """One operation: its status, output and error."""
        operation = get_object_or_404(access.operations_for(request.user).select_related("server", "requested_by"),
                                      uuid=uuid)
        return Response(OperationSerializer(operation, context={"request": request}).data)


class OperationRetryView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer, 403: ErrorSerializer, 404: ErrorSerializer,
                                            409: ErrorSerializer})
    def post(self, request, uuid):
        """Retry a failed operation: the same kind with the same parameters on the same server,
        linked to it (`retry_of`). Only the latest operation of its server, and only where the
        server's state allows that kind now (409 otherwise). Tenant admins retry provision,
        start, stop, restart, the service actions, refresh and adding an SSH key; the rest
        only operators (403); adding an account and setting a password nobody (their password
        is not kept)."""
        failed = access.get_operation(request.user, uuid, act=True)
        return queued(request, actions.retry_operation(failed, request.user, request=request))
