from __future__ import annotations

from django.contrib import admin

from .models import AlertEpisode, AlertRule


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("server", "kind", "enabled", "threshold", "minutes", "pending_since")
    list_filter = ("kind", "enabled")
    raw_id_fields = ("server",)


@admin.register(AlertEpisode)
class AlertEpisodeAdmin(admin.ModelAdmin):
    list_display = ("rule", "started", "ended", "value", "mails")
    raw_id_fields = ("rule",)
