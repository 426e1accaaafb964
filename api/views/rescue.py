"""Reinstall, rescue mode and root's password (issue 15, 3.-5.): each queues an operation and
answers 202 with it, as the server's other actions. The checks are the pages' forms
(vservers.forms_rescue): a reinstall needs the server's name typed in "confirm"."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from vservers import access, actions_rescue
from vservers.forms_rescue import ReinstallForm, RootPasswordForm

from ..serializers import OperationSerializer, run_form
from .base import ApiView, queued


class ReinstallInput(serializers.Serializer):
    template = serializers.CharField(max_length=32, required=False,
                                     help_text="an active template's name; default: the server's own")
    confirm = serializers.CharField(max_length=64, trim_whitespace=False, help_text="the server's name, exactly")
    snapshot_first = serializers.BooleanField(required=False, default=False,
                                              help_text="take a snapshot first (plans that keep snapshots)")


class RootPasswordInput(serializers.Serializer):
    password = serializers.CharField(max_length=128, trim_whitespace=False)


def _input(serializer_class, request) -> dict:
    given = serializer_class(data=request.data)
    given.is_valid(raise_exception=True)
    return dict(given.validated_data)


class ReinstallView(ApiView):
    @extend_schema(request=ReinstallInput, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Rebuild the server from a template (its newest build): every file of it is deleted;
        its name, addresses and plan stay. 400 unless "confirm" is the server's name."""
        server = access.get_server(request.user, uuid, act=True)
        given = _input(ReinstallInput, request)
        given.setdefault("template", server.template.name)
        data = run_form(ReinstallForm(data=given, server=server))
        return queued(request, actions_rescue.reinstall(
            server, request.user, data["template"], snapshot_first=bool(data.get("snapshot_first")), request=request))


class RescueView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Start the server from the rescue system, its own files at /mnt."""
        server = access.get_server(request.user, uuid, act=True)
        return queued(request, actions_rescue.rescue_enter(server, request.user, request=request))


class RescueLeaveView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Leave rescue: start the server's own system."""
        server = access.get_server(request.user, uuid, act=True)
        return queued(request, actions_rescue.rescue_leave(server, request.user, request=request))


class RootPasswordView(ApiView):
    @extend_schema(request=RootPasswordInput, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Set root's password (in rescue: that of the server's own system at /mnt)."""
        server = access.get_server(request.user, uuid, act=True)
        password = _input(RootPasswordInput, request)["password"]
        data = run_form(RootPasswordForm(data={"password": password, "password2": password}))
        return queued(request, actions_rescue.root_password(server, request.user, data["password"], request=request))
