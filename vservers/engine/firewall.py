"""Network defences of an installation's bridge, in nftables: no spoofing, no sniffing, no
reaching the host.

Two tables of our own per installation, both named ``vservers-<bridge>`` (one bridge per
installation; the tables are made with the first start on it and removed with it):

``bridge vservers-<bridge>``, on frames from and to the ports whose names carry the
installation's veth prefix (see ``STATIC_BRIDGE`` below for the rules themselves):
  * from a VPS, first: nothing addressed to an IEEE reserved group (01:80:c2:00:00:00-0f),
    at the prerouting and the input hook (see ``RESERVED_GROUPS``).
  * from a VPS (``from_guest``): only its own MAC as Ethernet source; ARP only with its own
    sender MAC and IPv4 address; IPv4 only from its addresses; IPv6 only from its addresses
    and its EUI-64 link-local address; neighbour advertisements only for those addresses,
    and a neighbour message's link-layer option only with its own MAC. Then no DHCP or
    DHCPv6 server replies, router advertisements, redirects or router renumbering, and
    neighbour messages only plain (no extension headers, at most that one option). The
    rest (other EtherTypes, VLAN tags, the unspecified source ::) is dropped and counted,
    per VPS in the dynamic set ``dropped``.
  * to a VPS (``to_guest``): a unicast frame must be addressed to the VPS's own MAC. What
    the bridge floods while its FDB has no entry for a destination is dropped at every
    port it is not addressed to, so no VPS sees another's unicast traffic, however the FDB
    changes.
  * A port of ours that has no entries yet (about to be wired) gets nothing through but
    broadcast and multicast addressed to it.
  * Unicast bridged from port to port skips the host's connection tracking (``notrack``),
    before br_netfilter would hand it to the host's ip/ip6 hooks: what a VPS sends to
    anything but the bridge itself (whose MAC is fixed: ``bridge_mac``), and whatever is
    addressed to a VPS's MAC (the set ``guest_dst``). No rule of ours looks at its state, and
    tracking it cost every VPS-to-VPS packet a conntrack lookup and every connection an entry
    in the host's table, which a VPS could fill for everyone (see STATIC_BRIDGE). What is
    addressed to the host (the gateway: replies to the host's own connections, routed
    traffic) and broadcast and multicast stay tracked. Bridge-family hooks see the frames of
    every bridge of the host, so both rules name only what is this installation's own: its
    ports, its VPSs' MACs.

``inet vservers-<bridge>``, on traffic for the host itself arriving over the bridge (the
gateway address and any other address of the host): replies to the host's own
connections, ICMP echo to the gateway and neighbour discovery pass, and so do the ports the
operator lists in ``VSERVER_HOST_ALLOW`` (``tcp/53,udp/53``; default none) at the gateway
addresses. TCP is answered with a reset, UDP with port-unreachable, the rest dropped; all
counted.

The rules are static, made once per bridge (libnftables, in-process through ctypes, by the
first start after the bridge appears); a VPS is a handful of elements in the sets they look
up (its port name paired with its MAC and each of its addresses), added by each start in one
nf_tables batch over a plain netlink socket: a fraction of a millisecond, the same with one
VPS or thousands. The VPS's elements stay while it is stopped and go when it is deleted.
Fingerprints keep this honest: the static part carries one of the settings it was made from,
each VPS one of its elements, and re-adding an element that is there with another value fails
the batch, which sends the start to the slow path that rebuilds what is stale.

A third table, ``inet vservers``, is put inside each VPS's own network namespace when it starts
(``GUEST_GUARD``): it bounds the next hops, and so the shared neighbour-table entries, the VPS
can make. It goes with the namespace.

Every value that goes into a command is validated first (interface names, addresses, MACs,
ports); the static rules are nft syntax, the rare clean-ups libnftables JSON, the per-start
elements binary netlink attributes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from . import netlink
from .digest import sha256
from .errors import EngineError, InvalidInput
from .netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, attr, nested, strz
from .validate import interface_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms of every start)
if TYPE_CHECKING:
    from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Part of the static fingerprint: bump it when the rules change in a way their text would not
# show (their text is part of it too).
RULESET_VERSION = 4
TABLE_PREFIX = "vservers-"
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}")
_ALLOW_ITEM = re.compile(r"(tcp|udp)/(\d{1,5})")
_NFT_CTX_OUTPUT_JSON = 1 << 4  # libnftables.h
# The per-VPS sets, each keyed by the port's name first.
GUEST_SETS = ("guest_mac", "guest_ip4", "guest_ip6", "guest_na", "guest_ndmac")


# --- names and values --------------------------------------------------------------------


def validate_mac(value: object) -> str:
    """Return VALUE if it is a unicast MAC written as six lowercase hex pairs, else InvalidInput."""
    if not isinstance(value, str) or not _MAC.fullmatch(value) or int(value[:2], 16) & 1:
        raise InvalidInput(f"bad MAC address {value!r}: six lowercase hex pairs, not multicast")
    return value


def table_name(bridge: str) -> str:
    """The name of both tables of the installation whose bridge is BRIDGE."""
    return TABLE_PREFIX + interface_name(bridge)


def bridge_mac(bridge: str) -> str:
    """The fixed, locally administered MAC network.ensure_bridge gives BRIDGE (and so the
    gateway's MAC), derived from its name.

    A bridge without an address set by hand takes the lowest MAC among its ports, so the
    gateway's MAC would change whenever that VPS leaves, every other VPS would talk to a stale
    neighbour entry until it is re-probed, and the bridge's notrack rule would no longer know
    the host's frames. Derived from the name, a bridge re-created after a reboot keeps it.
    """
    digest = sha256(b"vservers-bridge:" + interface_name(bridge).encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{b:02x}" for b in octets)


def guest_mac(host_if: str) -> str:
    """The fixed MAC of the VPS whose host-side interface is HOST_IF.

    Locally administered and unicast, derived from the interface name (itself unique per
    installation and server): known without asking the guest, the same across restarts.
    """
    digest = sha256(b"vservers-guest:" + interface_name(host_if).encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{b:02x}" for b in octets)


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address the kernel gives an interface with MAC."""
    octets = bytes.fromhex(validate_mac(mac).replace(":", ""))
    eui = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:6]])
    return ipaddress.IPv6Address(bytes.fromhex("fe80000000000000") + eui)


def parse_host_allow(text: str) -> tuple[tuple[str, int], ...]:
    """Parse VSERVER_HOST_ALLOW: comma-separated PROTO/PORT items, PROTO tcp or udp.

    ``"tcp/53,udp/53"`` -> ``(("tcp", 53), ("udp", 53))``; empty means none.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"bad VSERVER_HOST_ALLOW {text!r}")
    items: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        match = _ALLOW_ITEM.fullmatch(item)
        if match is None or not 1 <= int(match[2]) <= 65535:
            raise InvalidInput(
                f"bad VSERVER_HOST_ALLOW item {raw.strip()!r}: write PROTO/PORT, PROTO tcp or udp, PORT 1-65535"
            )
        entry = (match[1], int(match[2]))
        if entry not in items:
            items.append(entry)
    return tuple(items)


# --- libnftables -------------------------------------------------------------------------


class NftError(EngineError):
    """libnftables refused a command; the message is its own."""


class _Nft:
    """One libnftables context per process, used under a lock (it is not thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: Any = None
        self._ctx: int | None = None
        self._pid = 0

    @staticmethod
    def _load() -> Any:
        import ctypes  # only when the firewall is touched: parse_host_allow is used without it

        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise EngineError(f"libnftables is missing ({exc}); install it: apt-get install libnftables1") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib

    def _context(self) -> int:
        # A context holds a netlink socket: a forked child must not share its parent's.
        if self._ctx is None or self._pid != os.getpid():
            if self._lib is None:
                self._lib = self._load()
            ctx = self._lib.nft_ctx_new(0)
            if not ctx:
                raise EngineError("libnftables: could not create a context")
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._ctx, self._pid = ctx, os.getpid()
        return self._ctx

    def _run(self, text: bytes, json_mode: bool) -> bytes:
        with self._lock:
            ctx = self._context()
            # libnftables 1.0.6 reads JSON input only while JSON output is on.
            self._lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON if json_mode else 0)
            rc = self._lib.nft_run_cmd_from_buffer(ctx, text)
            output = self._lib.nft_ctx_get_output_buffer(ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(ctx) or b""
        if rc != 0:
            message = " ".join(error.decode(errors="replace").split()) or f"status {rc}"
            raise NftError(f"nftables: {message}")
        return output

    def json(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Run COMMANDS (libnftables JSON) as one transaction; the parsed output, if any."""
        output = self._run(json.dumps({"nftables": commands}).encode(), json_mode=True)
        return json.loads(output) if output.strip() else {}

    def script(self, text: str) -> None:
        """Run TEXT (nft syntax, every value in it validated) as one transaction."""
        self._run(text.encode(), json_mode=False)

    def text(self, command: str) -> str:
        """Run COMMAND (nft syntax, a fixed one) and return its text output."""
        return self._run(command.encode(), json_mode=False).decode(errors="replace")


_nft = _Nft()


# --- the static part ---------------------------------------------------------------------

# One jump per direction for the ports of ours; everything else on the bridge is not our
# business. Every drop of what a VPS sent counts in its rule and, per port, in @dropped.
# First in prerouting: unicast from a VPS not addressed to the bridge (the host), and unicast
# to a VPS from any port, is bridged from port to port and gets no conntrack entry. Only
# this installation's ports and MACs: a bridge table's hooks see every bridge's frames, and
# "not to this bridge's MAC" alone would untrack the host's frames on another installation's
# bridge (its own connections' replies would then meet `ct state` untracked and be refused).
# With br_netfilter on (built in, and
# bridge-nf-call-iptables=1 by default) the host's ip/ip6 hooks see bridged frames too, at the
# bridge's prerouting priority 0, after this chain (-200); and conntrack is on in the host's
# namespace as soon as a rule anywhere there (ours in the inet table among them) uses it. So
# every connection between two VPSs cost an entry in the host's one table (nf_conntrack_max,
# shared: when it is full, new connections are dropped, the host's own too) and every packet a
# lookup and the TCP state machine: bench/overhead_ab.py measures it. The anti-spoofing rules
# below do not use conntrack and run for every frame all the same.
STATIC_BRIDGE = """\
table bridge {table} {{
    map fingerprint {{ type ifname : mark; }}
    map guest_fp {{ type ifname : mark; }}
    set guest_mac {{ type ifname . ether_addr; }}
    set guest_ip4 {{ type ifname . ipv4_addr; }}
    set guest_ip6 {{ type ifname . ipv6_addr; }}
    set guest_na {{ typeof iifname . @th,64,128; }}
    set guest_ndmac {{ typeof iifname . @th,208,48; }}
    set guest_dst {{ type ether_addr; }}
    set dropped {{ type ifname; flags dynamic; counter; size 65536; }}
    chain prerouting {{ type filter hook prerouting priority filter; policy accept; }}
    chain forward {{ type filter hook forward priority filter; policy accept; }}
    chain output {{ type filter hook output priority filter; policy accept; }}
    chain input {{ type filter hook input priority filter; policy accept; }}
    chain from_guest {{ }}
    chain guest4 {{ }}
    chain guest6 {{ }}
    chain to_guest {{ }}
    chain refuse {{ }}
}}
flush chain bridge {table} prerouting
flush chain bridge {table} forward
flush chain bridge {table} output
flush chain bridge {table} input
flush chain bridge {table} from_guest
flush chain bridge {table} guest4
flush chain bridge {table} guest6
flush chain bridge {table} to_guest
flush chain bridge {table} refuse
add rule bridge {table} refuse add @dropped {{ iifname counter }}
add rule bridge {table} refuse drop
add rule bridge {table} prerouting iifname "{prefix}*" ether daddr != {bridge_mac} @ll,0,8 & 0x1 == 0x0 notrack
add rule bridge {table} prerouting ether daddr @guest_dst notrack
add rule bridge {table} prerouting iifname "{prefix}*" jump from_guest
add rule bridge {table} forward oifname "{prefix}*" jump to_guest
add rule bridge {table} input iifname "{prefix}*" ether daddr {reserved} {drop}
add rule bridge {table} from_guest ether daddr {reserved} {drop}
add rule bridge {table} output oifname "{prefix}*" jump to_guest
add rule bridge {table} to_guest @ll,0,8 & 0x1 == 0x0 oifname . ether daddr != @guest_mac counter drop
add rule bridge {table} from_guest iifname . ether saddr != @guest_mac {drop}
add rule bridge {table} from_guest arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
iifname . arp saddr ether @guest_mac iifname . arp saddr ip @guest_ip4 accept
add rule bridge {table} from_guest iifname . ip saddr @guest_ip4 goto guest4
add rule bridge {table} from_guest icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @guest_na {drop}
add rule bridge {table} from_guest icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} ip6 length 32 \
iifname . @th,208,48 != @guest_ndmac {drop}
add rule bridge {table} from_guest iifname . ip6 saddr @guest_ip6 goto guest6
add rule bridge {table} from_guest {drop}
add rule bridge {table} guest4 udp sport 67 {drop}
add rule bridge {table} guest4 icmp type redirect {drop}
add rule bridge {table} guest4 accept
add rule bridge {table} guest6 icmpv6 type {{ nd-router-advert, nd-redirect, router-renumbering }} {drop}
add rule bridge {table} guest6 udp sport 547 {drop}
add rule bridge {table} guest6 icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} \
ip6 nexthdr != ipv6-icmp {drop}
add rule bridge {table} guest6 icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} \
ip6 length != {{ 24, 32 }} {drop}
add rule bridge {table} guest6 accept
"""
# IEEE 802.1D's reserved group addresses. The bridge hands frames to these to the host's own
# stack on the port itself (01:80:c2:00:00:0e even without any bridge hook), learning their
# source first; network.ensure_bridge makes it forward 03-0f instead (group_fwd_mask), so they
# meet the prerouting hook and from_guest, 00 is forwarded as the bridge runs no STP, 01 the
# kernel drops, and 02 (slow protocols, which cannot be forwarded) meets the input hook.
RESERVED_GROUPS = "01:80:c2:00:00:00-01:80:c2:00:00:0f"
# The count per port and the drop are separate rules: a set that cannot take another element
# ends its rule early, and the drop must not depend on that.
_DROP_COUNTED = "counter goto refuse"

STATIC_INET = """\
table inet {table} {{
    map fingerprint {{ type ifname : mark; }}
    set host_allow {{ type inet_proto . inet_service; }}
    chain input {{ type filter hook input priority filter; policy accept; }}
    chain from_guests {{ }}
}}
flush chain inet {table} input
flush chain inet {table} from_guests
flush set inet {table} host_allow
add rule inet {table} input iifname "{bridge}" jump from_guests
add rule inet {table} from_guests ct state established,related accept
add rule inet {table} from_guests icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
add rule inet {table} from_guests ip daddr {gateway4} icmp type echo-request accept
add rule inet {table} from_guests ip daddr {gateway4} meta l4proto . th dport @host_allow accept
"""
STATIC_INET6 = """\
add rule inet {table} from_guests ip6 daddr {gateway6} icmpv6 type echo-request accept
add rule inet {table} from_guests ip6 daddr {gateway6} meta l4proto . th dport @host_allow accept
"""
STATIC_INET_END = """\
add rule inet {table} from_guests meta l4proto tcp counter reject with tcp reset
add rule inet {table} from_guests meta l4proto udp counter reject
add rule inet {table} from_guests counter drop
"""


@dataclass(frozen=True)
class _Installation:
    """What an installation's firewall rules are made from."""

    bridge: str
    veth_prefix: str
    gateway4: ipaddress.IPv4Address
    gateway6: ipaddress.IPv6Address | None
    host_allow: tuple[tuple[str, int], ...]

    @property
    def table(self) -> str:
        return table_name(self.bridge)


def _installation(config) -> _Installation:
    allow = tuple(getattr(config, "host_allow", ()) or ())
    for entry in allow:
        proto, port = entry
        if proto not in ("tcp", "udp") or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidInput(f"bad host_allow entry {entry!r}")
    return _Installation(
        bridge=interface_name(config.bridge),
        veth_prefix=interface_name(config.veth_prefix),
        gateway4=ipaddress.IPv4Address(config.gateway4.ip),
        gateway6=ipaddress.IPv6Address(config.gateway6.ip) if config.gateway6 is not None else None,
        host_allow=allow,
    )


@lru_cache(maxsize=8)
def _static(inst: _Installation) -> tuple[str, int]:
    """The script that builds or refreshes both tables (keeping every VPS's elements), and
    the fingerprint of what it builds."""
    values = {"table": inst.table, "prefix": inst.veth_prefix, "bridge": inst.bridge, "drop": _DROP_COUNTED,
              "bridge_mac": bridge_mac(inst.bridge),
              "reserved": RESERVED_GROUPS,
              "gateway4": inst.gateway4.compressed,
              "gateway6": inst.gateway6.compressed if inst.gateway6 else ""}
    text = STATIC_BRIDGE.format(**values) + STATIC_INET.format(**values)
    if inst.gateway6 is not None:
        text += STATIC_INET6.format(**values)
    text += STATIC_INET_END.format(**values)
    if inst.host_allow:
        allowed = ", ".join(f"{proto} . {port}" for proto, port in inst.host_allow)
        text += f"add element inet {inst.table} host_allow {{ {allowed} }}\n"
    fingerprint = _hash32(f"{RULESET_VERSION}\n{text}")
    for family in ("bridge", "inet"):
        text += f"flush map {family} {inst.table} fingerprint\n"
        text += f'add element {family} {inst.table} fingerprint {{ "static" : {fingerprint:#x} }}\n'
    return text, fingerprint


def _hash32(text: str) -> int:
    return int.from_bytes(sha256(text.encode()).digest()[:4], "big")


def ensure(config) -> None:
    """Build or refresh the installation's tables, keeping every VPS's elements. Safe to
    repeat; protect() calls it when needed, so only a change of VSERVER_HOST_ALLOW that
    should apply before the next start needs it called."""
    _nft.script(_static(_installation(config))[0])


# --- per VPS: set elements over a plain netfilter netlink socket --------------------------
#
# Every start adds a handful of set elements. libnftables would first rebuild its cache of the
# host's whole ruleset (a few milliseconds of CPU once anything changed, as it does between
# any two starts), so these few requests are packed by hand: one batch, one system call,
# tens of microseconds. The batch is one transaction: all of it or none.

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_DATA_VALUE = 1, 1, 2, 1
NFPROTO = {"inet": 1, "bridge": 7}

# (verb "add" or "delete", family, set, key, value or None)
Op = tuple[str, str, str, bytes, "bytes | None"]


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    payload = struct.pack("=BB", family, 0) + struct.pack("!H", res_id) + body  # nfgenmsg
    return netlink.message(kind, NLM_F_REQUEST | flags, seq, payload)


def _element_message(seq: int, table: str, op: Op) -> bytes:
    verb, family, name, key, value = op
    element = nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key))
    if value is not None:
        element += nested(NFTA_SET_ELEM_DATA, attr(NFTA_DATA_VALUE, value))
    body = (attr(NFTA_SET_ELEM_LIST_TABLE, strz(table)) + attr(NFTA_SET_ELEM_LIST_SET, strz(name))
            + nested(NFTA_SET_ELEM_LIST_ELEMENTS, nested(NFTA_LIST_ELEM, element)))
    kind, flags = (NFT_MSG_NEWSETELEM, NLM_F_CREATE) if verb == "add" else (NFT_MSG_DELSETELEM, 0)
    return _message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | NLM_F_ACK, seq, NFPROTO[family], 0, body)


def _batch(table: str, ops: list[Op]) -> None:
    """Send OPS on TABLE as one nf_tables transaction; NftError with the kernel's errno if
    any of them fails (and then none is done)."""
    seq = int.from_bytes(os.urandom(3), "big") << 4
    parts = [_message(NFNL_MSG_BATCH_BEGIN, 0, seq, 0, NFNL_SUBSYS_NFTABLES, b"")]
    parts += [_element_message(seq + i, table, op) for i, op in enumerate(ops, start=1)]
    parts.append(_message(NFNL_MSG_BATCH_END, 0, seq + len(ops) + 1, 0, NFNL_SUBSYS_NFTABLES, b""))
    answers = _transact(b"".join(parts), range(seq + 1, seq + len(ops) + 1))
    failures = []
    for number, code in answers.items():
        if code:
            verb, family, name, _key, _value = ops[number - seq - 1]
            failures.append(f"{verb} element in {family} {table} {name}: {os.strerror(code)}")
    if failures or len(answers) < len(ops):
        raise NftError("nftables: " + ("; ".join(failures) or "the kernel did not answer every request"))


# One netfilter socket per process, kept open. Closing one wakes nf_tables' release hook,
# which first waits for the destruction of everything the last transactions deleted, and that
# waits for an RCU grace period: 7 ms (median; up to 19 ms) at the end of every delete, measured
# with a socket per batch. Kept open, the kernel destroys the elements in the background.
# A socket talks to the network namespace it was opened in: the key holds the opener's, and a
# call from another (a thread that joined a guest's) gets a socket of that one, as a socket
# opened per batch did.
_channel_lock = threading.Lock()
_channel: tuple[tuple[int, int], netlink.Socket] | None = None  # ((pid, netns inode), socket)


def _transact(batch: bytes, sequences: range) -> dict[int, int]:
    """Send BATCH on the process's netfilter socket; the kernel's answer to each of SEQUENCES
    (see netlink.Socket.acks). A socket that failed is closed, and the next call opens anew.
    Answers left from an earlier batch (one that timed out) carry other sequence numbers:
    they are skipped."""
    global _channel
    here = (os.getpid(), os.stat("/proc/thread-self/ns/net").st_ino)
    with _channel_lock:
        if _channel is None or _channel[0] != here:
            if _channel is not None and _channel[0][0] == here[0]:
                _channel[1].close()  # this process's, for another namespace (a forked child's is its parent's)
            _channel = (here, netlink.Socket(NETLINK_NETFILTER, timeout=5.0))
        sock = _channel[1]
        try:
            sock.send(batch)
            return sock.acks(sequences)
        except BaseException:
            _channel = None
            sock.close()
            raise


def _forget_channel() -> None:
    """In a forked child: the parent's lock may have been held by another thread, and the
    socket is the parent's (the child's copy closes on exec)."""
    global _channel, _channel_lock
    _channel, _channel_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_channel)


def _ifname_key(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


def _padded(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 4)  # each part of a concatenated key takes whole 32-bit words


def _mark(value: int) -> bytes:
    return struct.pack("=I", value)  # nftables keeps marks in host byte order


def _guest_ops(host_if: str, mac: str, addresses: list[IPInterface]) -> list[Op]:
    """The VPS's elements (see STATIC_BRIDGE for the sets), its fingerprint first."""
    port = _ifname_key(host_if)
    mac_raw = bytes.fromhex(mac.replace(":", ""))
    own4 = sorted({a.ip for a in addresses if a.version == 4})
    own6 = sorted({a.ip for a in addresses if a.version == 6} | {link_local(mac)})
    elements = [("guest_mac", port + _padded(mac_raw))]
    elements += [("guest_ip4", port + a.packed) for a in own4]
    elements += [("guest_ip6", port + a.packed) for a in own6]
    elements += [("guest_na", port + a.packed) for a in own6]  # the target field, as raw bytes
    elements += [("guest_ndmac", port + _padded(mac_raw))]
    elements += [("guest_dst", mac_raw)]  # not keyed by port: ether_addr alone, 6 bytes
    fingerprint = _hash32(repr([RULESET_VERSION, elements]))
    return [("add", "bridge", "guest_fp", port, _mark(fingerprint)),
            *(("add", "bridge", name, key, None) for name, key in elements)]


def _addresses(values: Iterable[IPInterface | str]) -> list[IPInterface]:
    found = []
    for value in values:
        try:
            found.append(ipaddress.ip_interface(value))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"bad address {value!r}: {exc}") from None
    return found


def protect(config, host_if: str, addresses: Iterable[IPInterface | str]) -> str:
    """Let the VPS behind HOST_IF send only as itself and receive only what is addressed to
    it; returns the MAC its interface must have (``guest_mac``).

    Call it before the port exists: until it has run, the port gets no unicast through.
    1. One transaction adds the static part's fingerprint and the VPS's elements with
       theirs. Adding what is there already is a no-op (every restart), adding anew is the
       first start; a fingerprint there with another value, or no table, fails it.
    2. Otherwise rebuild the static part if its fingerprint is not the current one, and
       run 1 again; if it still fails, remove the VPS's old elements and run 1 once more.
    """
    inst = _installation(config)
    host_if = interface_name(host_if)
    if not host_if.startswith(inst.veth_prefix):
        raise InvalidInput(f"{host_if} does not carry the installation's prefix {inst.veth_prefix}")
    mac = guest_mac(host_if)
    script, static_fp = _static(inst)
    static_check: list[Op] = [("add", family, "fingerprint", _ifname_key("static"), _mark(static_fp))
                              for family in ("bridge", "inet")]
    ops = static_check + _guest_ops(host_if, mac, _addresses(addresses))
    try:
        _batch(inst.table, ops)
        return mac
    except NftError:
        pass
    try:
        _batch(inst.table, static_check)
    except NftError:
        _nft.script(script)
        try:
            _batch(inst.table, ops)
            return mac
        except NftError:
            pass
    _release(inst.table, host_if)
    _batch(inst.table, ops)
    return mac


def release(bridge: str, host_if: str, addresses: Iterable[IPInterface | str]) -> None:
    """Remove every element of the VPS behind HOST_IF (when it is deleted). Safe to repeat,
    and when the tables do not exist.

    1. One transaction: add the fingerprint of the elements ADDRESSES make (failing if the
       VPS has others), add them all, then delete them all (adding first makes every delete
       find its element, so a repeat cannot fail for want of one).
    2. If that failed and the table exists: delete whatever elements the sets hold for
       HOST_IF now, looked up in them (slow with many VPSs, so only then).
    """
    t = table_name(bridge)
    host_if = interface_name(host_if)
    ops = _guest_ops(host_if, guest_mac(host_if), _addresses(addresses))
    ops.append(("add", "bridge", "dropped", _ifname_key(host_if), None))
    try:
        _batch(t, ops + [("delete", family, name, key, None) for _verb, family, name, key, _value in ops])
        return
    except NftError:
        if not _table_exists(t):
            return
    _release(t, host_if)


def _table_exists(table: str) -> bool:
    try:
        _nft.json([{"list": {"map": {"family": "bridge", "table": table, "name": "fingerprint"}}}])
    except NftError:
        return False
    return True


def _elements(table: str, name: str, values: list[Any]) -> dict:
    return {"element": {"family": "bridge", "table": table, "name": name, "elem": values}}


def _release(table: str, host_if: str) -> None:
    """Delete HOST_IF's elements from every per-VPS set as listed now (whatever a start
    added, however the addresses changed since), in one transaction."""
    deletes = []
    for name in (*GUEST_SETS, "guest_fp"):
        kind = "map" if name == "guest_fp" else "set"
        listing = _nft.json([{"list": {kind: {"family": "bridge", "table": table, "name": name}}}])
        for item in listing.get("nftables", []):
            mine = [e for e in (item.get(kind) or {}).get("elem", []) if _element_port(e) == host_if]
            if mine:
                deletes.append({"delete": _elements(table, name, mine)})
    dropped = _elements(table, "dropped", [host_if])
    dst = _elements(table, "guest_dst", [guest_mac(host_if)])  # derived from the port: no listing needed
    _nft.json([*deletes, {"add": dropped}, {"delete": dropped}, {"add": dst}, {"delete": dst}])


def _element_port(elem: Any) -> str | None:
    """The port name an element of a per-VPS set or map is keyed by."""
    if isinstance(elem, dict) and "concat" in elem:
        return elem["concat"][0]
    if isinstance(elem, list) and elem:  # a map's [key, value]
        return elem[0] if isinstance(elem[0], str) else None
    if isinstance(elem, dict) and "elem" in elem:
        return _element_port(elem["elem"].get("val"))
    return None


def remove(bridge: str) -> None:
    """Delete both tables of the installation whose bridge is BRIDGE. Safe to repeat."""
    t = table_name(bridge)
    commands = []
    for family in ("bridge", "inet"):
        table = {"table": {"family": family, "name": t}}
        commands += [{"add": table}, {"delete": table}]  # adding first: the delete cannot miss
    _nft.json(commands)


# --- queries -----------------------------------------------------------------------------


def tables() -> dict[str, list[str]]:
    """Our tables on this host, by family: {"bridge": ["vservers-vsbr0"], "inet": [...]}."""
    found: dict[str, list[str]] = {}
    # The text listing: the JSON one of libnftables 1.0.6 fetches every rule and element.
    for line in _nft.text("list tables").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith(TABLE_PREFIX):
            found.setdefault(words[1], []).append(words[2])
    return found


def dropped(bridge: str) -> dict[str, int]:
    """Packets dropped so far from each VPS port (what the VPS sent and may not), by port."""
    listing = _nft.json([{"list": {"set": {"family": "bridge", "table": table_name(bridge), "name": "dropped"}}}])
    counts: dict[str, int] = {}
    for item in listing.get("nftables", []):
        for elem in (item.get("set") or {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                counter = elem["elem"].get("counter") or {}
                counts[elem["elem"]["val"]] = int(counter.get("packets", 0))
    return counts


def host_dropped(bridge: str) -> int:
    """Packets from the VPSs to the host that were refused or dropped so far."""
    listing = _nft.json([{"list": {"chain": {"family": "inet", "table": table_name(bridge), "name": "from_guests"}}}])
    total = 0
    for item in listing.get("nftables", []):
        for expr in (item.get("rule") or {}).get("expr", []):
            if isinstance(expr.get("counter"), dict):
                total += int(expr["counter"]["packets"])
    return total


# --- inside each VPS: a bound on the neighbour entries it makes ----------------------------
#
# The kernel's neighbour tables (ARP, NDP) are shared by every network namespace, and their
# limit (gc_thresh3) can only be set for the whole host. A guest makes an entry for every next
# hop it sends to: each address of its on-link prefixes, each multicast group, each loopback
# address. Sending to thousands of them fills the table ("neighbor table overflow"): the host
# then cannot resolve its VPSs, and its own entries are collected to make room. This table, put
# in the guest's own network namespace by the engine before the guest's init runs, lets its
# packets out to at most NEXT_HOPS next hops per family at once; a next hop unused for
# NEXT_HOP_IDLE seconds makes room for another (longer than a neighbour entry stays out of the
# collector's reach after its last use: up to ~45 s while REACHABLE, then 5 s). The rest is
# dropped before routing makes a neighbour entry for it (the sender gets EPERM). Its packets to
# the gateway (the default route) count once. Without CAP_NET_ADMIN the guest can neither
# remove it nor change its routes; with "network admin inside" it can (see docs/security.md).
# The loopback address itself (127.0.0.1, ::1: one next hop, the one entry lo always has) goes
# out without the set's update: a guest's own loopback traffic (its web server and its wrk,
# PHP and its database) would otherwise pay a set update per packet; every other loopback
# address (the rest of 127/8) still counts against the bound.
NEXT_HOPS = 64
NEXT_HOP_IDLE = 60
GUEST_TABLE = "vservers"
GUEST_GUARD = f"""\
table inet {GUEST_TABLE} {{
    set hops4 {{ type ipv4_addr; size {NEXT_HOPS}; flags dynamic,timeout; timeout {NEXT_HOP_IDLE}s; }}
    set hops6 {{ type ipv6_addr; size {NEXT_HOPS}; flags dynamic,timeout; timeout {NEXT_HOP_IDLE}s; }}
    chain output {{
        type filter hook output priority filter; policy accept;
        rt ip nexthop 127.0.0.1 accept
        rt ip6 nexthop ::1 accept
        meta nfproto ipv4 update @hops4 {{ rt ip nexthop }} accept
        meta nfproto ipv6 update @hops6 {{ rt ip6 nexthop }} accept
        counter drop
    }}
}}
"""


# GUEST_GUARD as the netlink messages libnftables sends for it (`nft --debug=netlink -f`),
# packed by hand: every start puts the table in a fresh namespace, and libnftables took 1.2 ms
# of CPU for it (its context, parser and cache; 2026-12-07, this VM), these 0.57 ms, most of it
# the kernel's.
# tests/engine/test_firewall.py holds it to the ruleset nft makes of the text (`nft list`).
NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET = 0, 3, 6, 9
NLM_F_APPEND = 0x800
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_TIMEOUT, NFTA_SET_DESC_SIZE = 9, 10, 11, 1
NFT_SET_TIMEOUT, NFT_SET_EVAL = 0x10, 0x20  # "flags dynamic,timeout"
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFT_RT_NEXTHOP4, NFT_RT_NEXTHOP6 = 1, 2
NFT_META_NFPROTO = 15
NFT_DYNSET_OP_UPDATE = 1
NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 2, 1
NF_DROP, NF_ACCEPT = 0, 1
NF_INET_LOCAL_OUT = 3
NFT_TYPE_IPADDR, NFT_TYPE_IP6ADDR = 7, 8  # nftables' datatypes ipv4_addr and ipv6_addr
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10


def _be32(value: int) -> bytes:
    return struct.pack("!I", value)  # nf_tables' numbers travel in network byte order


def _expr(name: str, *data: bytes) -> bytes:
    body = attr(NFTA_EXPR_NAME, strz(name))
    return nested(NFTA_LIST_ELEM, body + (nested(NFTA_EXPR_DATA, *data) if data else b""))


def _load_rt(key: int) -> bytes:
    return _expr("rt", attr(1, _be32(NFT_REG_1)), attr(2, _be32(key)))  # NFTA_RT_DREG, NFTA_RT_KEY


def _equals(value: bytes) -> bytes:
    # NFTA_CMP_SREG, NFTA_CMP_OP (NFT_CMP_EQ), NFTA_CMP_DATA
    return _expr("cmp", attr(1, _be32(NFT_REG_1)), attr(2, _be32(0)), nested(3, attr(NFTA_DATA_VALUE, value)))


def _verdict(code: int) -> bytes:
    # NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA
    return _expr("immediate", attr(1, _be32(NFT_REG_VERDICT)),
                 nested(2, nested(NFTA_DATA_VERDICT, attr(NFTA_VERDICT_CODE, _be32(code)))))


def _nfproto(family: int) -> bytes:
    return _expr("meta", attr(1, _be32(NFT_REG_1)), attr(2, _be32(NFT_META_NFPROTO))) + _equals(bytes([family]))


def _update(set_name: str, set_id: int) -> bytes:
    # NFTA_DYNSET_SET_NAME, NFTA_DYNSET_SET_ID, NFTA_DYNSET_OP, NFTA_DYNSET_SREG_KEY
    return _expr("dynset", attr(1, strz(set_name)), attr(2, _be32(set_id)), attr(3, _be32(NFT_DYNSET_OP_UPDATE)),
                 attr(4, _be32(NFT_REG_1)))


def _guard_messages() -> list[tuple[int, int, bytes]]:
    """(message type, flags, body) of GUEST_GUARD, in order."""
    table = attr(NFTA_TABLE_NAME, strz(GUEST_TABLE))
    messages = [(NFT_MSG_NEWTABLE, NLM_F_CREATE, table)]
    for set_id, (name, key_type, key_len) in enumerate(
            (("hops4", NFT_TYPE_IPADDR, 4), ("hops6", NFT_TYPE_IP6ADDR, 16)), start=1):
        messages.append((NFT_MSG_NEWSET, NLM_F_CREATE, (
            attr(NFTA_SET_TABLE, strz(GUEST_TABLE)) + attr(NFTA_SET_NAME, strz(name))
            + attr(NFTA_SET_FLAGS, _be32(NFT_SET_TIMEOUT | NFT_SET_EVAL)) + attr(NFTA_SET_KEY_TYPE, _be32(key_type))
            + attr(NFTA_SET_KEY_LEN, _be32(key_len)) + nested(NFTA_SET_DESC, attr(NFTA_SET_DESC_SIZE, _be32(NEXT_HOPS)))
            + attr(NFTA_SET_ID, _be32(set_id)) + attr(NFTA_SET_TIMEOUT, struct.pack("!Q", NEXT_HOP_IDLE * 1000)))))
    messages.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE, (
        attr(NFTA_CHAIN_TABLE, strz(GUEST_TABLE)) + attr(NFTA_CHAIN_NAME, strz("output"))
        + nested(NFTA_CHAIN_HOOK, attr(NFTA_HOOK_HOOKNUM, _be32(NF_INET_LOCAL_OUT)), attr(NFTA_HOOK_PRIORITY, _be32(0)))
        + attr(NFTA_CHAIN_POLICY, _be32(NF_ACCEPT)) + attr(NFTA_CHAIN_TYPE, strz("filter")))))
    rules = [
        _load_rt(NFT_RT_NEXTHOP4) + _equals(ipaddress.IPv4Address("127.0.0.1").packed) + _verdict(NF_ACCEPT),
        _load_rt(NFT_RT_NEXTHOP6) + _equals(ipaddress.IPv6Address("::1").packed) + _verdict(NF_ACCEPT),
        _nfproto(NFPROTO_IPV4) + _load_rt(NFT_RT_NEXTHOP4) + _update("hops4", 1) + _verdict(NF_ACCEPT),
        _nfproto(NFPROTO_IPV6) + _load_rt(NFT_RT_NEXTHOP6) + _update("hops6", 2) + _verdict(NF_ACCEPT),
        _expr("counter") + _verdict(NF_DROP),
    ]
    for expressions in rules:
        messages.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, (
            attr(NFTA_RULE_TABLE, strz(GUEST_TABLE)) + attr(NFTA_RULE_CHAIN, strz("output"))
            + nested(NFTA_RULE_EXPRESSIONS, expressions))))
    return messages


@lru_cache(maxsize=1)
def _guard_batch() -> tuple[bytes, int]:
    """GUEST_GUARD as one batch (sequence numbers from 1, batch begin and end included) and
    its number of requests."""
    family = NFPROTO["inet"]
    parts = [_message(NFNL_MSG_BATCH_BEGIN, 0, 0, 0, NFNL_SUBSYS_NFTABLES, b"")]
    for seq, (kind, flags, body) in enumerate(_guard_messages(), start=1):
        parts.append(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags | NLM_F_ACK, seq, family, 0, body))
    parts.append(_message(NFNL_MSG_BATCH_END, 0, len(parts), 0, NFNL_SUBSYS_NFTABLES, b""))
    return b"".join(parts), len(parts) - 2


def guard_here() -> None:
    """Put GUEST_GUARD in the network namespace of the calling thread (a VPS's, fresh), as one
    transaction on a netfilter socket of its own (opened there: a socket talks to the
    namespace it was opened in)."""
    batch, requests = _guard_batch()
    with netlink.Socket(NETLINK_NETFILTER, timeout=5.0) as sock:
        sock.send(batch)
        answers = sock.acks(range(1, requests + 1))
    failed = sorted(code for code in answers.values() if code)
    if failed or len(answers) < requests:
        detail = os.strerror(failed[0]) if failed else "the kernel did not answer every request"
        raise NftError(f"nftables: the guard on next hops: {detail}")
