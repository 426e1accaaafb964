from django.apps import AppConfig


class ConsolesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "consoles"
    verbose_name = "Consoles"
