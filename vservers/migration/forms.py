"""The operator's form to move a server: a target node, or none to let placement choose."""

from __future__ import annotations

from django import forms

from ..models import Node


class MigrateForm(forms.Form):
    target = forms.ModelChoiceField(
        queryset=Node.objects.filter(is_active=True).order_by("name"), to_field_name="name", required=False,
        empty_label="Choose for me", label="Target node",
        help_text="Empty: the node with the most free capacity that can take it.",
    )

    def __init__(self, *args, server=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if server is not None and server.node_id:
            field = self.fields["target"]
            field.queryset = Node.objects.filter(is_active=True).exclude(pk=server.node_id).order_by("name")  # type: ignore[attr-defined]
