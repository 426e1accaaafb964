from __future__ import annotations

from django.apps import AppConfig


class VserversConfig(AppConfig):
    name = "vservers"
    verbose_name = "Virtual servers"
