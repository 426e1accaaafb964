"""The netlink framing shared by rtnl and the firewall, on literal bytes: what the kernel
would read from us and what we read from it. The socket is a stand-in that replays the
kernel's datagrams, except in the last tests, which ask the real kernel."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from vservers.engine import netlink, rtnl
from vservers.engine.netlink import NetlinkFailure

# Netlink is in host byte order; the literals below are this machine's (x86, little-endian).
pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the literal bytes are little-endian")

# RTM_NEWLINK (16) with REQUEST|ACK (5), sequence 1, port 0, then an empty 16-byte ifinfomsg.
NEWLINK_REQUEST = b"\x20\x00\x00\x00" b"\x10\x00\x05\x00" b"\x01\x00\x00\x00" b"\x00\x00\x00\x00" + bytes(16)


def header(length: int, kind: int, flags: int, seq: int, port: int = 0) -> bytes:
    return netlink.HEADER.pack(length, kind, flags, seq, port)


def error(seq: int, code: int) -> bytes:
    """An NLMSG_ERROR answering request SEQ with CODE (0 is an acknowledgement): nlmsgerr is
    the negated errno and a copy of the request's header."""
    return header(36, netlink.NLMSG_ERROR, 0, seq) + (-code).to_bytes(4, "little", signed=True) + NEWLINK_REQUEST[:16]


class FakeKernel:
    """Stands in for a netlink socket: records what is sent, replays DATAGRAMS in order."""

    def __init__(self, *datagrams: bytes) -> None:
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []
        self.bound = None
        self.closed = False

    def bind(self, address: tuple[int, int]) -> None:
        self.bound = address

    def settimeout(self, _timeout: float) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, _size: int, flags: int = 0) -> bytes:
        if not self.datagrams:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError
            raise AssertionError("a blocking recv with nothing left to answer")
        return self.datagrams.pop(0)

    def close(self) -> None:
        self.closed = True


# --- attributes ---------------------------------------------------------------------------


def test_an_attribute_is_padded_to_four_bytes_but_its_length_counts_only_the_payload() -> None:
    assert netlink.attr(3, netlink.strz("eth0")) == b"\x09\x00\x03\x00" b"eth0\x00" b"\x00\x00\x00"


def test_an_aligned_attribute_gets_no_padding() -> None:
    assert netlink.attr(4, netlink.u32(1500)) == b"\x08\x00\x04\x00" b"\xdc\x05\x00\x00"
    assert netlink.attr(7, b"") == b"\x04\x00\x07\x00"


def test_a_nested_attribute_is_flagged_and_counts_its_padded_children() -> None:
    inner = netlink.attr(1, b"ab")
    assert inner == b"\x06\x00\x01\x00ab\x00\x00"
    assert netlink.nested(18, inner, netlink.attr(2, b"veth")) == (
        b"\x14\x00\x12\x80" + inner + b"\x08\x00\x02\x00veth"
    )


def test_attributes_parse_back_without_the_nested_flag_or_the_padding() -> None:
    data = b"\x09\x00\x03\x00eth0\x00\x00\x00\x00" b"\x10\x00\x12\x80" b"\x06\x00\x01\x00ab\x00\x00" b"\x04\x00\x02\x00"
    parsed = list(netlink.attrs(data))
    assert parsed == [(3, b"eth0\x00"), (18, b"\x06\x00\x01\x00ab\x00\x00\x04\x00\x02\x00")]
    assert list(netlink.attrs(parsed[1][1])) == [(1, b"ab"), (2, b"")]


def test_parsing_stops_at_a_truncated_attribute() -> None:
    assert list(netlink.attrs(b"\x08\x00\x01\x00abcd" b"\x10\x00\x02\x00ab")) == [(1, b"abcd")]
    assert list(netlink.attrs(b"\x02\x00\x01\x00")) == []  # a length shorter than the header


# --- messages -----------------------------------------------------------------------------


def test_a_message_is_a_header_with_the_whole_length_then_the_body() -> None:
    assert netlink.message(16, 5, 1, bytes(16)) == NEWLINK_REQUEST


def test_one_datagram_holds_several_messages_each_aligned() -> None:
    first = header(21, 20, netlink.NLM_F_MULTI, 7) + b"abcde" + b"\x00\x00\x00"
    second = header(16, netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 7)
    assert list(netlink.messages(first + second)) == [
        netlink.Message(20, netlink.NLM_F_MULTI, 7, b"abcde"),
        netlink.Message(netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 7, b""),
    ]


def test_a_zero_length_message_does_not_stall_the_parser() -> None:
    assert len(list(netlink.messages(header(0, 1, 0, 1) + header(16, 3, 0, 1)))) == 2


def test_an_error_message_carries_the_negated_errno() -> None:
    (msg,) = netlink.messages(error(3, errno.EEXIST))
    assert msg.payload[:4] == b"\xef\xff\xff\xff"  # -17
    assert netlink.error_code(msg) == errno.EEXIST
    (ack,) = netlink.messages(error(3, 0))
    assert netlink.error_code(ack) == 0


# --- the socket ---------------------------------------------------------------------------


def test_a_request_asks_for_an_ack_and_returns_at_it() -> None:
    kernel = FakeKernel(error(1, 0))
    with netlink.Socket(0, kernel) as sock:
        assert sock.request(16, 0, bytes(16)) == []
    assert kernel.sent == [NEWLINK_REQUEST]
    assert kernel.bound == (0, 0) and kernel.closed


def test_a_negative_ack_raises_with_the_kernels_errno() -> None:
    sock = netlink.Socket(0, FakeKernel(error(1, errno.EEXIST)))
    with pytest.raises(NetlinkFailure) as raised:
        sock.request(16, netlink.NLM_F_CREATE, bytes(16))
    assert raised.value.errno == errno.EEXIST
    assert isinstance(raised.value, OSError)


def test_a_multipart_reply_is_gathered_across_datagrams_until_done() -> None:
    part = header(20, 20, netlink.NLM_F_MULTI, 2)
    kernel = FakeKernel(
        error(1, errno.ENODEV),  # a late answer to an earlier request: not ours
        part + b"one!" + part + b"two!",
        part + b"3rd!" + header(20, netlink.NLMSG_DONE, netlink.NLM_F_MULTI, 2) + bytes(4),
    )
    sock = netlink.Socket(0, kernel)
    sock.sequence = 1
    replies = sock.request(22, netlink.NLM_F_DUMP, bytes(8))
    assert [(m.type, m.payload) for m in replies] == [(20, b"one!"), (20, b"two!"), (20, b"3rd!")]
    assert kernel.sent[0][4:12] == b"\x16\x00\x05\x03" b"\x02\x00\x00\x00"  # type 22, REQUEST|ACK|DUMP, seq 2


def test_sequence_numbers_count_up_per_request() -> None:
    kernel = FakeKernel(error(1, 0), error(2, 0))
    sock = netlink.Socket(0, kernel)
    sock.request(16, 0, b"")
    sock.request(16, 0, b"")
    assert [netlink.HEADER.unpack_from(sent)[3] for sent in kernel.sent] == [1, 2]


def test_a_batchs_acks_are_taken_from_what_is_queued() -> None:
    kernel = FakeKernel(error(11, 0) + error(12, errno.ENOENT), error(10, 0) + error(13, 0))
    sock = netlink.Socket(0, kernel)
    assert sock.acks(range(11, 14)) == {11: 0, 12: errno.ENOENT, 13: 0}


def test_a_batch_with_an_unanswered_request_stops_when_nothing_is_queued() -> None:
    sock = netlink.Socket(0, FakeKernel(error(11, 0)))
    assert sock.acks(range(11, 13)) == {11: 0}


# --- the real kernel ----------------------------------------------------------------------


def test_the_kernel_answers_a_link_lookup() -> None:
    with rtnl.Socket() as sock:
        assert sock.link_index("lo") == socket.if_nametoindex("lo")
        assert sock.link_index("no-such-link") is None


def test_the_kernel_refuses_with_its_errno() -> None:
    # RTM_GETLINK (18): an empty ifinfomsg, then IFLA_IFNAME (3) naming no interface.
    body = bytes(16) + netlink.attr(3, netlink.strz("no-such-link"))
    with netlink.Socket(socket.NETLINK_ROUTE) as sock, pytest.raises(NetlinkFailure) as raised:
        sock.request(18, 0, body)
    assert raised.value.errno == errno.ENODEV
