"""The few rtnetlink requests on the start path, as plain messages over a plain socket.

pyroute2 (network.py) does everything else. It is written by hand here because pyroute2 0.9
runs an asyncio event loop for every request and parses every reply into its generic
message objects: about 1.5 ms per request on this machine, and wiring one VPS takes some
fifteen requests, which was a third of the whole start. These messages are packed with
`struct` in a few microseconds and answered by the kernel in a few more.

Only what start, stop, status and the usage sampler need is here: make or set up the bridge,
create a veth pair with
its peer born in the VPS's namespace, lock its bridge port to the VPS's MAC, set links up, add
addresses and default routes, point the host's neighbour entries at a new VPS, look up a link
(and its kind), delete one, list addresses, and the traffic counters of every port of a
bridge in one dump. Every request asks for an acknowledgement; a negative one raises
NetlinkFailure with the kernel's errno. The framing (header, attributes, socket,
acknowledgements) is netlink.py's; here are only the route family's constants and bodies.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import netlink
from .netlink import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RECV_SIZE,
    Message,
    NetlinkFailure,
    attr,
    attrs,
    nested,
    strz,
    u32,
)

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>, <linux/neighbour.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE = 16, 17, 18, 19, 20, 22, 24
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 12, 18, 28
IFLA_BRPORT_LEARNING = 8
IFLA_STATS64 = 23
NDA_DST, NDA_LLADDR = 1, 2
NUD_STALE = 0x04
NUD_NOARP = 0x40  # what `bridge fdb add ... static` asks for (NUD_PERMANENT would mean "local")
NTF_MASTER, NTF_STICKY = 0x04, 0x40
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE, IFLA_BR_GROUP_FWD_MASK = 1, 5, 9
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RT_SCOPE_LINK = 253
IFF_UP = 0x1
RTMGRP_LINK = 0x1  # the multicast group of link notifications (RTM_NEWLINK, RTM_DELLINK)

_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
# The head of struct rtnl_link_stats64 (all __u64): rx_packets, tx_packets, rx_bytes, tx_bytes.
_STATS64_HEAD = struct.Struct("=QQQQ")


class Socket(netlink.Socket):
    """A NETLINK_ROUTE socket (pass one opened inside another network namespace to work
    there); usable as a context manager, closed on exit. With WATCH_LINKS it also hears of
    every link made or deleted (see await_deletion)."""

    def __init__(self, sock: socket.socket | None = None, *, watch_links: bool = False) -> None:
        super().__init__(socket.NETLINK_ROUTE, sock, groups=RTMGRP_LINK if watch_links else 0)

    # --- links ---------------------------------------------------------------------------

    def _get_link(self, name: str) -> Message | None:
        """The kernel's answer about link NAME (its first message), None if there is none."""
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, strz(name)))
        except NetlinkFailure as exc:
            if exc.errno == 19:  # ENODEV
                return None
            raise
        return replies[0] if replies else None

    def link_index(self, name: str) -> int | None:
        reply = self._get_link(name)
        return _IFINFO.unpack_from(reply.payload)[2] if reply else None

    def link_stats(self, name: str) -> LinkStats | None:
        """Link NAME's traffic counters, None if there is no such link."""
        reply = self._get_link(name)
        stats = dict(attrs(reply.payload[_IFINFO.size :])).get(IFLA_STATS64) if reply else None
        return None if stats is None else _link_stats(stats)

    def link_kind(self, name: str) -> tuple[int, str | None] | None:
        """Link NAME's index and kind ("veth", "bridge", ...; None for a plain device), or None
        if there is no such link."""
        reply = self._get_link(name)
        if reply is None:
            return None
        info = dict(attrs(reply.payload[_IFINFO.size :])).get(IFLA_LINKINFO)
        kind = dict(attrs(info)).get(IFLA_INFO_KIND) if info is not None else None
        return _IFINFO.unpack_from(reply.payload)[2], kind.rstrip(b"\0").decode() if kind else None

    def delete_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    def await_deletion(self, index: int, gone: Callable[[], bool], timeout: float) -> bool:
        """Whether link INDEX is deleted by someone else (the kernel) within TIMEOUT seconds.
        The socket must watch links since before INDEX was looked up: a deletion since then is
        among its notifications, unless a request meanwhile read it and skipped it (sequence
        number 0); GONE(), a look at the link's sysfs entry, which the kernel removes before it
        notifies, covers that case and notifications lost to a full socket buffer."""
        deadline = time.monotonic() + timeout
        try:
            while not gone():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(RECV_SIZE)
                except TimeoutError:
                    return gone()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:  # ENOBUFS: notifications were dropped
                        raise
                    continue
                for msg in netlink.messages(data):
                    if (msg.type == RTM_DELLINK and len(msg.payload) >= _IFINFO.size
                            and _IFINFO.unpack_from(msg.payload)[2] == index):
                        return True
            return True
        finally:
            self.sock.settimeout(None)

    def port_stats(self, master: int) -> dict[str, LinkStats]:
        """The traffic counters of every link whose master is MASTER (a bridge's ports), by
        name, from one RTM_GETLINK dump that the kernel filters by master (strict checking,
        Linux 4.20): one request for all of a node's servers, not a file read per counter."""
        try:
            self.sock.setsockopt(netlink.SOL_NETLINK, netlink.NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass  # an older kernel dumps every link; the loop below still filters
        found = {}
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_MASTER, u32(master))
        for msg in self.request(RTM_GETLINK, NLM_F_DUMP, body):
            if msg.type != RTM_NEWLINK:
                continue
            values = dict(attrs(msg.payload[_IFINFO.size :]))
            name, stats, owner = values.get(IFLA_IFNAME), values.get(IFLA_STATS64), values.get(IFLA_MASTER)
            if name is None or stats is None or owner is None or struct.unpack("=I", owner)[0] != master:
                continue
            found[name.rstrip(b"\0").decode()] = _link_stats(stats)
        return found

    def put_bridge(self, name: str, mac: str, forward_delay: int, stp_state: int, group_fwd_mask: int,
                   index: int | None = None) -> None:
        """Create the bridge NAME (INDEX None: NetlinkFailure EEXIST if NAME exists), or set
        these on the bridge INDEX: its MAC, forward delay (hundredths of a second), STP state
        and the mask of reserved group frames it forwards."""
        data = nested(IFLA_INFO_DATA, attr(IFLA_BR_FORWARD_DELAY, u32(forward_delay)),
                      attr(IFLA_BR_STP_STATE, u32(stp_state)),
                      attr(IFLA_BR_GROUP_FWD_MASK, struct.pack("=H", group_fwd_mask)))
        linkinfo = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"bridge"), data)
        own = attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) + linkinfo
        if index is None:
            body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, strz(name)) + own
            self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        else:
            # The kernel sets the forward delay before the STP state, and with STP on it refuses
            # a delay under 2 s (ERANGE): the STP state goes first on its own.
            stp = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"bridge"),
                         nested(IFLA_INFO_DATA, attr(IFLA_BR_STP_STATE, u32(stp_state))))
            self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + stp)
            self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + own)

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def add_veth(self, name: str, master: int, peer_name: str, peer_netns_fd: int, mtu: int | None = None,
                 peer_mac: str | None = None) -> None:
        """Create veth NAME (up, a port of MASTER) with its peer PEER_NAME born in the network
        namespace PEER_NETNS_FD (down: veth refuses to open a peer before the pair is linked)."""
        peer_attrs = [attr(IFLA_IFNAME, strz(peer_name)), attr(IFLA_NET_NS_FD, u32(peer_netns_fd))]
        own_attrs = [attr(IFLA_IFNAME, strz(name)), attr(IFLA_MASTER, u32(master))]
        if mtu is not None:
            peer_attrs.append(attr(IFLA_MTU, u32(mtu)))
            own_attrs.append(attr(IFLA_MTU, u32(mtu)))
        if peer_mac is not None:
            peer_attrs.append(attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
        peer = _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(peer_attrs)
        linkinfo = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"veth"),
                          nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer)))
        body = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + b"".join(own_attrs) + linkinfo
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    # --- bridge ports --------------------------------------------------------------------

    def set_port_learning(self, index: int, learning: bool) -> None:
        """Turn MAC learning on the bridge port INDEX on or off."""
        protinfo = nested(IFLA_PROTINFO, attr(IFLA_BRPORT_LEARNING, bytes([int(learning)])))
        self.request(RTM_SETLINK, 0, _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0) + protinfo)

    def add_static_fdb(self, index: int, mac: str) -> None:
        """Bind MAC to the bridge port INDEX in its bridge's forwarding table: static (never
        aged out) and sticky (no frame seen on another port moves it). Made again, it moves
        an entry of that MAC that is elsewhere to INDEX."""
        body = _NDMSG.pack(socket.AF_BRIDGE, index, NUD_NOARP, NTF_MASTER | NTF_STICKY, 0)
        body += attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
        self.request(RTM_NEWNEIGH, NLM_F_CREATE, body)

    def rebind_neighbour(self, index: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                         mac: str | None) -> bool:
        """If this namespace's neighbour table has an entry for ADDRESS on link INDEX, point it
        at MAC as a stale entry (what a gratuitous ARP or an unsolicited neighbour
        advertisement does: the next packet confirms it), or delete it when MAC is None.
        Returns whether there was one; no entry is made."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        body = _NDMSG.pack(family, index, NUD_STALE, 0, 0) + attr(NDA_DST, address.packed)
        try:
            if mac is None:
                self.request(RTM_DELNEIGH, 0, body)
            else:
                # NLM_F_REPLACE without NLM_F_CREATE: an entry that is there gets the new MAC, a
                # missing one is ENOENT.
                body += attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
                self.request(RTM_NEWNEIGH, NLM_F_REPLACE, body)
        except NetlinkFailure as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

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
        body += attr(RTA_GATEWAY, gateway.packed) + attr(RTA_OIF, u32(index))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def addresses(self, index: int | None = None, limit: int | None = None) -> list[Address]:
        """Every address (of interface INDEX if given: then the kernel dumps only that
        interface's, where a plain dump has every bridge port's IPv6 link-local address), or
        those of the dump's first LIMIT messages."""
        found = []
        if index is not None:
            try:
                self.sock.setsockopt(netlink.SOL_NETLINK, netlink.NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass  # an older kernel dumps everything; the loop below still filters
        request = _IFADDR.pack(0, 0, 0, 0, index or 0)
        for msg in self.request(RTM_GETADDR, NLM_F_DUMP, request, limit):
            if msg.type != RTM_NEWADDR:
                continue
            _family, prefixlen, _flags, scope, if_index = _IFADDR.unpack_from(msg.payload)
            if index is not None and if_index != index:
                continue
            values = dict(attrs(msg.payload[_IFADDR.size :]))
            raw = values.get(IFA_LOCAL) or values.get(IFA_ADDRESS)
            if raw is None:
                continue
            ip = ipaddress.ip_address(raw)
            found.append(Address(if_index, ipaddress.ip_interface(f"{ip}/{prefixlen}"), scope))
        return found


@dataclass(frozen=True)
class Address:
    """An address of an interface, as the kernel lists it."""

    index: int
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    scope: int


@dataclass(frozen=True)
class LinkStats:
    """A link's counters as the kernel keeps them for it (rx: what it received)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


def _link_stats(stats64: bytes) -> LinkStats:
    rx_packets, tx_packets, rx_bytes, tx_bytes = _STATS64_HEAD.unpack_from(stats64)
    return LinkStats(rx_bytes, tx_bytes, rx_packets, tx_packets)
