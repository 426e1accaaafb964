"""The download of a backup, streamed, through the node's root side.

The web process runs unprivileged and cannot read the node's backup directory. As for a
console (consoles/), it goes through the node's broker (consoles.broker, root, a Unix socket):

 1. the web process issues a single-use ticket (BackupDownload, kept as its SHA-256, good for
    PANEL_BACKUP_TICKET_SECONDS) for a backup the user may download (vservers.backups.actions
    get_backup with act: a backup holds every file of the server, its password hashes too);
 2. it connects to the broker and sends one line of JSON:
    {"kind": "download", "ticket": str, "user": int};
 3. the broker redeems the ticket (one UPDATE that only an unspent, unexpired ticket of that
    user matches), checks the rights again with the same code, opens the archive read-only
    (engine.backup_path: a validated name inside the backup directory; O_NOFOLLOW) and answers
    {"ok": true, "size": int} with the open file attached (SCM_RIGHTS), or {"ok": false,
    "error": "a plain sentence"};
 4. the web process streams from that descriptor (`response`: a block at a time, never the
    whole archive in memory, also under ASGI) with its Content-Length and a safe file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
from datetime import timedelta

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header

from consoles import protocol

from ..models import Backup
from ..models.keep import BackupDownload

log = logging.getLogger(__name__)

KIND = "download"
TICKET_BYTES = 32
# How long the web process waits for the broker's answer.
ANSWER_TIMEOUT = 30.0

EXPIRED = "This download link has expired or was already used. Download the backup again."
NOT_ALLOWED = "You may not download this backup."
NOT_HERE = "This backup is not kept on this node."
MISSING = "The backup's archive is missing on its node."
UNAVAILABLE = "The backup cannot be downloaded right now; try again later."


class DownloadRefused(Exception):
    """The message is for the user."""


def issue(backup: Backup, user) -> str:
    """A new single-use ticket for USER to download BACKUP."""
    from consoles.models import ticket_hash

    ticket = secrets.token_urlsafe(TICKET_BYTES)
    BackupDownload.objects.create(
        backup=backup, user=user, ticket_hash=ticket_hash(ticket),
        expires=timezone.now() + timedelta(seconds=settings.PANEL_BACKUP_TICKET_SECONDS))
    return ticket


def file_name(backup: Backup) -> str:
    """What the browser saves it as: the archive's own name, only in safe characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", backup.name) or "backup.tar.zst"


# --- the web side ---------------------------------------------------------------------------


def fetch(ticket: str, user_id: int, socket_path=None) -> tuple[int, int]:
    """Ask the broker for the archive TICKET stands for: (open file descriptor, size).
    DownloadRefused with the broker's sentence, or UNAVAILABLE when it cannot be reached."""
    path = str(socket_path or settings.PANEL_CONSOLE_SOCKET)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(protocol.line({"kind": KIND, "ticket": ticket, "user": user_id}))
            data, fds, _, _ = socket.recv_fds(sock, protocol.HELLO_LIMIT, 1)
        except OSError as exc:
            log.warning("backup download: the broker at %s cannot be reached: %s", path, exc)
            raise DownloadRefused(UNAVAILABLE) from None
    try:
        answer = protocol.parse_line(data.split(b"\n", 1)[0])
    except protocol.ProtocolError:
        answer = {}
    size = answer.get("size")
    if answer.get("ok") is True and fds and isinstance(size, int) and size >= 0:
        for extra in fds[1:]:
            os.close(extra)
        return fds[0], size
    for fd in fds:
        os.close(fd)
    error = answer.get("error")
    raise DownloadRefused(error if isinstance(error, str) and error else UNAVAILABLE)


# Bytes read from the archive and sent at a time.
BLOCK = 256 * 1024


def response(request, fd: int, size: int, filename: str) -> StreamingHttpResponse:
    """The archive on FD, streamed a block at a time. Under ASGI (production: gunicorn with
    uvicorn's workers) through an asynchronous iterator whose reads run in a thread: Django
    serves a synchronous iterator there, FileResponse's included, by reading it whole into a
    list first (measured: a 46 MiB archive grew the web worker's peak memory by 47 MiB).
    Under WSGI (panel.wsgi, the test client) a plain generator streams."""
    from django.core.handlers.asgi import ASGIRequest

    archive = os.fdopen(fd, "rb", buffering=0)
    asgi = isinstance(getattr(request, "_request", request), ASGIRequest)
    answer = StreamingHttpResponse(_async_blocks(archive) if asgi else _blocks(archive),
                                   content_type="application/zstd")
    answer["Content-Length"] = str(size)
    answer["Content-Disposition"] = content_disposition_header(True, filename)
    return answer


def _blocks(archive):
    with archive:
        while block := archive.read(BLOCK):
            yield block


async def _async_blocks(archive):
    try:
        while block := await asyncio.to_thread(archive.read, BLOCK):
            yield block
    finally:
        archive.close()


# --- the broker's side (root) ---------------------------------------------------------------


def serve(conn: socket.socket, hello: dict, queues: list[str]) -> None:
    """Answer one download request (3. of the module's docstring) on CONN."""
    from accounts.models import AuditEntry

    try:
        fd, size, download = _open(hello, queues)
    except DownloadRefused as exc:
        _send(conn, {"ok": False, "error": str(exc)})
        return
    try:
        _send(conn, {"ok": True, "size": size}, fd)
    finally:
        os.close(fd)
    AuditEntry.record(None, "backup.download_served", download.backup, actor=download.user, size=size)


def _send(conn: socket.socket, value: dict, fd: int | None = None) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(ANSWER_TIMEOUT)
        data = json.dumps(value).encode() + b"\n"
        if fd is None:
            conn.sendall(data)
        else:
            socket.send_fds(conn, [data], [fd])


def _open(hello: dict, queues: list[str]):
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    from consoles.models import ticket_hash
    from vservers import jobs
    from vservers.engine.errors import EngineError
    from vservers.models import Node

    from .actions import get_backup

    ticket, user_id = hello.get("ticket"), hello.get("user")
    if not isinstance(ticket, str) or not 1 <= len(ticket) <= 200 or not isinstance(user_id, int):
        raise DownloadRefused(EXPIRED)
    now = timezone.now()
    digest = ticket_hash(ticket)
    redeemed = BackupDownload.objects.filter(ticket_hash=digest, redeemed__isnull=True, expires__gt=now,
                                             user_id=user_id).update(redeemed=now)
    if redeemed != 1:
        raise DownloadRefused(EXPIRED)
    download = BackupDownload.objects.select_related("user", "backup").get(ticket_hash=digest)
    user = download.user
    if user is None or not user.is_active or download.backup is None:
        raise DownloadRefused(NOT_ALLOWED)
    try:
        backup = get_backup(user, download.backup.uuid, act=True)
    except (Http404, PermissionDenied):
        raise DownloadRefused(NOT_ALLOWED) from None
    if not Node.objects.filter(pk=backup.node_id, is_active=True, queue_name__in=queues).exists():
        raise DownloadRefused(NOT_HERE)
    try:
        path = jobs.get_engine().backup_path(backup.name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (EngineError, OSError) as exc:
        log.warning("backup download of %s: %s", backup.name, exc)
        raise DownloadRefused(MISSING) from None
    return fd, os.fstat(fd).st_size, download
