"""Django's authentication views, rendered with our templates (templates/registration/); the
login and password change views are ours (accounts.views: the login throttle).

The URL names are Django's (login, password_change, ...), so LOGIN_URL and the admin's
"change password" links find them.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import two_factor_views, views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    # The second step for users with two-factor sign-in (accounts.two_factor).
    path("login/code/", views.LoginCodeView.as_view(), name="login_code"),
    # POST only (Django 5): a link or an image tag on another site cannot sign a user out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    # The user's own two-factor sign-in (accounts.two_factor_views).
    path("two-factor/", two_factor_views.overview, name="two_factor"),
    path("two-factor/start/", two_factor_views.start, name="two_factor_start"),
    path("two-factor/confirm/", two_factor_views.confirm, name="two_factor_confirm"),
    path("two-factor/recovery-codes/", two_factor_views.recovery_codes, name="two_factor_recovery_codes"),
    path("two-factor/disable/", two_factor_views.disable, name="two_factor_disable"),
    path("reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
]
