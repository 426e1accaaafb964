"""The backups card's forms: the schedule, and a new server made from a backup."""

from __future__ import annotations

import calendar

from django import forms

from ..forms import ServerRequestForm
from ..models import BackupFrequency, BackupSchedule, VirtualServer


class ScheduleForm(forms.Form):
    enabled = forms.BooleanField(required=False, label="Back this server up by itself")
    frequency = forms.ChoiceField(choices=BackupFrequency.choices, initial=BackupFrequency.DAILY)
    weekday = forms.TypedChoiceField(
        choices=list(enumerate(calendar.day_name)), coerce=int, initial=0, required=False,
        label="Day of the week", help_text="Weekly backups only.")
    time = forms.TimeField(
        label="Time of day (UTC)", initial="03:00", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        help_text="In UTC, the panel's clock; a backup takes a few minutes from then.")

    def __init__(self, *args, server: VirtualServer, schedule: BackupSchedule | None = None,
                 schedule_read: bool = False, **kwargs) -> None:
        if not schedule_read:  # the card passes the schedule it read already
            schedule = BackupSchedule.objects.filter(server=server).first()
        if schedule is not None and "initial" not in kwargs:
            kwargs["initial"] = {"enabled": schedule.enabled, "frequency": schedule.frequency,
                                 "weekday": schedule.weekday, "time": schedule.time}
        super().__init__(*args, **kwargs)
        self.server = server
        kept = server.plan.backups_kept
        self.fields["enabled"].help_text = (
            f"Your plan keeps the last {kept} scheduled backups of this server; older ones are deleted. "
            "Backups you make yourself are kept until you delete them." if kept else
            "Your plan keeps no scheduled backups.")

    def clean(self) -> dict:
        data = super().clean() or {}
        if data.get("enabled") and self.server.plan.backups_kept == 0:
            raise forms.ValidationError("Your plan keeps no scheduled backups; ask for a plan that does.")
        if data.get("frequency") == BackupFrequency.WEEKLY and data.get("weekday") is None:
            self.add_error("weekday", "Choose the day of the week.")
        return data


class RestoreNewForm(ServerRequestForm):
    """A new server made from a backup: a name, a host name and a plan; its system is the one
    the backup was taken on, and root's login comes from the backup's files."""

    def __init__(self, *args, backup, **kwargs) -> None:
        super().__init__(*args, tenant=backup.tenant, **kwargs)
        self.backup = backup
        for name in ("template", "ssh_key", "root_password"):
            del self.fields[name]
        self.fields["hostname"].initial = backup.manifest.get("hostname", "")

    def clean_plan(self):
        plan = self.cleaned_data["plan"]
        needed = self.backup.manifest.get("bytes")
        if isinstance(needed, int) and needed > plan.disk_mb * 2**20:
            raise forms.ValidationError(
                f"The backup holds {needed / 2**20:.0f} MB of files; choose a plan with more disk.")
        return plan
