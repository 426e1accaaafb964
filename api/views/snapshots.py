"""A server's snapshots: list and take (/snapshots/), delete (/snapshots/{name}/), put one
back (/snapshots/{name}/restore/). Writes answer 202 with the operation they queued; the
plan's limit and the disk quota answer 409 with the reason (vservers.snapshot_actions)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from vservers import access, snapshot_actions
from vservers.snapshot_forms import SnapshotTakeForm

from ..serializers import OperationSerializer, run_form
from .base import ApiView, PageQuery, queued


class SnapshotSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField(allow_blank=True)  # type: ignore[assignment]  # a field, not Field.label
    created = serializers.DateTimeField()
    size_bytes = serializers.IntegerField(help_text="space it takes on the node, counted in the disk quota")
    freeze_ms = serializers.FloatField(allow_null=True, help_text="how long the running server was frozen")
    copy_ms = serializers.FloatField(allow_null=True)


class SnapshotTakeInput(serializers.Serializer):
    name = serializers.CharField(max_length=32, required=False, allow_blank=True,
                                 help_text="lowercase letters, digits and '-'; empty: from the time (UTC)")
    label = serializers.CharField(max_length=100, required=False, allow_blank=True)  # type: ignore[assignment]


class SnapshotListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: SnapshotSerializer(many=True)})
    def get(self, request, uuid):
        """The server's snapshots, oldest first."""
        server = access.get_server(request.user, uuid)
        self.filters(PageQuery)
        return self.paged(server.snapshots.order_by("created", "pk"), SnapshotSerializer)

    @extend_schema(request=SnapshotTakeInput, responses={202: OperationSerializer})
    def post(self, request, uuid):
        """Take a snapshot (a running server is frozen for the copy, usually well under a second)."""
        server = access.get_server(request.user, uuid, act=True)
        given = SnapshotTakeInput(data=request.data)
        given.is_valid(raise_exception=True)
        taken = set(server.snapshots.values_list("name", flat=True))
        data = run_form(SnapshotTakeForm(data=dict(given.validated_data), taken=taken))
        return queued(request, snapshot_actions.take(server, request.user, request=request, label=data["label"],
                                                     name=data["name"]))


class SnapshotView(ApiView):
    @extend_schema(responses={200: SnapshotSerializer})
    def get(self, request, uuid, name):
        from rest_framework.response import Response

        server = access.get_server(request.user, uuid)
        return Response(SnapshotSerializer(snapshot_actions.get_snapshot(server, name)).data)

    @extend_schema(request=None, responses={202: OperationSerializer})
    def delete(self, request, uuid, name):
        """Delete the snapshot."""
        server = access.get_server(request.user, uuid, act=True)
        snapshot = snapshot_actions.get_snapshot(server, name)
        return queued(request, snapshot_actions.delete(server, snapshot, request.user, request=request))


class SnapshotRestoreView(ApiView):
    @extend_schema(request=None, responses={202: OperationSerializer})
    def post(self, request, uuid, name):
        """Put the snapshot back: the server stops, its disk becomes the snapshot's, it starts."""
        server = access.get_server(request.user, uuid, act=True)
        snapshot = snapshot_actions.get_snapshot(server, name)
        return queued(request, snapshot_actions.restore(server, snapshot, request.user, request=request))
