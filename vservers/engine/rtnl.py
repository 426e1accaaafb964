"""The few rtnetlink requests on the start path, as plain messages over a plain socket.

pyroute2 (network.py) does everything else. It is written by hand here because pyroute2 0.9
runs an asyncio event loop for every request and parses every reply into its generic
message objects: about 1.5 ms per request on this machine, and wiring one VPS takes some
fifteen requests, which was a third of the whole start. These messages are packed with
`struct` in a few microseconds and answered by the kernel in a few more.

Only what start, stop and status need is here: create a veth pair with its peer born in
the VPS's namespace, set links up, add addresses and default routes, look up a link and
list addresses. Every request asks for an acknowledgement; a negative one raises
NetlinkFailure with the kernel's errno.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12  # strict checking lets a dump filter (Linux 4.20)
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE = 16, 18, 20, 22, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RT_SCOPE_LINK = 253
IFF_UP = 0x1
NLA_F_NESTED = 0x8000

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")


class NetlinkFailure(OSError):
    """The kernel refused a request; errno is its error code."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            return
        yield kind & ~NLA_F_NESTED, data[offset + _ATTR.size : offset + length]
        offset += _align(length)


class Socket:
    """A NETLINK_ROUTE socket (pass one opened inside another network namespace to work
    there); usable as a context manager, closed on exit."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sequence = 0

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *_exc) -> None:
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, body) of every reply message up to the
        acknowledgement or the end of a dump. A negative acknowledgement raises."""
        self.sequence += 1
        header = _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.sequence, 0)
        self.sock.send(header + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, sequence, _port = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size : offset + length]
                offset += _align(length)
                if sequence != self.sequence:
                    continue  # a late answer to an earlier request
                if msg_type == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(payload)
                    if code:
                        raise NetlinkFailure(-code, os.strerror(-code))
                    return replies
                if msg_type == NLMSG_DONE:
                    return replies
                replies.append((msg_type, payload))  # a dump ends with DONE, a get with the ack

    # --- links ---------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name)))
        except NetlinkFailure as exc:
            if exc.errno == 19:  # ENODEV
                return None
            raise
        return _IFINFO.unpack_from(replies[0][1])[2] if replies else None

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def add_veth(self, name: str, master: int, peer_name: str, peer_netns_fd: int, mtu: int | None = None,
                 peer_mac: str | None = None) -> None:
        """Create veth NAME (up, a port of MASTER) with its peer PEER_NAME born in the network
        namespace PEER_NETNS_FD (down: veth refuses to open a peer before the pair is linked)."""
        peer_attrs = [attr(IFLA_IFNAME, _name(peer_name)), attr(IFLA_NET_NS_FD, _u32(peer_netns_fd))]
        own_attrs = [attr(IFLA_IFNAME, _name(name)), attr(IFLA_MASTER, _u32(master))]
        if mtu is not None:
            peer_attrs.append(attr(IFLA_MTU, _u32(mtu)))
            own_attrs.append(attr(IFLA_MTU, _u32(mtu)))
        if peer_mac is not None:
            peer_attrs.append(attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
        peer = _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(peer_attrs)
        linkinfo = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"veth"),
                          nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer)))
        body = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + b"".join(own_attrs) + linkinfo
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    # --- addresses and routes ------------------------------------------------------------

    def add_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        flags = IFA_F_NODAD if iface.version == 6 else 0  # usable at once, not "tentative"
        packed = iface.ip.packed
        body = _IFADDR.pack(family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_default_route(self, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address, index: int) -> None:
        family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        body += attr(RTA_GATEWAY, gateway.packed) + attr(RTA_OIF, _u32(index))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def addresses(self, index: int | None = None) -> list[Address]:
        """Every address (of interface INDEX if given: then the kernel dumps only that
        interface's, where a plain dump has every bridge port's IPv6 link-local address)."""
        found = []
        if index is not None:
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass  # an older kernel dumps everything; the loop below still filters
        request = _IFADDR.pack(0, 0, 0, 0, index or 0)
        for msg_type, payload in self.request(RTM_GETADDR, NLM_F_DUMP, request):
            if msg_type != RTM_NEWADDR:
                continue
            family, prefixlen, _flags, scope, if_index = _IFADDR.unpack_from(payload)
            if index is not None and if_index != index:
                continue
            values = dict(_attrs(payload[_IFADDR.size :]))
            raw = values.get(IFA_LOCAL) or values.get(IFA_ADDRESS)
            if raw is None:
                continue
            ip = ipaddress.ip_address(raw)
            found.append(Address(if_index, ipaddress.ip_interface(f"{ip}/{prefixlen}"), scope))
        return found


@dataclass(frozen=True)
class Address:
    index: int
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int
