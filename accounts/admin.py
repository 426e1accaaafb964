from __future__ import annotations

from django.contrib import admin

from .forms import AdminLoginForm
from .models import AuditEntry, LoginFailure, Membership, Tenant

# The admin's login page counts against the same login throttle as the panel's.
admin.site.login_form = AdminLoginForm


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "contact_email", "max_servers"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created", "actor", "action", "object_repr", "remote_addr"]
    list_filter = ["action"]
    list_select_related = ["actor"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]


@admin.register(LoginFailure)
class LoginFailureAdmin(admin.ModelAdmin):
    """Failed sign-ins inside the throttle's window. Deleting a user's rows lifts the lock
    early (the throttle counts rows); they cannot be added or edited here."""

    list_display = ["created", "username", "address"]
    search_fields = ["username", "address"]
    readonly_fields = ["created", "username", "address"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
