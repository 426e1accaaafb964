from __future__ import annotations

from django.urls import path

from vservers import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
]
