from __future__ import annotations

from django.contrib import admin

from .forms import AdminLoginForm, ThrottledPasswordChangeForm
from .models import AuditEntry, LoginFailure, Membership, Tenant

# The admin's login page counts against the same login throttle as the panel's.
admin.site.login_form = AdminLoginForm


class AdminPasswordChangeForm(ThrottledPasswordChangeForm):
    required_css_class = "required"  # as the admin's own form


def password_change(self, request, extra_context=None):
    """AdminSite.password_change with the throttled form: guessing the old password there
    counts as failed sign-ins too."""
    from django.urls import reverse

    from .views import PasswordChangeView

    defaults = {
        "form_class": AdminPasswordChangeForm,
        "success_url": reverse("admin:password_change_done", current_app=self.name),
        "extra_context": {**self.each_context(request), **(extra_context or {})},
    }
    if self.password_change_template is not None:
        defaults["template_name"] = self.password_change_template
    request.current_app = self.name
    return PasswordChangeView.as_view(**defaults)(request)


# The admin's URLs take the method from the site when they are made (panel/urls.py).
admin.site.password_change = password_change.__get__(admin.site)  # type: ignore[method-assign]


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
