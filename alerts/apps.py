from django.apps import AppConfig


class AlertsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alerts"
    verbose_name = "Alerts"

    def ready(self) -> None:
        from vservers.usage.signals import node_sampled

        from .receivers import node_sampled as receiver

        node_sampled.connect(receiver, dispatch_uid="alerts.evaluate")
