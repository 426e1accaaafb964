"""Writing mail into the outbox: who gets which event, and what it says.

Mail is plain text. Names come from tenants (server names, host names) and reasons from
operators: they are untrusted, so every control character (CR and LF above all) becomes a
space before it reaches a subject, and the body keeps only line breaks. Django's own refusal
of newlines in headers (BadHeaderError) stays behind that as the backstop."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone

from .models import OPERATOR_EVENTS, TENANT_EVENTS, Event, OutboxMail

# A server that keeps dying is reported once in this long, not once per death.
STOPPED_QUIET = timedelta(minutes=15)
SUBJECT_LENGTH = 200


def clean_line(text: object, limit: int = SUBJECT_LENGTH) -> str:
    """TEXT on one line: control characters and runs of white space become one space."""
    cleaned = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in str(text))
    return " ".join(cleaned.split())[:limit]


def clean_text(text: object) -> str:
    """TEXT with its line breaks (normalised to LF) and no other control character."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(clean_line(line, limit=2000) for line in lines).strip()


def recipients(event: str, server) -> QuerySet:
    """The users EVENT about SERVER goes to: active operators for operator events, the active
    admins of the server's tenant for tenant events; only those with an address who have not
    opted out of it."""
    from accounts.models import Membership

    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    if event in OPERATOR_EVENTS:
        users = users.filter(is_staff=True)
    elif event in TENANT_EVENTS:
        users = users.filter(membership__tenant_id=server.tenant_id, membership__role=Membership.ADMIN)
    else:
        raise ValueError(f"unknown event {event!r}")
    # Never the password hash: a node's worker writes notifications, and its database role
    # may not read that column (vservers.nodes.credentials).
    return users.exclude(mail_opt_outs__event=event).order_by("pk").defer("password")


def _addresses(server) -> str:
    return ", ".join(server.ip_list()) or "none yet"


def _who(server) -> str:
    return f"{clean_line(server.name)} ({clean_line(server.hostname)})"


def _request(server, context: dict) -> tuple[str, str]:
    tenant = clean_line(server.tenant.name)
    by = context.get("user")
    lines = [
        f"{tenant} asks for a new server {_who(server)}.",
        f"Plan: {clean_line(server.plan.name)}. Template: {clean_line(server.template.name)}.",
    ]
    if by is not None:
        lines.append(f"Asked by {clean_line(by.get_username())}.")
    lines.append("Approve or reject it on the Approvals page of the operator area.")
    return f"New server request: {tenant}, {clean_line(server.name)}", "\n".join(lines)


def _plan_change(server, context: dict) -> tuple[str, str]:
    tenant = clean_line(server.tenant.name)
    plan = context["plan"]
    return (
        f"Plan change waiting: {tenant}, {clean_line(server.name)}",
        f"{tenant} asks to move the server {_who(server)} from plan {clean_line(server.plan.name)} "
        f"to plan {clean_line(plan.name)}.\n"
        "Approve or reject it on the Approvals page of the operator area.",
    )


def _approved(server, context: dict) -> tuple[str, str]:
    return (
        f"Your server {clean_line(server.name)} is approved",
        f"Your request for the server {_who(server)} is approved.\n"
        f"It is being set up now. Its address: {_addresses(server)}.\n"
        "You get another mail when it is ready.",
    )


def _rejected(server, context: dict) -> tuple[str, str]:
    reason = clean_text(context.get("reason") or "") or "none given"
    return (
        f"Your server request {clean_line(server.name)} was rejected",
        f"Your request for the server {_who(server)} was rejected.\n"
        f"The operator's reason:\n\n{reason}\n\n"
        "Nothing was set up. You can dismiss the request in the panel.",
    )


def _ready(server, context: dict) -> tuple[str, str]:
    return (
        f"Your server {clean_line(server.name)} is ready",
        f"Your server {_who(server)} is set up and running.\n"
        f"Its address: {_addresses(server)}.\n"
        "Sign in to the panel to manage it.",
    )


def _stopped(server, context: dict) -> tuple[str, str]:
    after = (
        "It is set to start automatically: the panel starts it again, unless it keeps stopping."
        if server.autostart else
        "It does not start automatically: start it in the panel once you are ready."
    )
    return (
        f"Your server {clean_line(server.name)} stopped unexpectedly",
        f"Your server {_who(server)} stopped unexpectedly: its init process exited.\n{after}",
    )


def _percent(value: object) -> str:
    return f"{float(value):.0f} %" if isinstance(value, (int, float)) else "?"


def _alert(server, context: dict) -> tuple[str, str]:
    """An alert episode began (alerts.evaluate): CONTEXT has `alert` (disk, memory or
    unreachable), `threshold`, `minutes`, `value` and `last_sample`."""
    name, kind = clean_line(server.name), context.get("alert")
    threshold, minutes = context.get("threshold"), context.get("minutes")
    if kind == "disk":
        subject = f"Alert: the disk of {name} is {_percent(context.get('value'))} full"
        what = (f"The disk of your server {_who(server)} is {_percent(context.get('value'))} full "
                f"(of the {server.plan.disk_mb} MB of its plan): at or above your alert threshold of {threshold} %.")
        again = f"the disk has been below {_percent(context.get('clears_below'))} again"
    elif kind == "memory":
        subject = f"Alert: {name} uses {_percent(context.get('value'))} of its memory"
        what = (f"Your server {_who(server)} has used at least {threshold} % of the {server.plan.memory_mb} MB "
                f"memory of its plan for {minutes} minutes; now {_percent(context.get('value'))}. "
                "Memory counts the page cache of the server's own files too.")
        again = f"its memory use has been below {_percent(context.get('clears_below'))} again"
    else:
        last = context.get("last_sample")
        seen = f"{last:%Y-%m-%d %H:%M} UTC" if last else "never"
        subject = f"Alert: {name} is unreachable"
        what = (f"Your server {_who(server)} should be running, but for {minutes} minutes it has not been: "
                f"its init is not running, or its node has sent no usage sample of it (last sample: {seen}).")
        again = "it has been seen running again"
    return subject, (
        f"{what}\n"
        f"This is one mail for this episode: you get the next one only after {again} and the alert fires anew.\n"
        "Change or switch off this alert on the server's page in the panel, or turn alert mail off in your "
        "mail settings."
    )


MESSAGES: dict[str, Callable[[object, dict], tuple[str, str]]] = {
    Event.REQUEST: _request,
    Event.PLAN_CHANGE: _plan_change,
    Event.APPROVED: _approved,
    Event.REJECTED: _rejected,
    Event.READY: _ready,
    Event.STOPPED: _stopped,
    Event.ALERT: _alert,
}


def notify(event: str, server, **context) -> int:
    """Write EVENT's mail about SERVER into the outbox, one row per recipient; returns how
    many. Call it inside the transaction that makes the event happen: the rows commit or roll
    back with it. CONTEXT: `user` (who asked) for REQUEST, `plan` (the new one) for
    PLAN_CHANGE, `reason` for REJECTED, the alert's figures for ALERT (_alert)."""
    if event == Event.STOPPED and OutboxMail.objects.filter(
        event=event, server=server, created__gte=timezone.now() - STOPPED_QUIET
    ).exists():
        return 0
    subject, body = MESSAGES[event](server, context)
    subject = clean_line(subject)
    rows = []
    seen: set[str] = set()
    users: Iterable = recipients(event, server)
    for user in users:
        address = user.email.strip()
        if address.lower() in seen:
            continue
        seen.add(address.lower())
        rows.append(OutboxMail(event=event, server=server, recipient=user, to=address, subject=subject, body=body))
    OutboxMail.objects.bulk_create(rows)
    return len(rows)
