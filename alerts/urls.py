"""The Alerts form's URLs, beside the server pages they belong to (panel/urls.py includes
these at the root)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("servers/<uuid:uuid>/alerts/", views.server_alerts, name="server_alerts"),
    path("operator/servers/<uuid:uuid>/alerts/", views.op_server_alerts, name="op_server_alerts"),
]
