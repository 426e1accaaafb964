"""Network defences against the real kernel: three busybox servers A, B and C on the tests'
bridge, and every attack made from inside A as its root, with busybox's own tools where they
can (ip, ping, arping, nc, wget) and with a small static raw-frame tool where they cannot.

Each attack is watched where it would land: C runs the tool as a promiscuous sniffer on its
eth0, and the host watches its bridge device with a packet socket. Each sniffer stops at a
legitimate "control" frame that A sends after the attack along the same path: the control
must arrive (so the test can fail), and the attack, sent first, must not have arrived before
it.

Safety: traffic only between the tests' servers and the tests' bridge (198.19.0.0/18,
fd00:19::/64), after `ip route get` names the bridge for every address the host talks to.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import secrets
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.engine.helpers import check_routed_to_bridge, compile_static, http_get, wait_for_http
from tests.leaks import TEST_ENV

NAMES = ("fw-a", "fw-b", "fw-c")
IP4 = {"fw-a": "198.19.8.10", "fw-b": "198.19.8.11", "fw-c": "198.19.8.12"}
IP6 = {"fw-a": "fd00:19::8:10", "fw-b": "fd00:19::8:11", "fw-c": "fd00:19::8:12"}
GW4 = TEST_ENV["VSERVER_GATEWAY"].split("/")[0]
GW6 = TEST_ENV["VSERVER_GATEWAY6"].split("/")[0]
BRIDGE = TEST_ENV["VSERVER_BRIDGE"]
BROADCAST4 = "198.19.63.255"
TOOL = "/tmp/frame_tool"


# --- frames --------------------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload


def arp(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac_bytes(sender_mac) + ip_bytes(sender_ip) + \
        mac_bytes(target_mac) + ip_bytes(target_ip)


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP checksum: allowed
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(datagram), 0, 0, 64, 17, 0, ip_bytes(src), ip_bytes(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + datagram


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!IxxxB", len(datagram), 17)
    datagram = datagram[:6] + struct.pack("!H", checksum(pseudo + datagram) or 0xFFFF) + datagram[8:]
    return struct.pack("!IHBB", 6 << 28, len(datagram), 17, 64) + ip_bytes(src) + ip_bytes(dst) + datagram


def icmp6(src: str, dst: str, kind: int, body: bytes, hop_by_hop: bool = False) -> bytes:
    message = struct.pack("!BBH", kind, 0, 0) + body
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!IxxxB", len(message), 58)
    message = message[:2] + struct.pack("!H", checksum(pseudo + message)) + message[4:]
    if hop_by_hop:  # an extension header in front, as RA-guard evasions use
        payload, next_header = struct.pack("!BB", 58, 0) + b"\x01\x04\0\0\0\0" + message, 0
    else:
        payload, next_header = message, 58
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, 255) + ip_bytes(src) + ip_bytes(dst) + payload


def multicast_mac(address: str) -> str:
    return "33:33:" + ":".join(f"{b:02x}" for b in ip_bytes(address)[-4:])


def router_advertisement(mac: str) -> bytes:
    # hop limit 64, no flags, router lifetime 1800 s; then a source link-layer address option
    return struct.pack("!BBHII", 64, 0, 1800, 0, 0) + b"\x01\x01" + mac_bytes(mac)


def neighbour_advertisement(target: str, mac: str) -> bytes:
    # override flag; target; target link-layer address option
    return struct.pack("!I", 0x20000000) + ip_bytes(target) + b"\x02\x01" + mac_bytes(mac)


# --- watching --------------------------------------------------------------------------------


class HostSniffer:
    """Every frame the host's bridge device receives, collected by a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((BRIDGE, 0))
        self.sock.settimeout(0.05)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] != socket.PACKET_OUTGOING:
                self.frames.append(data)

    def wait_for(self, needle: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in f for f in list(self.frames)):
            assert time.monotonic() < deadline, f"the host never saw the control frame {needle.hex()}"
            time.sleep(0.01)

    def close(self) -> list[bytes]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.frames


def seen(frames: list[bytes], needle: bytes) -> bool:
    return any(needle in frame for frame in frames)


@dataclasses.dataclass
class Trio:
    engine: object
    config: object
    pool: ThreadPoolExecutor

    def mac(self, name: str) -> str:
        from vservers.engine import firewall

        return firewall.guest_mac(self.engine.host_veth(name))

    def run(self, name: str, *argv: str, check: bool = True):
        result = self.engine.run(name, list(argv), timeout=30)
        if check:
            assert result.returncode == 0, f"{' '.join(argv)} in {name}: {result.stdout}{result.stderr}"
        return result

    def send(self, name: str, *frames: bytes) -> None:
        self.run(name, TOOL, "send", "eth0", *(f.hex() for f in frames))

    def sniff(self, name: str, stop: bytes, seconds: float = 5.0):
        """Start the sniffer in NAME; returns a callable giving the frames once it stopped
        at STOP (failing the test if STOP never came)."""
        ready = f"/tmp/sniff-{secrets.token_hex(4)}"
        future = self.pool.submit(self.engine.run, name, [TOOL, "sniff", "eth0", str(seconds), stop.hex(), ready],
                                  None, seconds + 20)
        flag = Path(f"/proc/{self.engine.status(name).init_pid}/root{ready}")
        deadline = time.monotonic() + 10
        while not flag.exists():
            assert not future.done(), f"sniffer in {name} failed: {future.result()}"
            assert time.monotonic() < deadline, f"sniffer in {name} did not start"
            time.sleep(0.01)

        def frames() -> list[bytes]:
            result = future.result()
            assert result.returncode == 0, f"{name} never saw the control frame {stop.hex()}: {result}"
            return [bytes.fromhex(line) for line in result.stdout.split()]

        return frames

    def neighbour(self, name: str | None, address: str) -> str:
        """The MAC a neighbour table (the host's bridge, or a server's) holds for an address.

        The MAC only: the entry's state (REACHABLE, STALE, ...) ages on its own timer while a
        test runs, and a forged frame shows itself by a changed MAC.
        """
        if name is None:
            line = subprocess.run(["ip", "neigh", "show", address, "dev", BRIDGE], capture_output=True, text=True,
                                  check=True).stdout
        else:
            line = self.run(name, "ip", "neigh", "show", address).stdout
        words = line.split()
        return words[words.index("lladdr") + 1] if "lladdr" in words else ""


@pytest.fixture(scope="module")
def trio(engine, config, tmp_path_factory):
    tool = compile_static("frame_tool.c", tmp_path_factory.mktemp("frame_tool"))
    from vservers.engine import Limits

    for name in NAMES:
        # With "network admin inside": the firewall must hold against a guest that may change
        # its own addresses, links and neighbours (without it these attacks cannot even start).
        engine.create(name, "busybox", [f"{IP4[name]}/18", f"{IP6[name]}/64"], Limits(network_admin=True))
    try:
        for name in NAMES:
            engine.start(name)
        for name in NAMES:
            wait_for_http(IP4[name])
            result = engine.run(name, ["/bin/sh", "-c", f"cat > {TOOL} && chmod 755 {TOOL}"], input=tool.read_bytes())
            assert result.returncode == 0, result.stderr
        with ThreadPoolExecutor(max_workers=2) as pool:
            yield Trio(engine, config, pool)
    finally:
        for name in NAMES:
            engine.delete(name)


def host_ping(address: str) -> None:
    check_routed_to_bridge(address)
    subprocess.run(["ping", "-c1", "-W2", address], check=True, capture_output=True)


# --- the servers' own view ---------------------------------------------------------------


def test_each_server_has_its_fixed_mac_and_the_link_local_address_made_from_it(trio):
    from vservers.engine import firewall

    for name in NAMES:
        mac = trio.mac(name)
        link = trio.run(name, "ip", "-o", "link", "show", "eth0").stdout
        assert f"link/ether {mac} " in link
        assert str(firewall.link_local(mac)) in trio.run(name, "ip", "-o", "-6", "addr", "show", "dev", "eth0").stdout
    assert len({trio.mac(name) for name in NAMES}) == 3
    tables = firewall.tables()
    assert firewall.table_name(BRIDGE) in tables["bridge"] and firewall.table_name(BRIDGE) in tables["inet"]


def test_servers_reach_each_other_and_the_gateway_over_both_families(trio):
    trio.run("fw-a", "ping", "-c1", "-W2", IP4["fw-b"])
    trio.run("fw-a", "ping", "-c1", "-W2", GW4)
    trio.run("fw-c", "ping", "-6", "-c1", "-W2", IP6["fw-b"])
    trio.run("fw-c", "ping", "-6", "-c1", "-W2", GW6)
    body = trio.run("fw-a", "wget", "-q", "-T", "3", "-O", "-", f"http://{IP4['fw-b']}/").stdout
    assert "It works" in body
    body = trio.run("fw-b", "wget", "-q", "-T", "3", "-O", "-", f"http://[{IP6['fw-c']}]/").stdout
    assert "It works" in body


def guest_next_hops(trio, name: str) -> set[str]:
    """The next hops the guest's guard (firewall.GUEST_GUARD) holds for NAME, both families."""
    from vservers.engine import firewall

    pid = str(trio.engine.status(name).init_pid)
    found = set()
    for family in ("hops4", "hops6"):
        listing = subprocess.run(["nsenter", "-t", pid, "-n", "nft", "-j", "list", "set", "inet",
                                  firewall.GUEST_TABLE, family], capture_output=True, text=True, check=True).stdout
        for item in json.loads(listing)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                found.add(elem["elem"]["val"] if isinstance(elem, dict) else elem)
    return found


def test_a_started_server_announces_its_addresses_when_eth0_comes_up(trio):
    """The setup child sets the namespace's defaults before eth0 exists (network.ANNOUNCE_BY_DEFAULT):
    eth0 starts with them."""
    for name in NAMES:
        assert trio.run(name, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify").stdout.strip() == "1"
        assert trio.run(name, "cat", "/proc/sys/net/ipv6/conf/eth0/ndisc_notify").stdout.strip() == "1"


def _listed_in_a_fresh_namespace(put) -> tuple[str, list]:
    """`nft list` and `nft -j list` of the guard's table after PUT() ran in a network
    namespace of a forked child's own."""
    from vservers.engine import firewall
    from vservers.engine.syscalls import CLONE_NEWNET, unshare

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # only system calls and subprocess until _exit
        code = 1
        try:
            os.close(r)
            unshare(CLONE_NEWNET)
            put()
            table = ["inet", firewall.GUEST_TABLE]
            text = subprocess.run(["nft", "list", "table", *table], capture_output=True, text=True).stdout
            data = subprocess.run(["nft", "-j", "list", "table", *table], capture_output=True, text=True).stdout
            os.write(w, json.dumps([text, data]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        out = fh.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text, data = json.loads(out)
    # Handles number objects in the order they were made (libnftables makes the chain first).
    return text, [{kind: {k: v for k, v in fields.items() if k != "handle"} for kind, fields in item.items()}
                  for item in json.loads(data)["nftables"] if "metainfo" not in item]


def test_the_guard_packed_by_hand_is_the_ruleset_guest_guard_spells_out():
    """guard_here sends GUEST_GUARD as netlink messages packed by hand; nft, given the text,
    makes the same table, sets, chain and rules."""
    from vservers.engine import firewall

    def spelled_out() -> None:  # nft's own parser and libnftables, given the text
        subprocess.run(["nft", "-f", "-"], input=firewall.GUEST_GUARD, text=True, check=True)

    packed = _listed_in_a_fresh_namespace(firewall.guard_here)
    spelled = _listed_in_a_fresh_namespace(spelled_out)
    assert "update @hops4 { rt ip nexthop }" in packed[0] and "counter packets 0 bytes 0 drop" in packed[0]
    assert packed == spelled


def test_the_loopback_address_skips_the_guards_set_and_other_loopback_hops_still_count(trio):
    """Packets to 127.0.0.1 and ::1 leave without a set update (one next hop, the one lo always
    has: a guest's own loopback traffic pays no per-packet update); 127.0.0.2 still counts."""
    body = trio.run("fw-b", "wget", "-q", "-T", "3", "-O", "-", "http://127.0.0.1/").stdout
    assert "It works" in body
    trio.run("fw-b", "ping", "-c1", "-W2", "127.0.0.1")
    trio.run("fw-b", "ping", "-6", "-c1", "-W2", "::1")
    trio.run("fw-b", "ping", "-c1", "-W2", "127.0.0.2")
    hops = guest_next_hops(trio, "fw-b")
    assert "127.0.0.1" not in hops and "::1" not in hops, hops
    assert "127.0.0.2" in hops, hops  # the rest of 127/8 is still bounded


# --- spoofing ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_a_borrowed_address_reaches_neither_another_server_nor_the_host(trio, family):
    from vservers.engine import firewall

    ip = IP4 if family == 4 else IP6
    prefix = "/32" if family == 4 else "/128"
    gateway = GW4 if family == 4 else GW6
    flag = "-4" if family == 4 else "-6"
    # Known neighbours first: the spoofed packets then go out as they are, with no neighbour
    # solicitation of their own (which would carry B's address too, and be dropped as well).
    trio.run("fw-a", "ping", flag, "-c1", "-W2", ip["fw-c"])
    trio.run("fw-a", "ping", flag, "-c1", "-W2", gateway)
    before = firewall.dropped(BRIDGE).get(trio.engine.host_veth("fw-a"), 0)
    trio.run("fw-a", "ip", "addr", "add", ip["fw-b"] + prefix, "dev", "eth0")
    try:
        # (busybox's ip has no nodad: wait out duplicate address detection)
        deadline = time.monotonic() + 10
        while "tentative" in trio.run("fw-a", "ip", "-6", "addr", "show", "dev", "eth0").stdout:
            assert time.monotonic() < deadline, "the borrowed address stayed tentative"
            time.sleep(0.1)
        legit_to_c = ip_bytes(ip["fw-a"]) + ip_bytes(ip["fw-c"])
        legit_to_gw = ip_bytes(ip["fw-a"]) + ip_bytes(gateway)
        c_frames = trio.sniff("fw-c", legit_to_c)
        host = HostSniffer()
        try:
            # The attack: B's address as source, to C and to the gateway (no answer comes back).
            trio.run("fw-a", "ping", flag, "-c1", "-W1", "-I", ip["fw-b"], ip["fw-c"], check=False)
            trio.run("fw-a", "ping", flag, "-c1", "-W1", "-I", ip["fw-b"], gateway, check=False)
            # The controls: the same from A's own address, answered.
            trio.run("fw-a", "ping", flag, "-c1", "-W2", "-I", ip["fw-a"], ip["fw-c"])
            trio.run("fw-a", "ping", flag, "-c1", "-W2", "-I", ip["fw-a"], gateway)
            host.wait_for(legit_to_gw)
        finally:
            host_frames = host.close()
        spoofed = ip_bytes(ip["fw-b"])
        assert not seen(c_frames(), spoofed + ip_bytes(ip["fw-c"]))
        assert not seen(host_frames, spoofed + ip_bytes(gateway))
    finally:
        trio.run("fw-a", "ip", "addr", "del", ip["fw-b"] + prefix, "dev", "eth0")
    assert firewall.dropped(BRIDGE)[trio.engine.host_veth("fw-a")] > before


def test_a_changed_mac_gets_nothing_through_until_it_is_changed_back(trio):
    mac = trio.mac("fw-a")
    other = "02:00:00:0f:0a:0a"
    c_frames = trio.sniff("fw-c", ip_bytes(IP4["fw-a"]) + ip_bytes(IP4["fw-c"]))
    host = HostSniffer()
    try:
        trio.run("fw-a", "ip", "link", "set", "dev", "eth0", "address", other)
        try:
            trio.run("fw-a", "ip", "neigh", "flush", "dev", "eth0")
            assert trio.run("fw-a", "ping", "-c1", "-W1", GW4, check=False).returncode != 0
            assert trio.run("fw-a", "ping", "-c1", "-W1", IP4["fw-c"], check=False).returncode != 0
        finally:
            trio.run("fw-a", "ip", "link", "set", "dev", "eth0", "address", mac)
        trio.run("fw-a", "ping", "-c1", "-W2", IP4["fw-c"])
        trio.run("fw-a", "ping", "-c1", "-W2", GW4)
        host.wait_for(ip_bytes(IP4["fw-a"]) + ip_bytes(GW4))
    finally:
        host_frames = host.close()
    assert not seen(c_frames(), mac_bytes(other))
    assert not seen(host_frames, mac_bytes(other))


def test_a_frame_with_another_servers_mac_neither_arrives_nor_moves_it_in_the_bridge(trio):
    token = secrets.token_bytes(8)
    forged = ether("ff:ff:ff:ff:ff:ff", trio.mac("fw-b"), 0x0800, udp4(IP4["fw-a"], BROADCAST4, 9999, 9999, token))
    legit = ether("ff:ff:ff:ff:ff:ff", trio.mac("fw-a"), 0x0800,
                  udp4(IP4["fw-a"], BROADCAST4, 9999, 9999, token + b"ok"))
    c_frames = trio.sniff("fw-c", token + b"ok")
    trio.send("fw-a", forged, forged, legit)
    frames = c_frames()
    assert not seen(frames, mac_bytes(trio.mac("fw-b")))
    fdb = subprocess.run(["bridge", "fdb", "show", "dev", trio.engine.host_veth("fw-a")], capture_output=True,
                         text=True, check=True).stdout
    assert trio.mac("fw-b") not in fdb
    # B is still reached at its own port.
    assert http_get(IP4["fw-b"])[0] == 200


def test_gratuitous_arp_for_another_address_changes_no_neighbour_table(trio):
    for name in ("fw-b", "fw-c"):
        host_ping(IP4[name])
    trio.run("fw-c", "ping", "-c1", "-W2", IP4["fw-b"])
    trio.run("fw-b", "ping", "-c1", "-W2", GW4)
    time.sleep(1.1)  # past the neighbour lock time, so an unfiltered update would take effect
    tables = {
        "host sees B": trio.neighbour(None, IP4["fw-b"]),
        "C sees B": trio.neighbour("fw-c", IP4["fw-b"]),
        "B sees the gateway": trio.neighbour("fw-b", GW4),
    }
    assert tables["host sees B"] == tables["C sees B"] == trio.mac("fw-b")
    assert tables["B sees the gateway"]
    a = trio.mac("fw-a")
    claims = [arp(op, a, claimed, "ff:ff:ff:ff:ff:ff" if op == 1 else "00:00:00:00:00:00", claimed)
              for claimed in (IP4["fw-b"], GW4) for op in (1, 2)]
    own = arp(1, a, IP4["fw-a"], "00:00:00:00:00:00", IP4["fw-a"])
    c_frames = trio.sniff("fw-c", mac_bytes(a) + ip_bytes(IP4["fw-a"]))
    host = HostSniffer()
    try:
        trio.send("fw-a", *(ether("ff:ff:ff:ff:ff:ff", a, 0x0806, claim) for claim in claims),
                  ether("ff:ff:ff:ff:ff:ff", a, 0x0806, own))
        # busybox's own arping too, with B's address on A as it would need.
        trio.run("fw-a", "ip", "addr", "add", IP4["fw-b"] + "/32", "dev", "eth0", "noprefixroute")
        try:
            trio.run("fw-a", "arping", "-U", "-c", "2", "-I", "eth0", "-s", IP4["fw-b"], IP4["fw-b"], check=False)
        finally:
            trio.run("fw-a", "ip", "addr", "del", IP4["fw-b"] + "/32", "dev", "eth0")
        trio.send("fw-a", ether("ff:ff:ff:ff:ff:ff", a, 0x0806, own))
        host.wait_for(mac_bytes(a) + ip_bytes(IP4["fw-a"]))
    finally:
        host_frames = host.close()
    frames = c_frames()
    for claimed in (IP4["fw-b"], GW4):
        assert not seen(frames, mac_bytes(a) + ip_bytes(claimed))
        assert not seen(host_frames, mac_bytes(a) + ip_bytes(claimed))
    assert {
        "host sees B": trio.neighbour(None, IP4["fw-b"]),
        "C sees B": trio.neighbour("fw-c", IP4["fw-b"]),
        "B sees the gateway": trio.neighbour("fw-b", GW4),
    } == tables


def test_a_neighbour_advertisement_for_another_address_changes_no_neighbour_table(trio):
    from vservers.engine import firewall

    a = trio.mac("fw-a")
    a_ll = str(firewall.link_local(a))
    host_ping(IP6["fw-b"])
    trio.run("fw-c", "ping", "-6", "-c1", "-W2", IP6["fw-b"])
    time.sleep(1.1)  # past the neighbour lock time
    before = (trio.neighbour(None, IP6["fw-b"]), trio.neighbour("fw-c", IP6["fw-b"]))
    assert before == (trio.mac("fw-b"), trio.mac("fw-b"))
    all_nodes = "ff02::1"
    forged = [
        icmp6(a_ll, all_nodes, 136, neighbour_advertisement(IP6["fw-b"], a)),
        icmp6(IP6["fw-a"], all_nodes, 136, neighbour_advertisement(IP6["fw-b"], a)),
        # its own target, but another server's MAC in the option
        icmp6(IP6["fw-a"], all_nodes, 136, neighbour_advertisement(IP6["fw-a"], trio.mac("fw-b"))),
    ]
    own = icmp6(IP6["fw-a"], all_nodes, 136, neighbour_advertisement(IP6["fw-a"], a))
    c_frames = trio.sniff("fw-c", own[-24:])
    trio.send("fw-a", *(ether(multicast_mac(all_nodes), a, 0x86DD, f) for f in forged),
              ether(multicast_mac(all_nodes), a, 0x86DD, own))
    frames = c_frames()
    for frame in forged:
        assert not seen(frames, frame[-24:])
    assert (trio.neighbour(None, IP6["fw-b"]), trio.neighbour("fw-c", IP6["fw-b"])) == before


def test_router_advertisements_dhcp_replies_and_other_protocols_from_a_server_are_dropped(trio):
    from vservers.engine import firewall

    a, c = trio.mac("fw-a"), trio.mac("fw-c")
    a_ll = str(firewall.link_local(a))
    all_nodes = "ff02::1"
    token = secrets.token_bytes(8)
    routes_before = trio.run("fw-c", "ip", "-6", "route").stdout
    assert "default via fe80" not in routes_before
    # The router advertisements go to C's MAC only: were they let through, C would take A for
    # a router (and the host, which accepts them on the bridge too, never sees them).
    attacks = [
        ether(c, a, 0x86DD, icmp6(a_ll, all_nodes, 134, router_advertisement(a))),
        ether(c, a, 0x86DD, icmp6(a_ll, all_nodes, 134, router_advertisement(a), hop_by_hop=True)),
        ether("ff:ff:ff:ff:ff:ff", a, 0x0800, udp4(IP4["fw-a"], "255.255.255.255", 67, 68, b"offer" + token)),
        # a DHCPv6 server's reply (UDP 547 -> 546) from A's link-local address
        ether("33:33:00:01:00:02", a, 0x86DD, udp6(a_ll, "ff02::1:2", 547, 546, b"reply" + token)),
        ether("ff:ff:ff:ff:ff:ff", a, 0x88B5, b"other" + token),  # an EtherType nobody needs
        ether("ff:ff:ff:ff:ff:ff", a, 0x8100,  # VLAN 5
              b"\x00\x05\x08\x00" + udp4(IP4["fw-a"], BROADCAST4, 9, 9, b"vlan" + token)),
    ]
    controls = [
        ether(c, a, 0x86DD, icmp6(a_ll, all_nodes, 128, b"\0\1\0\1" + token)),
        ether("ff:ff:ff:ff:ff:ff", a, 0x0800, udp4(IP4["fw-a"], "255.255.255.255", 1067, 1068, b"fine" + token)),
    ]
    c_frames = trio.sniff("fw-c", b"fine" + token)
    trio.send("fw-a", *attacks, *controls)
    frames = c_frames()
    assert seen(frames, b"\0\1\0\1" + token)  # the ICMPv6 control (sent before the last) came too
    for frame in attacks:
        assert not seen(frames, frame[14:])
    assert trio.run("fw-c", "ip", "-6", "route").stdout == routes_before


# --- sniffing ------------------------------------------------------------------------------


def test_a_server_sees_no_unicast_between_others_even_when_the_bridge_floods_it(trio):
    a, b = trio.mac("fw-a"), trio.mac("fw-b")
    token = secrets.token_bytes(8)
    unknown = "02:00:00:0f:0b:0b"  # in no FDB: the bridge floods frames to it to every port
    flooded = ether(unknown, a, 0x0800, udp4(IP4["fw-a"], IP4["fw-b"], 9999, 9999, b"flood" + token))
    to_b = ether(b, a, 0x0800, udp4(IP4["fw-a"], IP4["fw-b"], 9999, 9999, b"to-b" + token))
    control = ether("ff:ff:ff:ff:ff:ff", a, 0x0800, udp4(IP4["fw-a"], BROADCAST4, 9999, 9999, b"all" + token))
    c_frames = trio.sniff("fw-c", b"all" + token)
    b_frames = trio.sniff("fw-b", b"all" + token)
    # real traffic between A and B too
    assert "It works" in trio.run("fw-a", "wget", "-q", "-T", "3", "-O", "-", f"http://{IP4['fw-b']}/").stdout
    trio.send("fw-a", flooded, to_b, control)
    c_seen, b_seen = c_frames(), b_frames()
    assert seen(b_seen, b"to-b" + token)  # B gets what is addressed to it
    assert not seen(c_seen, b"flood" + token) and not seen(c_seen, b"to-b" + token)
    assert not seen(c_seen, ip_bytes(IP4["fw-a"]) + ip_bytes(IP4["fw-b"]))
    assert not seen(c_seen, ip_bytes(IP4["fw-b"]) + ip_bytes(IP4["fw-a"]))


def test_without_the_egress_check_the_flooded_frame_would_reach_c(trio):
    """The control for the test above: it can fail."""
    from vservers.engine import firewall

    token = secrets.token_bytes(8)
    flooded = ether("02:00:00:0f:0b:0c", trio.mac("fw-a"), 0x0800,
                    udp4(IP4["fw-a"], IP4["fw-b"], 9999, 9999, b"flood" + token))
    table = firewall.table_name(BRIDGE)
    firewall._nft.json([{"flush": {"chain": {"family": "bridge", "table": table, "name": "to_guest"}}}])
    try:
        c_frames = trio.sniff("fw-c", b"flood" + token)
        trio.send("fw-a", flooded)
        assert seen(c_frames(), b"flood" + token)
    finally:
        firewall.ensure(trio.config)  # puts the rule back


# --- the host ------------------------------------------------------------------------------


@pytest.fixture
def listener():
    """A TCP listener of the host's on each gateway address (on the tests' bridge)."""
    socks = []
    for address, family in ((GW4, socket.AF_INET), (GW6, socket.AF_INET6)):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.listen(8)
        sock.setblocking(False)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def accepted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_a_server_reaches_no_port_of_the_host_unless_the_operator_allows_it(trio, listener):
    from vservers.engine import firewall

    v4, v6 = listener
    port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
    refused_before = firewall.host_dropped(BRIDGE)
    for address, port in ((GW4, port4), (GW6, port6)):
        result = trio.run("fw-a", "nc", "-w", "2", address, str(port), check=False)
        assert result.returncode != 0, result
    assert not accepted(v4) and not accepted(v6)
    assert firewall.host_dropped(BRIDGE) > refused_before
    # what still works: ping to the gateway, replies to the host's own connections, others' HTTP
    trio.run("fw-a", "ping", "-c1", "-W2", GW4)
    assert http_get(IP4["fw-a"])[0] == 200
    assert "It works" in trio.run("fw-a", "wget", "-q", "-T", "3", "-O", "-", f"http://{IP4['fw-c']}/").stdout

    allowed = dataclasses.replace(trio.config, host_allow=(("tcp", port4), ("tcp", port6)))
    firewall.ensure(allowed)
    try:
        for address, port, sock in ((GW4, port4, v4), (GW6, port6, v6)):
            trio.run("fw-a", "/bin/sh", "-c", f"echo hello | nc -w 1 {address} {port}", check=False)
            assert accepted(sock), f"{address} port {port} was not reached though allowed"
    finally:
        firewall.ensure(trio.config)
    assert trio.run("fw-a", "nc", "-w", "2", GW4, str(port4), check=False).returncode != 0
    assert not accepted(v4)


# --- connection tracking -------------------------------------------------------------------


def tracked(src: str, dst: str, sport: int) -> bool:
    """Whether the host's conntrack table has the connection SRC:SPORT -> DST (either way)."""
    with open("/proc/net/nf_conntrack") as fh:
        for line in fh:
            parts = line.split(" src=")
            if len(parts) > 2 and {parts[1].split(" dport=")[0], parts[2].split(" dport=")[0]} & {
                    f"{src} dst={dst} sport={sport}", f"{dst} dst={src} sport={sport}"}:
                return True
    return False


def fetch_from(name: str, trio, address: str, sport: int) -> None:
    """One HTTP request from server NAME to ADDRESS, from source port SPORT."""
    result = trio.run(name, "/bin/sh", "-c",
                      f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -p {sport} -w 3 {address} 80")
    assert "It works" in result.stdout, result


def test_traffic_between_servers_takes_no_conntrack_entry_of_the_host_and_the_hosts_own_does(trio, scratch):
    """With br_netfilter the host's conntrack saw bridged frames too: an entry per connection
    between two servers, in the host's one table, and a lookup per packet. Frames between
    ports skip it now; the host's own connections (replies addressed to the bridge) stay
    tracked, or the inet table's `ct state established` could not let their replies in,
    also while another installation's tables (SCRATCH's) are there: a bridge table's hooks
    see every bridge's frames."""
    from vservers.engine import firewall

    if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() != "1":
        pytest.skip("br_netfilter does not pass bridged IPv4 to the host's hooks here: nothing to skip")
    firewall.ensure(scratch)
    sport = 20000 + secrets.randbelow(20000)
    fetch_from("fw-a", trio, IP4["fw-b"], sport)
    assert not tracked(IP4["fw-a"], IP4["fw-b"], sport)
    check_routed_to_bridge(IP4["fw-a"])
    with socket.create_connection((IP4["fw-a"], 80), timeout=5, source_address=(GW4, sport + 1)) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"It works" in b"".join(iter(lambda: conn.recv(65536), b""))
    assert tracked(GW4, IP4["fw-a"], sport + 1)

    # The positive control: without the notrack rules the same connection is tracked.
    table = firewall.table_name(BRIDGE)
    listing = firewall._nft.json([{"list": {"chain": {"family": "bridge", "table": table, "name": "prerouting"}}}])
    handles = [item["rule"]["handle"] for item in listing["nftables"]
               if "rule" in item and any("notrack" in expr for expr in item["rule"]["expr"])]
    assert len(handles) == 2, listing
    firewall._nft.json([{"delete": {"rule": {"family": "bridge", "table": table, "chain": "prerouting",
                                             "handle": handle}}} for handle in handles])
    try:
        fetch_from("fw-a", trio, IP4["fw-b"], sport + 2)
        assert tracked(IP4["fw-a"], IP4["fw-b"], sport + 2)
    finally:
        firewall.ensure(trio.config)
    fetch_from("fw-b", trio, IP4["fw-c"], sport + 3)
    assert not tracked(IP4["fw-b"], IP4["fw-c"], sport + 3)


# --- the tables themselves (no traffic) ----------------------------------------------------


@pytest.fixture
def scratch(config):
    """An installation of its own that exists only as firewall tables (its own veth prefix,
    so its rules touch no port of the tests' servers), removed afterwards."""
    from vservers.engine import firewall

    tag = secrets.token_hex(3)
    other = dataclasses.replace(config, root=Path(f"/var/lib/vservers-fwtest-{tag}"), bridge=f"vsfw{tag}")
    assert other.veth_prefix != config.veth_prefix
    yield other
    firewall.remove(other.bridge)


def elements(config, name: str) -> list:
    from vservers.engine import firewall

    listing = firewall._nft.json([{"list": {"map" if name == "guest_fp" else "set": {
        "family": "bridge", "table": firewall.table_name(config.bridge), "name": name}}}])
    for item in listing["nftables"]:
        found = item.get("set") or item.get("map")
        if found:
            return found.get("elem", [])
    return []


def test_entries_follow_the_servers_and_the_tables_go_with_the_bridge(scratch):
    from vservers.engine import firewall, network

    port = scratch.veth_prefix + "abc"
    mac = firewall.protect(scratch, port, ["198.19.9.10/18", "fd00:19::9:10/64"])
    assert mac == firewall.guest_mac(port)
    assert {"concat": [port, "198.19.9.10"]} in elements(scratch, "guest_ip4")
    assert {"concat": [port, mac]} in elements(scratch, "guest_mac")
    assert {"concat": [port, str(firewall.link_local(mac))]} in elements(scratch, "guest_ip6")
    assert elements(scratch, "guest_dst") == [mac]
    firewall.protect(scratch, port, ["198.19.9.10/18", "fd00:19::9:10/64"])  # a restart: nothing changes
    assert len(elements(scratch, "guest_ip4")) == 1

    # Other addresses (however that came about): the old ones go.
    firewall.protect(scratch, port, ["198.19.9.11/18"])
    assert elements(scratch, "guest_ip4") == [{"concat": [port, "198.19.9.11"]}]
    assert {"concat": [port, "fd00:19::9:10"]} not in elements(scratch, "guest_ip6")

    # Other settings: the static part is rebuilt, the servers' entries stay.
    allowed = dataclasses.replace(scratch, host_allow=(("udp", 53),))
    second = scratch.veth_prefix + "def"
    firewall.protect(allowed, second, ["198.19.9.12/18"])
    listing = firewall._nft.text(f"list set inet {firewall.table_name(scratch.bridge)} host_allow")
    assert "udp . 53" in listing
    assert len(elements(scratch, "guest_ip4")) == 2

    firewall.release(scratch.bridge, port, ["198.19.9.11/18"])
    firewall.release(scratch.bridge, port, ["198.19.9.11/18"])  # again: nothing to do
    firewall.release(scratch.bridge, second, ["198.19.9.99/18"])  # addresses it never had: found anyway
    for name in (*firewall.GUEST_SETS, "guest_fp", "guest_dst"):
        assert elements(scratch, name) == [], name

    network.remove_bridge(scratch.bridge)  # no such bridge: its tables go all the same
    table = firewall.table_name(scratch.bridge)
    assert all(table not in names for names in firewall.tables().values())
    network.remove_bridge(scratch.bridge)
    firewall.release(scratch.bridge, port, ["198.19.9.11/18"])  # no tables: nothing to do


def channel_inode() -> int:
    """The inode of the firewall's own netfilter socket in this process (libnftables, used
    for the static part, keeps one of its own)."""
    from vservers.engine import firewall

    assert firewall._channel is not None and firewall._channel[0][0] == os.getpid()
    inode = os.fstat(firewall._channel[1].sock.fileno()).st_ino
    netfilter = {int(f[-1]) for f in map(str.split, Path("/proc/self/net/netlink").read_text().splitlines()[1:])
                 if f[1] == "12"}  # columns: sk, protocol, port, ..., inode
    assert inode in netfilter
    return inode


def test_one_netfilter_socket_serves_the_process_and_a_forked_child_opens_its_own(scratch):
    """Every batch of a process goes over one socket kept open (closing one after a delete
    waits for the kernel's RCU grace period); answers a batch left unread do not confuse the
    next one; a batch from another network namespace goes to that one; a forked child never
    writes on its parent's socket."""
    from vservers.engine import firewall

    port = scratch.veth_prefix + "k1"
    firewall.protect(scratch, port, ["198.19.9.20/18"])
    kept = channel_inode()
    firewall.release(scratch.bridge, port, ["198.19.9.20/18"])
    firewall.protect(scratch, port, ["198.19.9.21/18"])
    assert channel_inode() == kept

    # A batch whose answers nobody reads (as after a timeout): the next batch still gets its own.
    seq = 1 << 20
    stale = [firewall._message(firewall.NFNL_MSG_BATCH_BEGIN, 0, seq, 0, firewall.NFNL_SUBSYS_NFTABLES, b""),
             firewall._element_message(seq + 1, firewall.table_name(scratch.bridge),
                                       ("add", "bridge", "dropped", firewall._ifname_key(port), None)),
             firewall._message(firewall.NFNL_MSG_BATCH_END, 0, seq + 2, 0, firewall.NFNL_SUBSYS_NFTABLES, b"")]
    firewall._channel[1].send(b"".join(stale))
    firewall.release(scratch.bridge, port, ["198.19.9.21/18"])
    for name in firewall.GUEST_SETS:
        assert elements(scratch, name) == [], name
    assert channel_inode() == kept

    # A thread in a network namespace of its own gets a socket of that namespace; the next batch
    # from the host's gets one of the host's again (a socket talks to where it was opened).
    def in_a_namespace_of_its_own(found: list) -> None:
        from vservers.engine import syscalls

        syscalls.unshare(syscalls.CLONE_NEWNET)
        seq = 1 << 21
        probe = [firewall._message(firewall.NFNL_MSG_BATCH_BEGIN, 0, seq, 0, firewall.NFNL_SUBSYS_NFTABLES, b""),
                 firewall._element_message(seq + 1, firewall.table_name(scratch.bridge),
                                           ("delete", "bridge", "dropped", firewall._ifname_key(port), None)),
                 firewall._message(firewall.NFNL_MSG_BATCH_END, 0, seq + 2, 0, firewall.NFNL_SUBSYS_NFTABLES, b"")]
        found.append(firewall._transact(b"".join(probe), range(seq + 1, seq + 2)))
        found.append(firewall._channel[0][1] == os.stat("/proc/thread-self/ns/net").st_ino)

    found: list = []
    thread = threading.Thread(target=in_a_namespace_of_its_own, args=(found,))
    thread.start()
    thread.join()
    assert found == [{(1 << 21) + 1: errno.ENOENT}, True]  # that namespace has no such table
    firewall.protect(scratch, port, ["198.19.9.23/18"])
    assert elements(scratch, "guest_ip4") == [{"concat": [port, "198.19.9.23"]}]
    kept = channel_inode()
    firewall.release(scratch.bridge, port, ["198.19.9.23/18"])

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            firewall.protect(scratch, port, ["198.19.9.22/18"])
            os.write(write_end, str(channel_inode()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        in_child = report.read()
    os.waitpid(child, 0)
    assert in_child.isdigit() and int(in_child) != kept
    assert elements(scratch, "guest_ip4") == [{"concat": [port, "198.19.9.22"]}]
    firewall.release(scratch.bridge, port, ["198.19.9.22/18"])
    assert channel_inode() == kept


def test_bad_values_are_refused_before_anything_is_sent(config):
    from vservers.engine import firewall
    from vservers.engine.errors import InvalidInput

    assert firewall.parse_host_allow("tcp/53, udp/53,TCP/22") == (("tcp", 53), ("udp", 53), ("tcp", 22))
    assert firewall.parse_host_allow("") == ()
    for bad in ("tcp/0", "tcp/65536", "icmp/1", "tcp", "tcp/53;udp/53", "tcp/5 3", 'tcp/53"'):
        with pytest.raises(InvalidInput):
            firewall.parse_host_allow(bad)
    for bad in ('vs"x', "vs x", "", "a" * 16):
        with pytest.raises(InvalidInput):
            firewall.protect(config, bad, ["198.19.9.10/18"])
    with pytest.raises(InvalidInput):
        firewall.protect(config, "eth0", ["198.19.9.10/18"])  # not a port of the installation
    with pytest.raises(InvalidInput):
        firewall.protect(config, config.veth_prefix + "x", ["198.19.9.10"' }'])
    for bad in ("01:00:5e:00:00:01", "02:00:00:00:00", "02-00-00-00-00-01", "02:00:00:00:00:0G"):
        with pytest.raises(InvalidInput):
            firewall.validate_mac(bad)
    mac = firewall.guest_mac("vsabcdef")
    assert firewall.validate_mac(mac) == mac and int(mac[:2], 16) & 0b11 == 0b10  # local, unicast
    assert str(firewall.link_local("02:11:22:33:44:55")) == "fe80::11:22ff:fe33:4455"
