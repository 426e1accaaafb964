from __future__ import annotations

from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from .forms import AdminLoginForm, ThrottledPasswordChangeForm
from .models import AuditEntry, LoginFailure, Membership, Tenant

# The admin's login page counts against the same login throttle as the panel's.
admin.site.login_form = AdminLoginForm


@method_decorator(never_cache)
def login(self, request, extra_context=None):
    """AdminSite.login through the panel's LoginView (accounts.views): the same throttle, the
    same 429 with Retry-After, the same known-device cookie. Only the template and the
    context are the admin's (as in AdminSite.login)."""
    from django.contrib.auth import REDIRECT_FIELD_NAME
    from django.http import HttpResponseRedirect
    from django.urls import reverse
    from django.utils.translation import gettext as _

    from .views import LoginView

    if request.method == "GET" and self.has_permission(request):
        return HttpResponseRedirect(reverse("admin:index", current_app=self.name))
    context = {
        **self.each_context(request),
        "title": _("Log in"),
        "subtitle": None,
        "app_path": request.get_full_path(),
        "username": request.user.get_username(),
    }
    if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
        context[REDIRECT_FIELD_NAME] = reverse("admin:index", current_app=self.name)
    context.update(extra_context or {})
    request.current_app = self.name
    return LoginView.as_view(
        extra_context=context,
        authentication_form=self.login_form,
        template_name=self.login_template or "admin/login.html",
        redirect_authenticated_user=False,
    )(request)


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


_has_permission = admin.site.has_permission


def has_permission(self, request) -> bool:
    """AdminSite.has_permission, and the same second factor as the panel's pages: a staff user
    who has two-factor sign-in, or must have it (accounts.two_factor.is_required), needs a
    verified session (django-otp's OTPAdminSite asks the same of everybody). The middleware
    (accounts.middleware.SecondFactorMiddleware) already holds such sessions back; this is the
    admin's own check, as OTPAdminSite's."""
    from . import two_factor

    if not _has_permission(request):
        return False
    user = request.user
    return two_factor.is_verified(request) or not (two_factor.is_required(user) or two_factor.is_enabled(user))


# The admin's URLs take the methods from the site when they are made (panel/urls.py).
admin.site.password_change = password_change.__get__(admin.site)  # type: ignore[method-assign]
admin.site.login = login.__get__(admin.site)  # type: ignore[method-assign]
admin.site.has_permission = has_permission.__get__(admin.site)  # type: ignore[method-assign]

# Authenticators and recovery codes change only through the panel's pages and the operator's
# reset, which audit every change (accounts.two_factor); django-otp's admin pages would show
# the TOTP secrets and add devices past the audit log.
for _model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


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
    """Failed sign-ins inside the throttle's window. Deleting a user's rows ends the delays
    early (the throttle counts rows); they cannot be added or edited here."""

    list_display = ["created", "username", "address", "device"]
    search_fields = ["username", "address"]
    readonly_fields = ["created", "username", "address", "device", "user_cleared"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
