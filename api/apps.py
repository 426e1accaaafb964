from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API"
    default_auto_field = "django.db.models.BigAutoField"
    # No ready() importing api.schema: drf-spectacular and DRF's serializers (with psycopg,
    # through rest_framework.compat) cost every process about a third of django.setup(), and
    # the workers never make a schema. api/views/docs.py, the schema's view, imports it.
