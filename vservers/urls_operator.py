"""The operator's area, mounted at /operator/. Every view is behind operator_required; names
start with "op_". Objects with a UUID are addressed by it; pools (no UUID) by id, templates
by their engine name."""

from __future__ import annotations

from django.urls import path

from vservers.migration import views as migration
from vservers.nodes import views as node_views
from vservers.views import operator as views
from vservers.views import snapshots, usage

urlpatterns = [
    path("", views.dashboard, name="op_dashboard"),
    path("approvals/", views.approvals, name="op_approvals"),
    path("servers/", views.servers, name="op_servers"),
    path("servers/bulk/", views.servers_bulk, name="op_servers_bulk"),
    path("servers/new/", views.server_create, name="op_server_create"),
    path("servers/<uuid:uuid>/", views.server_detail, name="op_server_detail"),
    path("servers/<uuid:uuid>/approve/", views.approve, name="op_approve"),
    path("servers/<uuid:uuid>/reject/", views.reject, name="op_reject"),
    path("servers/<uuid:uuid>/plan-change/<str:decision>/", views.plan_change, name="op_plan_change"),
    path("servers/<uuid:uuid>/action/<str:kind>/", views.server_action, name="op_server_action"),
    path("servers/<uuid:uuid>/migrate/", migration.server_migrate, name="op_server_migrate"),
    path("servers/<uuid:uuid>/snapshots/take/", snapshots.op_snapshot_take, name="op_snapshot_take"),
    path("servers/<uuid:uuid>/snapshots/<slug:name>/restore/", snapshots.op_snapshot_restore,
         name="op_snapshot_restore"),
    path("servers/<uuid:uuid>/snapshots/<slug:name>/delete/", snapshots.op_snapshot_delete,
         name="op_snapshot_delete"),
    path("tenants/", views.tenants, name="op_tenants"),
    path("tenants/<uuid:uuid>/", views.tenant_detail, name="op_tenant_detail"),
    path("tenants/<uuid:uuid>/members/new/", views.member_add, name="op_member_add"),
    path("tenants/<uuid:uuid>/members/<int:user_id>/remove/", views.member_remove, name="op_member_remove"),
    path("tenants/<uuid:uuid>/members/<int:user_id>/role/", views.member_role, name="op_member_role"),
    path(
        "tenants/<uuid:uuid>/members/<int:user_id>/two-factor-reset/",
        views.member_two_factor_reset,
        name="op_member_2fa_reset",
    ),
    path("plans/", views.plans, name="op_plans"),
    path("plans/<uuid:uuid>/", views.plan_edit, name="op_plan_edit"),
    path("templates/", views.templates, name="op_templates"),
    path("templates/<slug:name>/build/", views.template_build, name="op_template_build"),
    path("templates/<slug:name>/toggle/", views.template_toggle, name="op_template_toggle"),
    path("pools/", views.pools, name="op_pools"),
    path("pools/<int:pk>/", views.pool_detail, name="op_pool_detail"),
    path("nodes/", views.nodes, name="op_nodes"),
    path("nodes/add/", node_views.node_add, name="op_node_add"),
    path("nodes/<slug:name>/", views.node_edit, name="op_node_edit"),
    path("nodes/<slug:name>/evacuate/", migration.node_evacuate, name="op_node_evacuate"),
    path("nodes/<slug:name>/join-token/", node_views.node_token, name="op_node_token"),
    path("nodes/<slug:name>/usage/", usage.node_detail, name="op_node_usage"),
    path("nodes/<slug:name>/usage.json", usage.node_usage, name="op_node_usage_json"),
    path("operations/", views.operations, name="op_operations"),
    path("operations/<uuid:uuid>/retry/", views.operation_retry, name="op_operation_retry"),
    path("audit/", views.audit, name="op_audit"),
]
