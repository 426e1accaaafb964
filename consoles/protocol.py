"""What the web process and the console broker say to each other over the broker's Unix socket
(settings.PANEL_CONSOLE_SOCKET).

1. The web process sends a hello: one line of JSON, at most HELLO_LIMIT bytes with its newline:
   {"ticket": str, "user": int (the signed-in user's pk), "cols": int, "rows": int}
2. The broker answers one line of JSON: {"ok": true} once the terminal is attached, or
   {"ok": false, "error": "a plain sentence for the user"} and closes.
3. Then frames both ways, each KIND (one byte) + length (4 bytes, big-endian) + payload:
   web -> broker: DATA (keystrokes), RESIZE (JSON {"cols": int, "rows": int});
   broker -> web: DATA (what the terminal shows, already filtered), EXIT (JSON {"reason": str},
   a plain sentence), after which the broker closes. Either side closing ends the session.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HELLO_LIMIT = 4096
MAX_PAYLOAD = 65536
DATA = b"d"
RESIZE = b"r"
EXIT = b"x"
KINDS = frozenset({DATA, RESIZE, EXIT})
_HEADER = struct.Struct(">cI")


class ProtocolError(ValueError):
    pass


def encode(kind: bytes, payload: bytes) -> bytes:
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    return _HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, value: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(value).encode())


def line(value: dict[str, Any]) -> bytes:
    data = json.dumps(value).encode() + b"\n"
    if len(data) > HELLO_LIMIT:
        raise ProtocolError("hello too long")
    return data


def parse_line(data: bytes) -> dict[str, Any]:
    """A hello or an answer (without or with its newline); ProtocolError if it is not a JSON object."""
    if len(data) > HELLO_LIMIT:
        raise ProtocolError("hello too long")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("not JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolError("not a JSON object")
    return value


class FrameReader:
    """Splits a byte stream into (kind, payload) frames; keeps an incomplete tail for later."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer)
            if kind not in KINDS:
                raise ProtocolError(f"unknown frame kind {kind!r}")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {length} bytes (at most {MAX_PAYLOAD})")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[_HEADER.size:end])))
            del self._buffer[:end]
        return frames
