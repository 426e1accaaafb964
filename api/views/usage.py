"""A server's usage over time: the series its page plots (vservers.views.usage), for programs.
Found through vservers.access as the page: another tenant's server is 404, read-only members
and read-only tokens may read it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from vservers import access
from vservers.usage import queries
from vservers.views.usage import DEFAULT_WINDOW, plan_limits, usage_payload

from .base import ApiView


class UsageQuery(serializers.Serializer):
    window = serializers.ChoiceField(
        choices=list(queries.WINDOWS), required=False, default=DEFAULT_WINDOW,
        help_text="how far back: 1h (raw samples), 24h and 7d (5-minute points), 30d",
    )


class UsageSeriesSerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(queries.WINDOWS))
    step = serializers.IntegerField(help_text="seconds between two points")
    t = serializers.ListField(child=serializers.IntegerField(), help_text="each point's time, epoch seconds (UTC)")
    metrics = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        help_text=(
            "one list per metric, a value per time in t; null where there was no sample (the server was "
            "stopped): cpu and cpu_max (cores), memory and memory_max (bytes), disk (bytes), pids, net_in and "
            "net_out (bytes/s), net_in_packets and net_out_packets (packets/s)"
        ),
    )
    limits = serializers.DictField(
        child=serializers.FloatField(),
        help_text="the plan's limits in the same units: cpu (cores), memory and disk (bytes), pids",
    )


class ServerUsageView(ApiView):
    @extend_schema(parameters=[UsageQuery], responses={200: UsageSeriesSerializer})
    def get(self, request, uuid):
        """The server's usage over the window: averages (and peaks where the resolution keeps
        them) per point, with the plan's limits."""
        server = access.get_server(request.user, uuid)
        window = self.filters(UsageQuery).get("window", DEFAULT_WINDOW)
        return Response(usage_payload(queries.server_series(server, window), plan_limits(server.plan)))
