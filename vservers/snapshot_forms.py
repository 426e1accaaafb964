"""The snapshot card's forms (tenant and operator pages, and the API's input through run_form)."""

from __future__ import annotations

from django import forms

from .engine import validate
from .forms import engine_check


class SnapshotTakeForm(forms.Form):
    name = forms.CharField(
        required=False, max_length=32, label="Name (optional)",
        help_text="Lowercase letters, digits and '-', starting with a letter; empty: the time (UTC).",
    )
    label = forms.CharField(
        required=False, max_length=100, label="Note (optional)", help_text="e.g. before the upgrade",
    )

    def __init__(self, *args, taken: set[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.taken = taken or set()

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            return ""
        name = engine_check(validate.snapshot_name, name)
        if name in self.taken:
            raise forms.ValidationError(f"There is a snapshot named {name} already.", code="taken")
        return name

    def clean_label(self) -> str:
        label = self.cleaned_data["label"]
        if not label.isprintable():
            raise forms.ValidationError("The note must be one line of text.", code="invalid")
        return " ".join(label.split())


class SnapshotRestoreForm(forms.Form):
    confirm = forms.BooleanField(
        required=True, label="Yes, put this snapshot back",
        help_text="The server restarts; what changed on its disk since the snapshot is lost.",
        error_messages={"required": "Tick the box to confirm the restore."},
    )
