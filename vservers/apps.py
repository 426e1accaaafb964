from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _regrant_nodes(sender, using="default", **kwargs) -> None:
    """After each migrate, the nodes' database roles get exactly what today's rules give:
    an upgrade narrows the privileges of nodes that joined under an older version."""
    from .nodes import credentials

    if using == "default":
        credentials.regrant_all()


class VserversConfig(AppConfig):
    name = "vservers"
    verbose_name = "Virtual servers"

    def ready(self) -> None:
        post_migrate.connect(_regrant_nodes, sender=self, dispatch_uid="vservers.regrant_nodes")
