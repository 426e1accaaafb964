"""{% backups_card server can_act operator %}: the Backups section of a server's page (the
tenant's and the operator's), with its own queries, so the server views stay as they are."""

from __future__ import annotations

import calendar

from django import template

from ..backups.actions import server_backups
from ..backups.forms import ScheduleForm
from ..models import BackupSchedule, Operation, OperationKind, OperationStatus

register = template.Library()

BACKUP_KINDS = (OperationKind.BACKUP_CREATE, OperationKind.BACKUP_RESTORE)


@register.inclusion_tag("vservers/backups/_card.html", takes_context=True)
def backups_card(context, server, can_act: bool, operator: bool = False) -> dict:
    schedule = BackupSchedule.objects.filter(server=server).first()
    running = (Operation.objects.filter(server=server, kind__in=BACKUP_KINDS, status=OperationStatus.RUNNING)
               .order_by("-pk").first())
    return {
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
        "server": server,
        "can_act": can_act,
        "operator": operator,
        "backups": list(server_backups(server)[:50]),
        "schedule": schedule,
        "weekday_name": calendar.day_name[schedule.weekday] if schedule else "",
        "schedule_form": ScheduleForm(server=server, schedule=schedule, schedule_read=True, auto_id="id_backup_%s"),
        "running": running,
        "may_back_up": server.may(OperationKind.BACKUP_CREATE),
    }
