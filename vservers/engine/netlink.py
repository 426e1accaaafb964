"""Netlink messages packed by hand: what rtnl (links, addresses, routes) and the firewall
(nf_tables set elements) share.

pyroute2 serves the rare paths (network.py); the requests of every start go through here,
because packing a message with `struct` takes microseconds where pyroute2 takes a millisecond
or more (see rtnl.py). This module knows only the framing of <linux/netlink.h>: the message
header (nlmsghdr), attributes (type-length-value, each padded to 4 bytes, nested ones
flagged), the socket with its sequence numbers, and the kernel's acknowledgements, a negative
one raised as NetlinkFailure with the kernel's errno. Each family's constants and message
bodies stay with their users. No side effects at import.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms of every start)
if TYPE_CHECKING:
    from typing import Self

# <linux/netlink.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12  # strict checking lets a dump filter (Linux 4.20)

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ATTR = struct.Struct("=HH")  # nlattr: length, type
_ERROR = struct.Struct("=i")  # nlmsgerr starts with the negated errno, 0 for an ack
RECV_SIZE = 65536


class NetlinkFailure(OSError):
    """The kernel refused a request; errno is its error code."""


def align(length: int) -> int:
    """LENGTH rounded up to netlink's 4-byte alignment (NLMSG_ALIGN, NLA_ALIGN)."""
    return (length + 3) & ~3


# --- attributes ----------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute; its length field counts the payload, not the padding after it."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + bytes(align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    """An attribute holding ATTRS, flagged as nested (some families insist on the flag)."""
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def strz(value: str) -> bytes:
    """A string attribute's payload: the kernel wants it NUL-terminated."""
    return value.encode() + b"\0"


def u32(value: int) -> bytes:
    """A 32-bit attribute payload in host byte order (NLA_U32)."""
    return struct.pack("=I", value)


def attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without the nested flag, payload) of each attribute in DATA; stops at a
    truncated one."""
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            return
        yield kind & ~NLA_F_NESTED, data[offset + _ATTR.size : offset + length]
        offset += align(length)


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One netlink message: its header's fields and its body."""

    type: int
    flags: int
    seq: int
    payload: bytes


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One message: a header (port 0: the kernel fills in ours) and BODY."""
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def messages(data: bytes) -> Iterator[Message]:
    """Every message in DATA, one datagram from the kernel (it may hold several)."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _port = HEADER.unpack_from(data, offset)
        yield Message(kind, flags, seq, data[offset + HEADER.size : offset + length])
        offset += max(align(length), HEADER.size)  # a zero length must not loop forever


def error_code(msg: Message) -> int:
    """The errno of an NLMSG_ERROR message: 0 for an acknowledgement."""
    (code,) = _ERROR.unpack_from(msg.payload)
    return -code


# --- the socket ----------------------------------------------------------------------------


class Socket:
    """A netlink socket of PROTOCOL (or SOCK, one opened elsewhere, e.g. inside another
    network namespace), bound to a port the kernel picks and to the multicast GROUPS (a
    bitmask; their notifications come with sequence number 0, which request() skips); closed on
    leaving a `with`."""

    def __init__(self, protocol: int, sock: socket.socket | None = None, *, timeout: float | None = None,
                 groups: int = 0) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.bind((0, groups))
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sequence = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def recv_queued(self) -> bytes | None:
        """A datagram already queued, or None without waiting."""
        try:
            return self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def request(self, kind: int, flags: int, body: bytes, limit: int | None = None) -> list[Message]:
        """Send one request with the next sequence number; return every reply message up to
        the acknowledgement or the end of a dump, or the first LIMIT of them (the rest of the
        dump is left unread: answers to an old sequence number are skipped by later requests).
        A negative acknowledgement raises NetlinkFailure."""
        self.sequence += 1
        self.send(message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.sequence, body))
        replies: list[Message] = []
        while True:
            for msg in messages(self.recv()):
                if msg.seq != self.sequence:
                    continue  # a late answer to an earlier request
                if msg.type == NLMSG_ERROR:
                    code = error_code(msg)
                    if code:
                        raise NetlinkFailure(code, os.strerror(code))
                    return replies
                if msg.type == NLMSG_DONE:
                    return replies
                replies.append(msg)  # a dump ends with DONE, a get with the ack
                if limit is not None and len(replies) >= limit:
                    return replies

    def acks(self, sequences: range) -> dict[int, int]:
        """The errno (0: done) the kernel answered each request numbered in SEQUENCES with,
        in the order the answers came; a request missing here was not answered.

        For a batch sent in one send(): the kernel handles all of it within the call and
        queues every answer before it returns, so this waits for the first datagram only and
        then takes what is queued."""
        answered: dict[int, int] = {}
        data: bytes | None = self.recv()
        while data is not None:
            for msg in messages(data):
                if msg.type == NLMSG_ERROR and msg.seq in sequences:
                    answered[msg.seq] = error_code(msg)
            data = self.recv_queued() if len(answered) < len(sequences) else None
        return answered
