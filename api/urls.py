"""The API, mounted at /api/: the schema (/api/schema/), its docs page (/api/docs/), and
version 1 (/api/v1/). Operator-only endpoints live under /api/v1/operator/; every other
endpoint serves tenants and operators alike, scoped by vservers.access. Names start with "api-".
"""

from __future__ import annotations

from django.urls import path

import vservers.urls_tenant  # noqa: F401 - registers the <guest:...> converter used below

from . import migration
from .views import backups, catalog, guest, operator, rescue, servers, snapshots, usage
from .views.docs import SchemaView, docs
from .views.servers import action_view

SERVER = "v1/servers/<uuid:uuid>/"

urlpatterns = [
    path("schema/", SchemaView.as_view(), name="api-schema"),
    path("docs/", docs, name="api-docs"),
    path("v1/me/", catalog.MeView.as_view(), name="api-me"),
    path("v1/plans/", catalog.PlanListView.as_view(), name="api-plans"),
    path("v1/templates/", catalog.TemplateListView.as_view(), name="api-templates"),
    path("v1/servers/", servers.ServerListView.as_view(), name="api-servers"),
    path(SERVER, servers.ServerDetailView.as_view(), name="api-server"),
    *(path(f"{SERVER}{name}/", action_view(name), name=f"api-server-{name}")
      for name in ("start", "stop", "restart", "delete", "refresh", "retry")),
    path(f"{SERVER}cancel/", servers.ServerCancelView.as_view(), name="api-server-cancel"),
    path(f"{SERVER}plan-change/", servers.PlanChangeView.as_view(), name="api-server-plan-change"),
    path(f"{SERVER}operations/", servers.ServerOperationsView.as_view(), name="api-server-operations"),
    path(f"{SERVER}reinstall/", rescue.ReinstallView.as_view(), name="api-server-reinstall"),
    path(f"{SERVER}rescue/", rescue.RescueView.as_view(), name="api-server-rescue"),
    path(f"{SERVER}rescue/leave/", rescue.RescueLeaveView.as_view(), name="api-server-rescue-leave"),
    path(f"{SERVER}root-password/", rescue.RootPasswordView.as_view(), name="api-server-root-password"),
    path(f"{SERVER}usage/", usage.ServerUsageView.as_view(), name="api-server-usage"),
    path(f"{SERVER}accounts/", guest.AccountListView.as_view(), name="api-accounts"),
    path(f"{SERVER}accounts/<guest:name>/", guest.AccountView.as_view(), name="api-account"),
    path(f"{SERVER}accounts/<guest:name>/password/", guest.AccountPasswordView.as_view(),
         name="api-account-password"),
    path(f"{SERVER}accounts/<guest:name>/ssh-key/", guest.AccountKeyView.as_view(), name="api-account-key"),
    path(f"{SERVER}services/", guest.ServiceListView.as_view(), name="api-services"),
    *(path(f"{SERVER}services/<guest:name>/{name}/", guest.service_view(name), name=f"api-service-{name}")
      for name in ("start", "stop", "restart")),
    path(f"{SERVER}snapshots/", snapshots.SnapshotListView.as_view(), name="api-snapshots"),
    path(f"{SERVER}snapshots/<slug:name>/", snapshots.SnapshotView.as_view(), name="api-snapshot"),
    path(f"{SERVER}snapshots/<slug:name>/restore/", snapshots.SnapshotRestoreView.as_view(),
         name="api-snapshot-restore"),
    # Backups (api/views/backups.py).
    path(f"{SERVER}backups/", backups.ServerBackupsView.as_view(), name="api-server-backups"),
    path(f"{SERVER}backup-schedule/", backups.ScheduleView.as_view(), name="api-server-backup-schedule"),
    path("v1/backups/", backups.BackupListView.as_view(), name="api-backups"),
    path("v1/backups/<uuid:uuid>/", backups.BackupDetailView.as_view(), name="api-backup"),
    *(path(f"v1/backups/<uuid:uuid>/{name}/", view.as_view(), name=f"api-backup-{name}")
      for name, view in (("restore", backups.BackupRestoreView), ("new-server", backups.BackupNewServerView),
                         ("delete", backups.BackupDeleteView), ("download", backups.BackupDownloadView))),
    path("v1/rejected/", servers.RejectedListView.as_view(), name="api-rejected"),
    path("v1/rejected/<uuid:uuid>/dismiss/", servers.RejectedDismissView.as_view(), name="api-rejected-dismiss"),
    path("v1/operations/", servers.OperationListView.as_view(), name="api-operations"),
    path("v1/operations/<uuid:uuid>/", servers.OperationDetailView.as_view(), name="api-operation"),
    path("v1/operations/<uuid:uuid>/retry/", servers.OperationRetryView.as_view(), name="api-operation-retry"),
    # -- operators only
    path("v1/operator/servers/", operator.ServerCreateView.as_view(), name="api-op-server-create"),
    path("v1/operator/servers/<uuid:uuid>/approve/", operator.ApproveView.as_view(), name="api-op-approve"),
    path("v1/operator/servers/<uuid:uuid>/reject/", operator.RejectView.as_view(), name="api-op-reject"),
    path("v1/operator/servers/<uuid:uuid>/migrate/", migration.MigrateView.as_view(), name="api-op-migrate"),
    path("v1/operator/servers/<uuid:uuid>/plan-change/approve/", operator.PlanChangeApproveView.as_view(),
         name="api-op-plan-change-approve"),
    path("v1/operator/servers/<uuid:uuid>/plan-change/reject/", operator.PlanChangeRejectView.as_view(),
         name="api-op-plan-change-reject"),
    path("v1/operator/tenants/", operator.TenantListView.as_view(), name="api-op-tenants"),
    path("v1/operator/tenants/<uuid:uuid>/", operator.TenantDetailView.as_view(), name="api-op-tenant"),
    path("v1/operator/tenants/<uuid:uuid>/members/", operator.MemberListView.as_view(), name="api-op-members"),
    path("v1/operator/tenants/<uuid:uuid>/members/<int:user_id>/", operator.MemberDetailView.as_view(),
         name="api-op-member"),
    path("v1/operator/plans/", operator.OperatorPlanListView.as_view(), name="api-op-plans"),
    path("v1/operator/plans/<uuid:uuid>/", operator.OperatorPlanDetailView.as_view(), name="api-op-plan"),
    path("v1/operator/templates/", operator.OperatorTemplateListView.as_view(), name="api-op-templates"),
    path("v1/operator/templates/<slug:name>/", operator.OperatorTemplateDetailView.as_view(),
         name="api-op-template"),
    path("v1/operator/templates/<slug:name>/builds/", operator.TemplateBuildListView.as_view(),
         name="api-op-template-builds"),
    path("v1/operator/pools/", operator.PoolListView.as_view(), name="api-op-pools"),
    path("v1/operator/pools/<int:pk>/", operator.PoolDetailView.as_view(), name="api-op-pool"),
    path("v1/operator/pools/<int:pk>/addresses/", operator.PoolAddressesView.as_view(), name="api-op-pool-addresses"),
    path("v1/operator/nodes/", operator.NodeListView.as_view(), name="api-op-nodes"),
    path("v1/operator/nodes/<slug:name>/", operator.NodeDetailView.as_view(), name="api-op-node"),
    path("v1/operator/nodes/<slug:name>/evacuate/", migration.EvacuateView.as_view(), name="api-op-node-evacuate"),
    path("v1/operator/audit/", operator.AuditListView.as_view(), name="api-op-audit"),
]

