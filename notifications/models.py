"""The outbox of mail and the users' opt-outs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Event(models.TextChoices):
    # To operators (staff users).
    REQUEST = "request", "A new server request"
    PLAN_CHANGE = "plan_change", "A plan change waiting for a decision"
    # To the admins of the server's tenant.
    APPROVED = "approved", "A server request approved"
    REJECTED = "rejected", "A server request rejected"
    READY = "ready", "A server ready"
    STOPPED = "stopped", "A server stopped unexpectedly"
    ALERT = "alert", "An alert threshold of a server crossed"


OPERATOR_EVENTS = (Event.REQUEST, Event.PLAN_CHANGE)
TENANT_EVENTS = (Event.APPROVED, Event.REJECTED, Event.READY, Event.STOPPED, Event.ALERT)


class MailStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    SENDING = "sending", "Being sent"
    SENT = "sent", "Sent"
    FAILED = "failed", "Given up"


class OutboxMail(models.Model):
    """One mail to one address. Written in the transaction of its event; the sender moves it
    pending -> sending (its claim) -> sent, or back to pending with a later next_attempt
    after an error, or to failed after PANEL_MAIL_ATTEMPTS attempts (last_error says why)."""

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    event = models.CharField(max_length=20, choices=Event.choices)
    server = models.ForeignKey(
        "vservers.VirtualServer", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The address and the text as they were when the event happened.
    to = models.EmailField(max_length=254)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    status = models.CharField(max_length=10, choices=MailStatus.choices, default=MailStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt = models.DateTimeField(default=timezone.now)
    # Which sender holds the claim ("runner id/nonce", vservers.jobs.runner_id) and since when.
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-pk"]
        verbose_name = "outbox mail"
        indexes = [models.Index(fields=["status", "next_attempt"], name="outbox_due")]

    def __str__(self) -> str:
        return f"{self.get_event_display()} to {self.to} ({self.status})"


class OptOut(models.Model):
    """USER wants no mail of EVENT: notify writes no row for them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mail_opt_outs")
    event = models.CharField(max_length=20, choices=Event.choices)

    class Meta:
        verbose_name = "mail opt-out"
        constraints = [models.UniqueConstraint(fields=["user", "event"], name="one_opt_out_per_user_and_event")]

    def __str__(self) -> str:
        return f"{self.user} opted out of {self.get_event_display().lower()}"
