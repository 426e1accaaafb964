"""{% rescue_card server can_act %}: the Reinstall and rescue section of a server's page (tenant
and operator alike), with its forms, so the server views stay as they are."""

from __future__ import annotations

from django import template

from vservers.forms_rescue import ReinstallForm, RootPasswordForm
from vservers.models import ON_NODE, OperationKind, State

register = template.Library()


@register.inclusion_tag("vservers/_rescue_card.html")
def rescue_card(server, can_act: bool) -> dict:
    may = {
        "reinstall": server.may(OperationKind.REINSTALL),
        "rescue": server.may(OperationKind.RESCUE_ENTER),
        "leave": server.may(OperationKind.RESCUE_LEAVE),
        "password": server.may(OperationKind.ROOT_PASSWORD),
    }
    return {
        "server": server,
        "shown": server.state in ON_NODE,
        "can_act": can_act,
        "in_rescue": server.state == State.RESCUE,
        "may": may,
        "reinstall_form": ReinstallForm(server=server, auto_id="id_reinstall_%s") if may["reinstall"] else None,
        "password_form": RootPasswordForm(prefix=RootPasswordForm.PAGE_PREFIX) if may["password"] else None,
    }
