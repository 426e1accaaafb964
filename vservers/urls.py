from __future__ import annotations

from django.urls import include, path

from vservers.views import common

urlpatterns = [
    path("", common.home, name="home"),
    path("healthz", common.healthz, name="healthz"),
    path("servers/", include("vservers.urls_tenant")),
    path("operator/", include("vservers.urls_operator")),
]
