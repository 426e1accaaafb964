from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("vservers.urls")),
    path("accounts/", include("accounts.urls")),
    # The RQ dashboard of django-rq hangs itself into the admin (/admin/django_rq/).
    path("admin/", admin.site.urls),
]
