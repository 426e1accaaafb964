"""The operator's "Add node" form (vservers.nodes.views)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from ..models import Node

_ADDRESS_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


class NodeAddForm(forms.ModelForm):
    class Meta:
        model = Node
        fields = ["name", "ssh_address", "vserver_root"]
        labels = {"ssh_address": "SSH address", "vserver_root": "State root (VSERVER_ROOT)"}
        help_texts = {
            "name": "letters, digits and hyphens; its queue is node-<name>",
            "ssh_address": "host or host:port of the node's sshd, as the other nodes reach it (migrations)",
            "vserver_root": "where the node's engine keeps its state",
        }

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if "_" in name:
            # "_" ends the prefix of the node's job ids in Redis (vservers.nodes.queues.SEPARATOR).
            raise ValidationError("Letters, digits and hyphens only (no underscore).")
        if name == "add":
            raise ValidationError("This name is taken by the page that adds nodes.")
        if Node.objects.filter(queue_name="node-" + name).exists():
            raise ValidationError("A node already has this queue.")
        return name

    def clean_ssh_address(self) -> str:
        value = self.cleaned_data["ssh_address"].strip()
        if not value or not set(value) <= _ADDRESS_CHARS or value.startswith("-"):
            raise ValidationError("Give a host name or address, optionally with :port.")
        return value

    def clean_vserver_root(self) -> str:
        value = self.cleaned_data["vserver_root"].strip()
        if not value.startswith("/") or ".." in value.split("/") or any(c.isspace() for c in value):
            raise ValidationError("An absolute path without spaces or '..'.")
        return value.rstrip("/") or "/"
