"""The tenant's area, mounted at /servers/. Object URLs carry the server's UUID, and accounts and
services their names in the guest."""

from __future__ import annotations

from django.urls import path, register_converter

from vservers.backups import views as backups
from vservers.converters import GuestNameConverter
from vservers.views import rescue, snapshots, tenant, usage

# Account and service names come from inside the guest (see GuestNameConverter).
register_converter(GuestNameConverter, "guest")

urlpatterns = [
    path("", tenant.server_list, name="server_list"),
    path("new/", tenant.server_request, name="server_request"),
    path("<uuid:uuid>/", tenant.server_detail, name="server_detail"),
    # Backups (vservers.backups.views): a server's, and the tenant's, deleted servers' too.
    path("<uuid:uuid>/backups/create/", backups.backup_create, name="backup_create"),
    path("<uuid:uuid>/backups/schedule/", backups.schedule, name="backup_schedule"),
    path("backups/", backups.backup_list, name="backup_list"),
    path("backups/<uuid:backup>/restore/", backups.restore, name="backup_restore"),
    path("backups/<uuid:backup>/new-server/", backups.new_server, name="backup_new_server"),
    path("backups/<uuid:backup>/delete/", backups.delete, name="backup_delete"),
    path("backups/<uuid:backup>/download/", backups.download, name="backup_download"),
    path("<uuid:uuid>/usage.json", usage.server_usage, name="server_usage"),
    path("<uuid:uuid>/dismiss/", tenant.dismiss_rejected, name="server_dismiss"),
    path("<uuid:uuid>/cancel/", tenant.server_cancel, name="server_cancel"),
    path("<uuid:uuid>/action/<slug:kind>/", tenant.server_action, name="server_action"),
    path("<uuid:uuid>/operations/<uuid:operation>/retry/", tenant.operation_retry, name="operation_retry"),
    path("<uuid:uuid>/plan/", tenant.plan_change, name="plan_change"),
    path("<uuid:uuid>/accounts/add/", tenant.account_add, name="account_add"),
    path("<uuid:uuid>/accounts/<guest:name>/delete/", tenant.account_delete, name="account_delete"),
    path("<uuid:uuid>/accounts/<guest:name>/password/", tenant.account_password, name="account_password"),
    path("<uuid:uuid>/accounts/<guest:name>/key/", tenant.account_key, name="account_key"),
    path("<uuid:uuid>/services/<guest:name>/<slug:action>/", tenant.service_action, name="service_action"),
    path("<uuid:uuid>/reinstall/", rescue.reinstall, name="server_reinstall"),
    path("<uuid:uuid>/rescue/", rescue.rescue_enter, name="server_rescue"),
    path("<uuid:uuid>/rescue/leave/", rescue.rescue_leave, name="server_rescue_leave"),
    path("<uuid:uuid>/root-password/", rescue.root_password, name="server_root_password"),
    path("<uuid:uuid>/snapshots/take/", snapshots.snapshot_take, name="snapshot_take"),
    path("<uuid:uuid>/snapshots/<slug:name>/restore/", snapshots.snapshot_restore, name="snapshot_restore"),
    path("<uuid:uuid>/snapshots/<slug:name>/delete/", snapshots.snapshot_delete, name="snapshot_delete"),
]
