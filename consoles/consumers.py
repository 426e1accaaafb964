"""The browser's end of a console: a WebSocket (ws/servers/<uuid>/console/) that the web process
relays to the node's console broker over its Unix socket (consoles.protocol).

The web process stays what it is everywhere else: unprivileged, and it never touches the kernel.
It checks who is asking, with the same code as every page (the session as accounts.middleware
reads it, with its epoch and second factor; the rights of consoles.rights), and that the ticket
the browser brings is this user's for this server; the broker then redeems the ticket (once)
and attaches the terminal.

What the browser sends: first one text message {"ticket", "cols", "rows"} (within
HELLO_SECONDS), then binary messages (keystrokes) and text messages {"resize": [cols, rows]}.
What it gets: binary messages (the terminal's output) and, last, one text message
{"closed": "a plain sentence"} before the server closes the socket. Nothing else reaches the
browser: no traceback, no path of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone
from django_otp.middleware import OTPMiddleware

from accounts import two_factor
from accounts.middleware import get_user

from . import protocol, rights
from .models import ConsoleSession, ticket_hash

log = logging.getLogger(__name__)

# How long the browser has for its first message, and the broker for its answer.
HELLO_SECONDS = 5.0
BROKER_SECONDS = 15.0
# Terminal sizes outside these are a client's mistake (or mischief), not a window.
MAX_COLS = 1000
MAX_ROWS = 500
# One keystroke message at most (a paste): the broker's frames carry MAX_PAYLOAD each.
MAX_INPUT = 1 << 20

# Close codes (4000-4999 are the application's): the sentence goes in the last text message.
POLICY = 4403
GONE = 4410
BAD = 4400
UNAVAILABLE = 4503

NO_BROKER = "The console service is not running on this server's node."
BAD_TICKET = "This console ticket is not valid (used, expired, or not yours). Open the console again."
NOT_ALLOWED = "You may not open a console into this server."
TOO_SLOW = "The console did not receive its ticket in time. Open the console again."
BAD_MESSAGE = "The browser sent something the console does not understand."
ENDED = "The console ended."
BROKER_LOST = "The console service stopped. Open the console again."


class Closed(Exception):
    """End the session with this sentence for the user (and this close code)."""

    def __init__(self, sentence: str, code: int = POLICY) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.code = code


def session_user(session):
    """The user of this session exactly as a page request gets it: accounts.middleware's
    get_user (the session's hash and epoch), django-otp's verification, and
    SecondFactorMiddleware's rule (a user with two-factor sign-in, or an operator who must use
    it, and a session that did not give the code: nobody). AnonymousUser when it fails."""
    request: Any = SimpleNamespace(session=session)
    user = get_user(request)
    if not user.is_authenticated:
        return AnonymousUser()
    request.user = user
    OTPMiddleware(lambda r: r)(request)  # installs request.user.is_verified(), as on a page
    if two_factor.is_verified(request):
        return request.user
    if two_factor.is_enabled(user) or two_factor.is_required(user):
        return AnonymousUser()
    return request.user


def check_ticket(user, server_uuid, ticket: str) -> ConsoleSession:
    """The ticket's row, if it is USER's, for this server, unspent and unexpired, and USER still
    may open it (consoles.rights, in the area it was issued from); else Closed. The broker
    redeems it (the single use is its check, in one UPDATE); this only keeps a relay from
    opening for someone else's ticket."""
    found = (
        ConsoleSession.objects.select_related("server")
        .filter(ticket_hash=ticket_hash(ticket), user=user, server__uuid=server_uuid,
                started__isnull=True, ended__isnull=True, expires__gt=timezone.now())
        .first()
    )
    if found is None:
        raise Closed(BAD_TICKET)
    area = rights.OPERATOR if user.is_staff else rights.TENANT
    try:
        rights.may_open(user, server_uuid, area, found.account)
    except (Http404, PermissionDenied):
        raise Closed(NOT_ALLOWED) from None
    except rights.Refused as exc:
        raise Closed(str(exc), GONE) from None
    return found


def end_unrecorded(pk: int, reason: str) -> None:
    """The broker records a session's end; when it could not (it died, or never started the
    session), the record ends here, so the operator's list shows no session open forever."""
    ConsoleSession.objects.filter(pk=pk, ended__isnull=True).update(ended=timezone.now(), end_reason=reason[:200])


def _size(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise Closed(BAD_MESSAGE, BAD)
    return value


class ConsoleConsumer(AsyncWebsocketConsumer):
    user: Any = None
    record: ConsoleSession | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    relay: asyncio.Task | None = None
    hello_timer: asyncio.Task | None = None
    closing = False
    hello_received = False

    async def connect(self) -> None:
        # AllowedHostsOriginValidator (panel/asgi.py) already refused foreign origins.
        session = self.scope.get("session")
        user = await database_sync_to_async(session_user)(session) if session is not None else AnonymousUser()
        if not user.is_authenticated:
            await self.close(code=POLICY)  # before accept: the handshake fails (HTTP 403)
            return
        self.user = user
        self.server_uuid = self.scope["url_route"]["kwargs"]["uuid"]
        await self.accept()
        self.hello_timer = asyncio.create_task(self._hello_deadline())

    async def _hello_deadline(self) -> None:
        await asyncio.sleep(HELLO_SECONDS)
        if not self.hello_received:
            await self.end(TOO_SLOW, BAD)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        try:
            if not self.hello_received:
                self.hello_received = True
                if text_data is None:
                    raise Closed(BAD_MESSAGE, BAD)
                await self.start(text_data)
            elif self.writer is None:  # a message before the broker answered: not the protocol
                raise Closed(BAD_MESSAGE, BAD)
            elif bytes_data is not None:
                await self.keys(bytes_data)
            else:
                await self.control(text_data or "")
        except Closed as exc:
            await self.end(exc.sentence, exc.code)

    async def start(self, text: str) -> None:
        try:
            hello = protocol.parse_line(text.encode())
        except protocol.ProtocolError:
            raise Closed(BAD_MESSAGE, BAD) from None
        ticket = hello.get("ticket")
        if not isinstance(ticket, str) or not 20 <= len(ticket) <= 100:
            raise Closed(BAD_TICKET)
        cols, rows = _size(hello.get("cols"), MAX_COLS), _size(hello.get("rows"), MAX_ROWS)
        self.record = await database_sync_to_async(check_ticket)(self.user, self.server_uuid, ticket)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(settings.PANEL_CONSOLE_SOCKET), limit=protocol.MAX_PAYLOAD),
                BROKER_SECONDS,
            )
        except (TimeoutError, OSError):
            raise Closed(NO_BROKER, UNAVAILABLE) from None
        self.reader, self.writer = reader, writer
        try:
            writer.write(protocol.line({"ticket": ticket, "user": self.user.pk, "cols": cols, "rows": rows}))
            await writer.drain()
            answer = protocol.parse_line(await asyncio.wait_for(reader.readline(), BROKER_SECONDS))
        except (TimeoutError, OSError, ValueError, protocol.ProtocolError):
            # ValueError: a line longer than the reader's limit.
            raise Closed(NO_BROKER, UNAVAILABLE) from None
        if answer.get("ok") is not True:
            error = answer.get("error")
            raise Closed(error[:200] if isinstance(error, str) and error else BAD_TICKET)
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        self.relay = asyncio.create_task(self._from_broker())

    async def keys(self, data: bytes) -> None:
        if len(data) > MAX_INPUT:
            raise Closed(BAD_MESSAGE, BAD)
        assert self.writer is not None
        step = protocol.MAX_PAYLOAD
        try:
            for start in range(0, len(data), step):
                self.writer.write(protocol.encode(protocol.DATA, data[start:start + step]))
            await self.writer.drain()
        except OSError:
            raise Closed(BROKER_LOST, UNAVAILABLE) from None

    async def control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            raise Closed(BAD_MESSAGE, BAD) from None
        if not isinstance(message, dict) or not isinstance(message.get("resize"), list) or len(message["resize"]) != 2:
            raise Closed(BAD_MESSAGE, BAD)
        cols, rows = _size(message["resize"][0], MAX_COLS), _size(message["resize"][1], MAX_ROWS)
        assert self.writer is not None
        try:
            self.writer.write(protocol.encode_json(protocol.RESIZE, {"cols": cols, "rows": rows}))
            await self.writer.drain()
        except OSError:
            raise Closed(BROKER_LOST, UNAVAILABLE) from None

    async def _from_broker(self) -> None:
        assert self.reader is not None
        frames = protocol.FrameReader()
        sentence, code = BROKER_LOST, UNAVAILABLE
        try:
            exited = False
            while not exited:
                data = await self.reader.read(protocol.MAX_PAYLOAD)
                if not data:
                    break
                for kind, payload in frames.feed(data):
                    if kind == protocol.DATA:
                        await self.send(bytes_data=payload)
                    elif kind == protocol.EXIT:
                        sentence, code, exited = _exit_reason(payload), 1000, True
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker's stream broke, or the browser went away meanwhile
            log.warning("console %s: relay ended: %r", self.record and self.record.uuid, exc)
        await self.end(sentence, code)

    async def end(self, sentence: str, code: int) -> None:
        """Tell the browser why (one text message), close the WebSocket and the broker's socket."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(Exception):  # the browser may be gone already
            await self.send(text_data=json.dumps({"closed": sentence}))
            await self.close(code=code)
        await self._release(sentence)

    async def _release(self, sentence: str) -> None:
        current = asyncio.current_task()
        for task in (self.hello_timer, self.relay):
            if task is not None and task is not current:
                task.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        if self.record is not None:
            await database_sync_to_async(end_unrecorded)(self.record.pk, sentence)

    async def disconnect(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            await self._release("The browser closed the console.")


def _exit_reason(payload: bytes) -> str:
    try:
        reason = json.loads(payload).get("reason")
    except (ValueError, AttributeError):
        reason = None
    return reason[:200] if isinstance(reason, str) and reason else ENDED
