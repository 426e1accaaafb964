"""Django admin for operators' raw data fixes: every model of the panel."""

from __future__ import annotations

from django.contrib import admin

from .models import GuestAccount, IPAddress, IPPool, Node, Operation, Plan, Service, Template, VirtualServer


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "cpus", "memory_mb", "disk_mb", "pids", "is_active"]


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "is_active"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "queue_name", "is_active", "cpus", "memory_mb", "disk_mb", "cpu_ratio", "memory_ratio",
                    "disk_ratio", "last_seen"]


class IPAddressInline(admin.TabularInline):
    model = IPAddress
    extra = 0
    raw_id_fields = ["server"]


@admin.register(IPPool)
class IPPoolAdmin(admin.ModelAdmin):
    list_display = ["name", "network", "gateway", "node"]
    inlines = [IPAddressInline]


@admin.register(IPAddress)
class IPAddressAdmin(admin.ModelAdmin):
    list_display = ["address", "pool", "server", "allocated"]
    list_select_related = ["pool", "server"]
    raw_id_fields = ["server"]
    search_fields = ["address"]


@admin.register(VirtualServer)
class VirtualServerAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "state", "plan", "template", "node", "created"]
    list_filter = ["state", "tenant", "node", "template"]
    list_select_related = ["tenant", "plan", "template", "node"]
    search_fields = ["name", "hostname", "uuid"]
    readonly_fields = ["uuid", "created", "updated", "sampled_at"]
    # Root's login given with the request is the tenant's, applied once by provisioning.
    exclude = ["root_ssh_key", "root_password_hash"]


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["created", "kind", "server", "status", "requested_by", "finished"]
    list_filter = ["status", "kind"]
    list_select_related = ["server", "server__tenant", "requested_by"]
    readonly_fields = ["uuid", "created", "started", "finished", "job_id"]
    raw_id_fields = ["server"]


admin.site.register(GuestAccount)
admin.site.register(Service)
