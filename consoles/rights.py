"""Who may open a console into which server, as whom: vservers.access's rules (the same code as
every other view), plus what a console needs of the server. The ticket views ask before they
issue a ticket and the WebSocket consumer asks again before it relays one, so a right taken
away in the ticket's lifetime (a member removed, made read-only) counts at once.

- The tenant's area: a tenant admin's own live servers (others' are 404, read-only members 403,
  as for every other action).
- The operator's area: operators, any server.
- The server must be running, and the account "root" or an account of the server that the
  worker listed and that is not a system account (those belong to the template).
"""

from __future__ import annotations

from django.http import Http404

from vservers import access
from vservers.models import GuestAccount, State, VirtualServer

TENANT = "tenant"
OPERATOR = "operator"
AREAS = (TENANT, OPERATOR)
ROOT = "root"

NOT_RUNNING = "The server is not running. Start it to open a console."
UNKNOWN_ACCOUNT = "There is no such account in this server."


class Refused(Exception):
    """A console that cannot be opened for a reason the user may read (a plain sentence)."""


def console_server(user, uuid, area: str) -> VirtualServer:
    """The server USER may open a console into from AREA; Http404 / PermissionDenied like every
    other view of that area."""
    if area == OPERATOR:
        return access.operator_server(user, uuid)
    if area == TENANT:
        return access.get_server(user, uuid, act=True)
    raise Http404("no such area")


def accounts(server: VirtualServer) -> list[str]:
    """What the chooser offers: root first, then the server's own (non-system) accounts."""
    names = server.guest_accounts.filter(is_system=False).exclude(name=ROOT).values_list("name", flat=True)
    return [ROOT, *names]


def check(server: VirtualServer, account: str) -> None:
    """Refused (a plain sentence) unless a console into SERVER as ACCOUNT can be opened now."""
    if server.state != State.RUNNING:
        raise Refused(NOT_RUNNING)
    if account == ROOT:
        return
    if not GuestAccount.objects.filter(server=server, name=account, is_system=False).exists():
        raise Refused(UNKNOWN_ACCOUNT)


def may_open(user, uuid, area: str, account: str) -> VirtualServer:
    """console_server and check at once; PermissionDenied/Http404/Refused."""
    server = console_server(user, uuid, area)
    check(server, account)
    return server

