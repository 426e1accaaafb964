from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from .models import MailStatus, OptOut, OutboxMail


@admin.register(OutboxMail)
class OutboxMailAdmin(admin.ModelAdmin):
    """The outbox for operators: what went out, what waits, and why a mail was given up."""

    list_display = ("created", "event", "to", "subject", "status", "attempts", "sent_at", "last_error")
    list_filter = ("status", "event")
    search_fields = ("to", "subject")
    readonly_fields = ("created", "event", "server", "recipient", "to", "subject", "body", "status", "attempts",
                       "next_attempt", "claimed_by", "claimed_at", "sent_at", "last_error")
    actions = ["send_again"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Send again (given-up mail, e.g. once the mail server is fixed)")
    def send_again(self, request, queryset) -> None:
        count = queryset.filter(status=MailStatus.FAILED).update(
            status=MailStatus.PENDING, attempts=0, next_attempt=timezone.now()
        )
        self.message_user(request, f"{count} mails will be sent again by the next run of the worker.")


@admin.register(OptOut)
class OptOutAdmin(admin.ModelAdmin):
    list_display = ("user", "event")
    list_filter = ("event",)
    search_fields = ("user__username",)
