"""The operator's API for moving servers between nodes (vservers.migration):
POST /api/v1/operator/servers/{uuid}/migrate/ {"target": name or null} and
POST /api/v1/operator/nodes/{name}/evacuate/. Tenants get 404, as for any operator endpoint."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from vservers import access
from vservers.migration.actions import evacuate, request_migration
from vservers.models import Node

from .serializers import OperationSerializer
from .views.base import OperatorView, queued


class MigrateInput(serializers.Serializer):
    target = serializers.CharField(max_length=40, required=False, allow_null=True, allow_blank=True,
                                   help_text="a node's name; null or empty: placement chooses")


class EvacuateOutput(serializers.Serializer):
    node = serializers.CharField()
    draining = serializers.BooleanField()
    queued = OperationSerializer(many=True)
    refused = serializers.ListField(child=serializers.CharField(), help_text="servers not moved, and why")
    message = serializers.CharField()


class MigrateView(OperatorView):
    @extend_schema(request=MigrateInput, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Move a running or stopped server to another node (cold: stopped, copied, started there)."""
        server = access.operator_server(request.user, uuid)
        given = MigrateInput(data=request.data)
        given.is_valid(raise_exception=True)
        name = given.validated_data.get("target") or ""
        target = None
        if name:
            target = Node.objects.filter(name=name, is_active=True).first()
            if target is None:
                raise serializers.ValidationError({"target": [f"no active node is named {name!r}"]})
        return queued(request, request_migration(server, request.user, target=target, request=request))


class EvacuateView(OperatorView):
    @extend_schema(request=None, responses={202: EvacuateOutput})
    def post(self, request, name):
        """Drain a node and move every server off it, placement choosing each target."""
        node = get_object_or_404(Node, name=name)
        result = evacuate(node, request.user, request=request)
        data = {
            "node": node.name, "draining": True, "refused": result.refused, "message": result.message,
            "queued": OperationSerializer(result.queued, many=True, context={"request": request}).data,
        }
        return Response(data, status=status.HTTP_202_ACCEPTED)
