"""The backups' pages, in the tenant's area (/servers/): the card on a server's page (also on
the operator's, posting here: operators see every backup), the tenant-wide list (backups of
deleted servers too), restoring (confirmed), a new server from a backup, delete, download.

Access goes through vservers.access and vservers.backups.actions.get_backup: another tenant's
server or backup is 404, read-only members get 403 on every POST. Every POST is audited (the
operations by actions.request_operation, the rest here)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import AuditEntry

from .. import access
from .. import actions as server_actions
from ..models import OperationKind
from . import actions, downloads
from .forms import RestoreNewForm, ScheduleForm


def _back(request: HttpRequest, server) -> HttpResponse:
    """To the server's page the form was on: the operator's (area=operator) or the tenant's."""
    if server is None or not server.is_live:
        return redirect("backup_list")
    if request.POST.get("area") == "operator" and access.is_operator(request.user):
        return redirect(f"/operator/servers/{server.uuid}/#backups")
    return redirect(f"/servers/{server.uuid}/#backups")


def _queue(request: HttpRequest, server, ask, done: str) -> HttpResponse:
    try:
        ask()
    except server_actions.ActionRefused as exc:
        messages.error(request, f"{server.name if server else 'Backup'}: {exc}.")
    else:
        messages.success(request, f"{server.name}: {done}")
    return _back(request, server)


@login_required
@require_POST
def backup_create(request: HttpRequest, uuid) -> HttpResponse:
    server = access.get_server(request.user, uuid, act=True)
    return _queue(request, server, lambda: actions.backup_now(server, request.user, request=request),
                  "backup queued; its progress shows below.")


@login_required
@require_POST
def schedule(request: HttpRequest, uuid) -> HttpResponse:
    server = access.get_server(request.user, uuid, act=True)
    form = ScheduleForm(request.POST, server=server)
    if form.is_valid():
        saved = actions.save_schedule(server, form.cleaned_data, request=request)
        if saved.enabled:
            messages.success(request, f"{server.name}: backed up {saved.get_frequency_display().lower()}; "
                                      f"next at {saved.next_due:%Y-%m-%d %H:%M} UTC.")
        else:
            messages.success(request, f"{server.name}: scheduled backups are off.")
    else:
        errors = "; ".join(str(e) for field in form.errors.values() for e in field)
        messages.error(request, f"{server.name}: the schedule was not saved: {errors}")
    return _back(request, server)


@login_required
def backup_list(request: HttpRequest) -> HttpResponse:
    """Every backup of the user's tenant (operators: of every tenant), those of deleted
    servers too: they can be restored into a new server from here."""
    member = access.membership(request.user)
    if member is None and not access.is_operator(request.user):
        from ..views.tenant.access import no_tenant

        return no_tenant(request)
    backups = list(actions.backups_for(request.user).order_by("-created")[:500])
    return render(request, "vservers/backups/list.html", {
        "backups": backups, "can_act": access.can_act(request.user), "show_tenant": access.is_operator(request.user),
    })


@login_required
@require_http_methods(["GET", "POST"])
def restore(request: HttpRequest, backup) -> HttpResponse:
    """Put a backup back into the server it was taken of: a page that says what happens, and
    its button (the server's files are replaced; it is stopped and started)."""
    found = actions.get_backup(request.user, backup, act=request.method == "POST")
    server = found.server if found.server is not None and found.server.is_live else None
    if request.method == "POST":
        if server is None:
            messages.error(request, "Its server was deleted; restore it into a new server instead.")
            return redirect("backup_new_server", backup=found.uuid)
        return _queue(request, server, lambda: actions.restore(found, request.user, request=request),
                      f"restoring the backup of {found.created:%Y-%m-%d %H:%M} UTC.")
    return render(request, "vservers/backups/restore.html", {
        "backup": found, "server": server, "can_act": access.can_act(request.user),
        "allowed": server is not None and server.may(OperationKind.BACKUP_RESTORE),
    })


@login_required
@require_http_methods(["GET", "POST"])
def new_server(request: HttpRequest, backup) -> HttpResponse:
    """A new server made from a backup: requested like any other; an operator approves it on
    the backup's node and gives it a new address; then the backup is restored into it."""
    found = actions.get_backup(request.user, backup, act=True)
    form = RestoreNewForm(request.POST or None, backup=found)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            server = actions.request_from_backup(found, request.user, name=data["name"], hostname=data["hostname"],
                                                 plan=data["plan"], request=request)
        except server_actions.QuotaExceeded as exc:
            form.add_error("plan", str(exc))
        except server_actions.NameTaken:
            form.add_error("name", "You already have a server with this name.")
        except server_actions.ActionRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Requested {server.name} from the backup. An operator will set it up shortly.")
            return redirect("server_detail", uuid=server.uuid)
    return render(request, "vservers/backups/new_server.html", {"backup": found, "form": form})


@login_required
@require_POST
def delete(request: HttpRequest, backup) -> HttpResponse:
    found = actions.get_backup(request.user, backup, act=True)
    server = found.server
    try:
        actions.delete(found, request.user, request=request)
    except server_actions.ActionRefused as exc:
        messages.error(request, f"The backup of {found.server_name}: {exc}.")
    else:
        messages.success(request, f"The backup of {found.server_name} of {found.created:%Y-%m-%d %H:%M} UTC "
                                  "is being deleted.")
    if server is not None and server.is_live:
        return _back(request, server)
    return redirect("backup_list")


@login_required
@require_POST
def download(request: HttpRequest, backup) -> HttpResponseBase:
    """The archive, streamed from the descriptor the node's broker opened for a single-use
    ticket (vservers.backups.downloads). A POST: it spends a ticket and is audited."""
    found = actions.get_backup(request.user, backup, act=True)
    ticket = downloads.issue(found, request.user)
    AuditEntry.record(request, "backup.download", found, server=found.server_name, name=found.name)
    try:
        fd, size = downloads.fetch(ticket, request.user.pk or 0)
    except downloads.DownloadRefused as exc:
        messages.error(request, f"The backup of {found.server_name}: {exc}")
        return redirect("backup_list")
    return downloads.response(request, fd, size, downloads.file_name(found))
