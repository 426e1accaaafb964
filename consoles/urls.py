"""The console's pages and tickets, beside the server pages of each area (panel/urls.py)."""

from django.urls import path

from . import views

urlpatterns = [
    path("servers/<uuid:uuid>/console/", views.tenant_page, name="console_page"),
    path("servers/<uuid:uuid>/console/ticket/", views.tenant_ticket, name="console_ticket"),
    path("operator/servers/<uuid:uuid>/console/", views.operator_page, name="op_console_page"),
    path("operator/servers/<uuid:uuid>/console/ticket/", views.operator_ticket, name="op_console_ticket"),
]
