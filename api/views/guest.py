"""Accounts and services inside a server, as the worker last listed them, and the operations
that change them (202: queued; the operation's output tells how it went)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from vservers import access, actions
from vservers.forms import AccountAddForm, AccountKeyForm, AccountPasswordForm
from vservers.models import OperationKind

from ..serializers import (
    AccountAddInput,
    AccountKeyInput,
    AccountPasswordInput,
    AccountSerializer,
    OperationSerializer,
    ServiceSerializer,
    run_form,
)
from .base import ApiView, PageQuery, queued

SERVICE_ACTIONS = {
    "start": OperationKind.SERVICE_START,
    "stop": OperationKind.SERVICE_STOP,
    "restart": OperationKind.SERVICE_RESTART,
}


def _input(serializer_class, request) -> dict:
    given = serializer_class(data=request.data)
    given.is_valid(raise_exception=True)
    return dict(given.validated_data)


class AccountListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: AccountSerializer(many=True)})
    def get(self, request, uuid):
        """The server's accounts, as the worker last read them."""
        server = access.get_server(request.user, uuid)
        self.filters(PageQuery)
        return self.paged(server.guest_accounts.order_by("uid", "name"), AccountSerializer)

    @extend_schema(request=AccountAddInput, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Add an account with a password, an SSH key or both."""
        server = access.get_server(request.user, uuid, act=True)
        existing = set(server.guest_accounts.values_list("name", flat=True))
        data = run_form(AccountAddForm(data=_input(AccountAddInput, request), existing=existing))
        params = {"account": data["user"]}
        if data["password"]:
            params["password"] = data["password"]  # only in the operation's params; finish() wipes it
        if data["ssh_key"]:
            params["ssh_key"] = data["ssh_key"]
        return queued(request, actions.request_operation(server, OperationKind.ACCOUNT_ADD, request.user,
                                                         request=request, **params))


class AccountView(ApiView):
    @extend_schema(responses={200: AccountSerializer})
    def get(self, request, uuid, name):
        server = access.get_server(request.user, uuid)
        return Response(AccountSerializer(get_object_or_404(server.guest_accounts, name=name)).data)

    @extend_schema(request=None, responses={202: OperationSerializer})
    def delete(self, request, uuid, name):
        """Delete the account (not a system account, not a name the engine reserves such as root)."""
        server = access.get_server(request.user, uuid, act=True)
        name = access.get_account(server, name, deleting=True).name
        return queued(request, actions.request_operation(server, OperationKind.ACCOUNT_DELETE, request.user,
                                                         request=request, account=name))


class AccountPasswordView(ApiView):
    @extend_schema(request=AccountPasswordInput, responses={202: OperationSerializer})
    def post(self, request, uuid, name):
        """Set the account's password (root's too)."""
        server = access.get_server(request.user, uuid, act=True)
        name = access.get_account(server, name, system_ok=True).name
        password = run_form(AccountPasswordForm(data=_input(AccountPasswordInput, request)))["password"]
        return queued(request, actions.request_operation(server, OperationKind.ACCOUNT_PASSWORD, request.user,
                                                         request=request, account=name, password=password))


class AccountKeyView(ApiView):
    @extend_schema(request=AccountKeyInput, responses={202: OperationSerializer})
    def post(self, request, uuid, name):
        """Add an SSH public key to the account's authorized keys."""
        server = access.get_server(request.user, uuid, act=True)
        name = access.get_account(server, name, system_ok=True).name
        key = run_form(AccountKeyForm(data=_input(AccountKeyInput, request)))["ssh_key"]
        return queued(request, actions.request_operation(server, OperationKind.ACCOUNT_KEY, request.user,
                                                         request=request, account=name, ssh_key=key))


class ServiceListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: ServiceSerializer(many=True)})
    def get(self, request, uuid):
        """The server's services, as the worker last read them."""
        server = access.get_server(request.user, uuid)
        self.filters(PageQuery)
        return self.paged(server.services.order_by("name"), ServiceSerializer)


class ServiceActionView(ApiView):
    action_name = ""

    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid, name):
        server = access.get_server(request.user, uuid, act=True)
        name = access.get_service(server, name).name
        return queued(request, actions.request_operation(server, SERVICE_ACTIONS[self.action_name], request.user,
                                                         request=request, service=name))


def service_view(name: str):
    view: type[ServiceActionView] = type(f"Service{name.title()}View", (ServiceActionView,), {"action_name": name})
    return extend_schema(summary=f"{name.title()} the service.")(view).as_view()
