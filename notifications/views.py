"""The signed-in user's mail settings (/accounts/notifications/): a checkbox per kind of mail
they can get. Operators get the operator events, tenants' admins their tenant's."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from .models import OPERATOR_EVENTS, TENANT_EVENTS, Event, OptOut


def events_for(user) -> list[str]:
    """The kinds of mail USER can get (outbox.recipients decides the same way)."""
    from accounts.models import Membership

    events: list[str] = []
    if user.is_staff:
        events += OPERATOR_EVENTS
    membership = Membership.objects.filter(user=user).first()
    if membership is not None and membership.role == Membership.ADMIN:
        events += TENANT_EVENTS
    return events


# What each checkbox says, after "Send me mail when".
LABELS = {
    Event.REQUEST: "a new server request waits for approval",
    Event.PLAN_CHANGE: "a plan change waits for a decision",
    Event.APPROVED: "a server request is approved",
    Event.REJECTED: "a server request is rejected, with the reason",
    Event.READY: "a server is ready, with its address",
    Event.STOPPED: "a server stopped unexpectedly",
    Event.ALERT: "a server crosses an alert threshold set on its page (once per episode)",
}


class MailSettingsForm(forms.Form):
    def __init__(self, *args, events: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for event in events:
            self.fields[event] = forms.BooleanField(label=LABELS[Event(event)], required=False, label_suffix="")


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
def mail_settings(request: HttpRequest) -> HttpResponse:
    user = request.user
    user_id: int = user.pk or 0  # signed in (login_required)
    events = events_for(user)
    opted_out = set(OptOut.objects.filter(user_id=user_id).values_list("event", flat=True))
    initial = {event: event not in opted_out for event in events}
    form = MailSettingsForm(request.POST or None, events=events, initial=initial)
    if request.method == "POST" and form.is_valid():
        wanted_off = {event for event in events if not form.cleaned_data[event]}
        with transaction.atomic():
            OptOut.objects.filter(user_id=user_id, event__in=events).exclude(event__in=wanted_off).delete()
            for event in wanted_off - opted_out:
                OptOut.objects.get_or_create(user_id=user_id, event=event)
        messages.success(request, "Your mail settings are saved.")
        return redirect("mail_settings")
    return render(request, "notifications/settings.html", {"form": form, "events": events})
