"""The Alerts form of a server: the three rules side by side, each with its switch."""

from __future__ import annotations

from django import forms

from .models import DEFAULTS, USES_MINUTES, USES_THRESHOLD, AlertRule, Kind

PERCENT_ERROR = "Enter a whole percentage from 1 to 100."
MINUTES_ERROR = "Enter whole minutes from 1 to 1440 (a day)."


def percent_field(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, min_value=1, max_value=100,
        error_messages={"required": PERCENT_ERROR, "invalid": PERCENT_ERROR,
                        "min_value": PERCENT_ERROR, "max_value": PERCENT_ERROR},
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "input-short"}),
    )


def minutes_field(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, min_value=1, max_value=1440,
        error_messages={"required": MINUTES_ERROR, "invalid": MINUTES_ERROR,
                        "min_value": MINUTES_ERROR, "max_value": MINUTES_ERROR},
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "class": "input-short"}),
    )


class AlertsForm(forms.Form):
    """Fields <kind>_enabled, <kind>_threshold (disk, memory) and <kind>_minutes (memory,
    unreachable). Every number is required, also for a rule switched off: the page always
    shows what would apply once it is switched on."""

    disk_enabled = forms.BooleanField(required=False, label="Mail me when the disk is full", label_suffix="")
    disk_threshold = percent_field("Disk used at or above (% of the plan's disk)")
    memory_enabled = forms.BooleanField(required=False, label="Mail me when memory runs short", label_suffix="")
    memory_threshold = percent_field("Memory used at or above (% of the plan's memory)")
    memory_minutes = minutes_field("for at least (minutes)")
    unreachable_enabled = forms.BooleanField(required=False, label="Mail me when the server is unreachable",
                                             label_suffix="")
    unreachable_minutes = minutes_field("for at least (minutes)")

    def __init__(self, *args, rules: dict[str, AlertRule], read_only: bool = False, **kwargs) -> None:
        initial: dict[str, object] = {}
        for kind in Kind:
            rule = rules.get(kind)
            threshold, minutes = DEFAULTS[kind]
            initial[f"{kind}_enabled"] = bool(rule and rule.enabled)
            if kind in USES_THRESHOLD:
                initial[f"{kind}_threshold"] = rule.threshold if rule and rule.threshold else threshold
            if kind in USES_MINUTES:
                initial[f"{kind}_minutes"] = rule.minutes if rule and rule.minutes else minutes
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        if read_only:
            for field in self.fields.values():
                field.disabled = True

    def settings(self) -> dict[str, dict]:
        """The cleaned form as kind -> {"enabled", "threshold", "minutes"}."""
        data = self.cleaned_data
        return {
            kind: {
                "enabled": bool(data.get(f"{kind}_enabled")),
                "threshold": data.get(f"{kind}_threshold") if kind in USES_THRESHOLD else None,
                "minutes": data.get(f"{kind}_minutes") if kind in USES_MINUTES else None,
            }
            for kind in Kind
        }

    def groups(self) -> list[tuple[str, list]]:
        """(kind label, its bound fields) for the template."""
        return [(kind.label, [self[name] for name in self.fields if name.startswith(f"{kind.value}_")])
                for kind in Kind]
