"""Walls of the shared network stack (issue 10, findings 1, 3 and 6), attacked from inside real
busybox VPSs: frames to IEEE reserved group addresses, a flood of source MACs into the bridge's
table, permanent neighbour entries, and a flood of next hops into the host-wide neighbour table.

Every attack has its positive control: the same attack against a plain bridge with two network
namespaces this module builds without any of the engine's defences ("the lab"), or against a VPS
that has "network admin inside". Figures (table sizes, slab) are printed (`pytest -s`) for
docs/security.md.

Safety: VPS addresses in 198.19.20.0/24 and fd00:19::20:0/112 on the tests' bridge, the lab in
198.18.231.0/24 and fd00:231::/64 on its own bridge; the host talks to an address only after
`ip route get` names the right bridge. Router advertisements sent here announce no default
router (lifetime 0), only an fd00: prefix, and the host's uplink is never touched.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.helpers import check_routed_to_bridge, compile_static, http_get, wait_for_http
from tests.engine.test_firewall import ether, icmp6, udp4
from tests.leaks import TEST_ENV

BRIDGE = TEST_ENV["VSERVER_BRIDGE"]
GW4 = TEST_ENV["VSERVER_GATEWAY"].split("/")[0]
IP4 = {"wn-a": "198.19.20.10", "wn-b": "198.19.20.11", "wn-n": "198.19.20.12"}
IP6 = {"wn-a": "fd00:19::20:10", "wn-b": "fd00:19::20:11", "wn-n": "fd00:19::20:12"}
RESERVED = ("01:80:c2:00:00:0e", "01:80:c2:00:00:02", "01:80:c2:00:00:03")
TOOL = "/tmp/frame_tool"
RA_PREFIX = "fd00:19:ee::"  # announced by the forged router advertisements; nobody uses it
LAB4 = {"bridge": "198.18.231.1", "atk": "198.18.231.10", "vic": "198.18.231.11"}


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def slab_kb() -> int:
    return int(re.search(r"^Slab:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)[1])


def neighbour_stats(family: str = "arp_cache") -> dict[str, int]:
    """The host-wide counters of a neighbour table (every namespace's entries together)."""
    head, first = Path(f"/proc/net/stat/{family}").read_text().splitlines()[:2]
    return {name: int(value, 16) for name, value in zip(head.split(), first.split(), strict=True)}


def fdb_entries(*selector: str) -> list[str]:
    return sh("bridge", "fdb", "show", *selector).splitlines()


def router_advertisement(src_mac: str, src_ll: str, dst_mac: str) -> bytes:
    # No default router (lifetime 0); a prefix information option: on-link, not autonomous.
    body = (bytes([64, 0]) + (0).to_bytes(2, "big") + bytes(8)
            + bytes([3, 4, 64, 0x80]) + (600).to_bytes(4, "big") + (600).to_bytes(4, "big") + bytes(4)
            + socket.inet_pton(socket.AF_INET6, RA_PREFIX)
            + bytes([1, 1]) + bytes.fromhex(src_mac.replace(":", "")))
    return ether(dst_mac, src_mac, 0x86DD, icmp6(src_ll, "ff02::1", 134, body))


# --- the servers and the lab ------------------------------------------------------------------


@dataclasses.dataclass
class Walls:
    engine: object
    config: object

    def mac(self, name: str) -> str:
        from vservers.engine import firewall

        return firewall.guest_mac(self.engine.host_veth(name))

    def port(self, name: str) -> str:
        return self.engine.host_veth(name)

    def run(self, name: str, *argv: str, check: bool = True, timeout: float = 60):
        result = self.engine.run(name, list(argv), timeout=timeout)
        if check:
            assert result.returncode == 0, f"{' '.join(argv)} in {name}: {result.stdout}{result.stderr}"
        return result

    def send(self, name: str, *frames: bytes) -> None:
        self.run(name, TOOL, "send", "eth0", *(f.hex() for f in frames))


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    return compile_static("frame_tool.c", tmp_path_factory.mktemp("frame_tool"))


@pytest.fixture(scope="module")
def walls(engine, config, tool):
    """wn-a the attacker and wn-b its neighbour, both without network admin (the default);
    wn-n with it."""
    from vservers.engine import Limits

    made = []
    try:
        for name in IP4:
            made.append(name)
            engine.create(name, "busybox", [f"{IP4[name]}/18", f"{IP6[name]}/64"],
                          Limits(network_admin=name == "wn-n"))
            engine.start(name)
        for name in IP4:
            wait_for_http(IP4[name])
            result = engine.run(name, ["/bin/sh", "-c", f"cat > {TOOL} && chmod 755 {TOOL}"], input=tool.read_bytes())
            assert result.returncode == 0, result.stderr
        yield Walls(engine, config)
    finally:
        for name in made:
            engine.delete(name)


class Lab:
    """A plain bridge with an attacker's and a victim's network namespace on it, made the way
    anyone would (ip link): learning on, IPv6 and router advertisements on its ports, no
    firewall. Removed by name, with its processes, in close()."""

    def __init__(self, tool: Path) -> None:
        self.tool = str(tool)
        self.tag = secrets.token_hex(2)
        self.bridge = f"vswl{self.tag}"
        self.ports: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            sh("ip", "addr", "add", f"{LAB4['bridge']}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for role in ("atk", "vic"):
                proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
                self.procs[role] = proc
                port = self.ports[role] = f"{self.bridge}{role[0]}"
                netns = f"/proc/{proc.pid}/ns/net"
                deadline = time.monotonic() + 5
                while Path(netns).stat().st_ino == Path("/proc/self/ns/net").stat().st_ino:
                    assert time.monotonic() < deadline, "unshare did not make a namespace"
                    time.sleep(0.01)
                sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", str(proc.pid))
                sh("ip", "link", "set", port, "master", self.bridge, "up")
                self.inside(role, "ip", "link", "set", "lo", "up")
                self.inside(role, "ip", "addr", "add", f"{LAB4[role]}/24", "dev", "eth0")
                self.inside(role, "ip", "link", "set", "eth0", "up")
            # The kernel hands a port's carrier change to linkwatch, which may wait up to a
            # second: until a port forwards, it learns nothing and the controls would fail.
            deadline = time.monotonic() + 10
            while not all(f"{port}" in line and "state forwarding" in line
                          for port in self.ports.values() for line in [sh("bridge", "link", "show", "dev", port)]):
                assert time.monotonic() < deadline, sh("bridge", "link", "show")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def inside(self, role: str, *argv: str, check: bool = True) -> str:
        return sh("nsenter", "--target", str(self.procs[role].pid), "--net", *argv, check=check)

    def mac(self, role: str) -> str:
        return re.search(r"link/ether (\S+)", self.inside(role, "ip", "-o", "link", "show", "eth0"))[1]

    def send(self, role: str, *frames: bytes) -> None:
        self.inside(role, self.tool, "send", "eth0", *(f.hex() for f in frames))

    def close(self) -> None:
        for port in self.ports.values():
            sh("ip", "link", "del", port, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def lab(tool):
    made = Lab(tool)
    yield made
    made.close()


# --- finding 1: reserved group addresses -------------------------------------------------------


def test_frames_to_reserved_groups_with_a_neighbours_mac_blind_nobody(walls, lab):
    # The control: on the lab bridge the victim's entry moves to the attacker's port.
    victim = lab.mac("vic")
    lab.inside("vic", "ping", "-c1", "-W2", LAB4["bridge"])
    assert any(victim in line for line in fdb_entries("dev", lab.ports["vic"]))
    control = [ether(group, victim, 0x88B5, b"blind") for group in RESERVED]
    sent = time.monotonic()
    lab.send("atk", *control)
    # The bridge learns in the receiving softirq, after send() returned: wait for it (bounded),
    # and give the attack below at least as long before looking for its absence. The victim's
    # new link sends frames of its own (IPv6 router solicitations, MLD reports), each of which
    # moves its entry back: the control is sent again until its effect is seen.
    while not any(victim in line for line in fdb_entries("dev", lab.ports["atk"])):
        assert time.monotonic() - sent < 10, "the control did not blind"
        time.sleep(0.05)
        lab.send("atk", *control)
    learned_within = time.monotonic() - sent

    # The attack on the VPSs: B's MAC as source, to each reserved group, from A.
    from vservers.engine import firewall

    b = walls.mac("wn-b")
    dropped_before = firewall.dropped(BRIDGE).get(walls.port("wn-a"), 0)
    walls.send("wn-a", *(ether(group, b, 0x88B5, b"blind") for group in RESERVED for _ in range(3)))
    time.sleep(learned_within + 0.2)
    assert not any(b in line for line in fdb_entries("dev", walls.port("wn-a")))
    assert any(b in line and "static" in line for line in fdb_entries("dev", walls.port("wn-b")))
    check_routed_to_bridge(IP4["wn-b"])
    sh("ping", "-c", "3", "-i", "0.2", "-W", "2", IP4["wn-b"])
    assert http_get(IP4["wn-b"])[0] == 200
    assert firewall.dropped(BRIDGE)[walls.port("wn-a")] > dropped_before


def test_udp_to_the_host_through_a_reserved_group_never_arrives(walls, lab):
    from vservers.engine import firewall

    def listener(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.settimeout(2)
        return sock

    # The control: on the lab bridge the datagram reaches a host socket (the host sends nothing).
    assert f"inet {LAB4['bridge']}/24" in sh("ip", "-4", "addr", "show", "dev", lab.bridge)
    with listener(LAB4["bridge"]) as sock:
        port = sock.getsockname()[1]
        token = secrets.token_bytes(8)
        lab.send("atk", ether("01:80:c2:00:00:0e", lab.mac("atk"), 0x0800,
                              udp4(LAB4["atk"], LAB4["bridge"], 4000, port, token)))
        assert sock.recvfrom(100)[0] == token, "the control did not reach the host"

    # The VPS: the host listens on the gateway, and allows that port, so the same datagram
    # sent the ordinary way (to the gateway's MAC) arrives: the attack, sent first, must not.
    with listener(GW4) as sock:
        port = sock.getsockname()[1]
        firewall.ensure(dataclasses.replace(walls.config, host_allow=(("udp", port),)))
        try:
            a = walls.mac("wn-a")
            gateway_mac = Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip()
            attack = [ether(group, a, 0x0800, udp4(IP4["wn-a"], GW4, 4000, port, b"attack" + group.encode()))
                      for group in RESERVED]
            spoofed = ether("01:80:c2:00:00:0e", a, 0x0800, udp4("198.19.20.99", GW4, 4000, port, b"spoofed"))
            control = ether(gateway_mac, a, 0x0800, udp4(IP4["wn-a"], GW4, 4000, port, b"control"))
            walls.run("wn-a", "ping", "-c1", "-W2", GW4)  # the host knows A: its answer needs no ARP
            walls.send("wn-a", *attack, spoofed)
            # The issue's own way, from the VPS that may still change its neighbours.
            walls.run("wn-n", "arp", "-i", "eth0", "-s", GW4, "01:80:c2:00:00:0e")
            try:
                walls.run("wn-n", "/bin/sh", "-c", f"echo arp-trick | nc -u -w 1 {GW4} {port}", check=False)
            finally:
                walls.run("wn-n", "arp", "-i", "eth0", "-d", GW4)
            walls.send("wn-a", control)
            received = []
            while True:
                data = sock.recvfrom(100)[0]
                received.append(data)
                if data == b"control":
                    break
        finally:
            firewall.ensure(walls.config)
    assert received == [b"control"]


def test_a_router_advertisement_through_a_reserved_group_adds_no_route(walls, lab):
    from vservers.engine import firewall

    # The control: the lab port takes it and the host gets a route for the prefix on it.
    lab.inside("atk", "ip", "link", "set", "eth0", "up")
    atk = lab.mac("atk")
    lab.send("atk", router_advertisement(atk, str(firewall.link_local(atk)), "01:80:c2:00:00:0e"))
    deadline = time.monotonic() + 5
    while RA_PREFIX not in sh("ip", "-6", "route", "show", "dev", lab.ports["atk"]):
        assert time.monotonic() < deadline, "the control advertisement installed no route"
        time.sleep(0.05)

    # A VPS's port: no IPv6 at all, no address; the advertisement changes nothing.
    port = walls.port("wn-a")
    assert Path(f"/proc/sys/net/ipv6/conf/{port}/accept_ra").read_text().strip() == "0"
    assert Path(f"/proc/sys/net/ipv6/conf/{port}/disable_ipv6").read_text().strip() == "1"
    assert "inet" not in sh("ip", "addr", "show", "dev", port)
    routes_before = sh("ip", "-6", "route", "show", "table", "all")
    a = walls.mac("wn-a")
    ra = [router_advertisement(a, str(firewall.link_local(a)), group) for group in RESERVED]
    walls.send("wn-a", *ra)
    walls.run("wn-a", "ping", "-c1", "-W2", GW4)  # after the advertisements, the same way
    routes = sh("ip", "-6", "route", "show", "table", "all")
    assert routes == routes_before
    assert all(lab.ports["atk"] in line for line in routes.splitlines() if RA_PREFIX in line)


# --- finding 1 (the FDB) ------------------------------------------------------------------------


def test_a_flood_of_source_macs_leaves_the_bridge_table_as_it_was(walls, lab):
    # The control: the lab bridge learns every source.
    before, slab_before = len(fdb_entries("br", lab.bridge)), slab_kb()
    lab.inside("atk", lab.tool, "flood", "eth0", "5000", "0180c200000e")
    lab_growth, lab_slab = len(fdb_entries("br", lab.bridge)) - before, slab_kb() - slab_before
    assert lab_growth > 4900, lab_growth
    print(f"\nlab bridge: +{lab_growth} FDB entries, slab {lab_slab:+d} kB for 5,000 random sources")

    port = walls.port("wn-a")
    assert Path(f"/sys/class/net/{port}/brport/learning").read_text().strip() == "0"
    before = sorted(fdb_entries("br", BRIDGE))
    for destination in ("ff:ff:ff:ff:ff:ff", *RESERVED, walls.mac("wn-b")):
        walls.run("wn-a", TOOL, "flood", "eth0", "20000", destination.replace(":", ""))
    after = sorted(fdb_entries("br", BRIDGE))
    print(f"VPS bridge: {len(before)} FDB entries before 100,000 random sources, {len(after)} after")
    assert after == before
    assert http_get(IP4["wn-b"])[0] == 200


# --- finding 3: CAP_NET_ADMIN in the guest's own namespace --------------------------------------


def capability_bounding(walls, name: str) -> tuple[int, int]:
    """CapBnd of the server's init and of a program run in it by exec."""
    from vservers.engine import capabilities

    init = capabilities.bounding_set(walls.engine.status(name).init_pid)
    status = walls.run(name, "cat", "/proc/self/status").stdout
    return init, int(re.search(r"^CapBnd:\s+(\S+)", status, re.M)[1], 16)


def test_without_network_admin_the_guest_cannot_change_its_network(walls):
    from vservers.engine import capabilities

    net_admin = 1 << capabilities.CAP_NET_ADMIN
    assert all(not mask & net_admin for mask in capability_bounding(walls, "wn-a"))
    assert all(mask & net_admin for mask in capability_bounding(walls, "wn-n"))
    # Status says what the running init holds, read from the kernel.
    assert walls.engine.status("wn-a").limits.network_admin is False
    assert walls.engine.status("wn-n").limits.network_admin is True
    attempts = {
        "address": ["ip", "addr", "add", "198.19.20.200/32", "dev", "eth0"],
        "route": ["ip", "route", "add", "198.19.99.0/24", "via", GW4],
        "neighbour": ["arp", "-i", "eth0", "-s", "198.19.20.201", "02:00:00:00:00:01"],  # permanent
        "link": ["ip", "link", "set", "eth0", "mtu", "1400"],
        "sysctl": ["/bin/sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        "traffic control": ["tc", "qdisc", "add", "dev", "eth0", "root", "pfifo"],
    }
    undo = {
        "address": ["ip", "addr", "del", "198.19.20.200/32", "dev", "eth0"],
        "route": ["ip", "route", "del", "198.19.99.0/24"],
        "neighbour": ["arp", "-i", "eth0", "-d", "198.19.20.201"],
        "link": ["ip", "link", "set", "eth0", "mtu", "1500"],
        "sysctl": ["/bin/sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"],
        "traffic control": ["tc", "qdisc", "del", "dev", "eth0", "root"],
    }
    has_tc = walls.run("wn-a", "/bin/sh", "-c", "command -v tc", check=False).returncode == 0
    for what, argv in attempts.items():
        if what == "traffic control" and not has_tc:
            continue
        refused = walls.run("wn-a", *argv, check=False)
        assert refused.returncode != 0, (what, refused)
        assert re.search("not permitted|Permission denied", refused.stderr), (what, refused.stderr)
        # The positive control: root of wn-n, with network admin, may (and undoes it).
        walls.run("wn-n", *argv)
        walls.run("wn-n", *undo[what])
    # The guest's own guard and addresses stay as the engine made them.
    assert IP4["wn-a"] in walls.run("wn-a", "ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert http_get(IP4["wn-a"])[0] == 200


def test_status_reads_a_bounded_number_of_a_guests_addresses(walls):
    from vservers.engine import network

    added = 500
    script = (f"i=0; while [ $i -lt {added} ]; do ip addr add 198.18.$((200 + i / 250)).$((i % 250 + 1))/32 "
              "dev eth0 || exit 1; i=$((i+1)); done")
    try:
        walls.run("wn-n", "/bin/sh", "-c", script)
        # The control: the kernel holds them all.
        held = walls.run("wn-n", "ip", "-4", "addr", "show", "dev", "eth0").stdout.count("inet ")
        assert held == added + 1
        ips = walls.engine.status("wn-n").ips
        assert len(ips) == network.STATUS_ADDRESS_LIMIT
        assert ips[0] == f"{IP4['wn-n']}/18"  # the engine's own comes first
    finally:
        walls.engine.restart("wn-n")  # a new namespace, with only the engine's addresses
        wait_for_http(IP4["wn-n"])
    assert sorted(walls.engine.status("wn-n").ips) == sorted([f"{IP4['wn-n']}/18", f"{IP6['wn-n']}/64"])


def test_permanent_neighbour_entries_need_network_admin_and_what_they_cost(walls):
    refused = walls.run("wn-a", TOOL, "neigh", "eth0", "198.18.128.0", "100").stdout
    assert refused.startswith("added 0 error Operation not permitted"), refused

    # With network admin: the kernel takes 10,000 (its table limit exempts permanent entries),
    # and the slab they take is charged to no cgroup of the server's.
    memory_before = walls.engine.status("wn-n").usage.memory_bytes
    slab_before, stats_before = slab_kb(), neighbour_stats()
    done = walls.run("wn-n", TOOL, "neigh", "eth0", "198.18.128.0", "10000").stdout
    slab_growth = slab_kb() - slab_before
    memory_growth = walls.engine.status("wn-n").usage.memory_bytes - memory_before
    try:
        assert done.startswith("added 10000 error none"), done
        permanent = walls.run("wn-n", "ip", "neigh", "show").stdout
        assert permanent.count("PERMANENT") == 10000
        entries = neighbour_stats()["entries"] - stats_before["entries"]
        print(f"\n10,000 permanent neighbour entries: host slab {slab_growth:+d} kB, server's memory cgroup "
              f"{memory_growth / 1024:+.0f} kB, table entries {entries:+d}")
    finally:
        walls.engine.restart("wn-n")  # its namespace, and the entries with it, go
        wait_for_http(IP4["wn-n"])


def test_a_nested_namespace_gives_no_network_admin_back(walls):
    """A user namespace the guest makes starts with a full bounding set, so root has
    CAP_NET_ADMIN again over a network namespace made under it: permanent neighbour entries and
    next hops past the guard, in the host-wide tables. Without network admin the guest makes no
    network namespace (userns.limits_for); nested user namespaces alone still work."""
    nested = f"ip link add va type veth && ip link set va up && {TOOL} neigh va 198.18.128.0 2000"
    # The positive control: wn-n (network admin) may, as every guest could before.
    stats_before = neighbour_stats()
    done = walls.run("wn-n", "unshare", "-r", "-n", "sh", "-c",
                     f"{nested} && grep CapBnd /proc/self/status && ip neigh show | grep -c PERMANENT").stdout
    assert done.startswith("added 2000 error none"), done
    assert "CapBnd:\t000001ffffffffff" in done and done.rstrip().endswith("2000"), done
    print(f"\nnested namespace with network admin: {done.splitlines()[0]}; host-wide entries seen before "
          f"{stats_before['entries']}")

    refused = walls.run("wn-a", "unshare", "-r", "-n", "sh", "-c", nested, check=False)
    assert refused.returncode != 0 and "No space left on device" in refused.stdout + refused.stderr, refused
    assert walls.run("wn-a", "unshare", "-r", "id", "-u").stdout.strip() == "0"
    own = walls.run("wn-a", "unshare", "-r", TOOL, "neigh", "eth0", "198.18.128.0", "10").stdout
    assert own.startswith("added 0 error Operation not permitted"), own  # its own namespace stays closed
    assert http_get(IP4["wn-a"])[0] == 200


# --- finding 6: the shared neighbour table ------------------------------------------------------


def test_one_guest_cannot_fill_the_shared_neighbour_table(walls, lab):
    from vservers.engine import firewall

    # The control: a plain namespace makes one entry per address it sends to.
    lab.inside("atk", lab.tool, "spray", "198.18.231.100", "150")
    lab_entries = len(lab.inside("atk", "ip", "neigh", "show").splitlines())
    assert lab_entries >= 150, lab_entries

    # The host knows B, and B's entry for its gateway is there.
    check_routed_to_bridge(IP4["wn-b"])
    sh("ping", "-c1", "-W2", IP4["wn-b"])
    host_entry = sh("ip", "neigh", "show", IP4["wn-b"], "dev", BRIDGE)
    assert walls.mac("wn-b") in host_entry, host_entry

    v4, v6 = neighbour_stats(), neighbour_stats("ndisc_cache")
    sprays = {
        "its /18": ["198.19.40.0", "6000"],
        "its /64": [IP6["wn-a"], "6000"],
        "loopback": ["127.1.0.1", "3000"],
        "multicast": ["239.1.0.1", "3000"],
    }
    results = {}
    for what, argv in sprays.items():
        results[what] = walls.run("wn-a", TOOL, "spray", *argv).stdout.strip()
    own = walls.run("wn-a", "ip", "neigh", "show").stdout.splitlines()
    v4_after, v6_after = neighbour_stats(), neighbour_stats("ndisc_cache")
    print(f"\n18,000 next hops sprayed by one guest: {results}; its own neighbour entries {len(own)}; "
          f"host-wide ARP entries {v4['entries']} -> {v4_after['entries']}, "
          f"NDP {v6['entries']} -> {v6_after['entries']}; table overflows {v4_after['table_fulls'] - v4['table_fulls']}"
          f" / {v6_after['table_fulls'] - v6['table_fulls']}")
    assert all(int(r.split()[3]) > 0 for r in results.values()), results  # refused beyond the guard's bound
    assert len(own) <= 2 * firewall.NEXT_HOPS + 4  # and the few that others' requests make
    # Host-wide counts (anything else on the machine moves them too): far from the 18,000 sent.
    assert v4_after["entries"] - v4["entries"] < 1000 and v6_after["entries"] - v6["entries"] < 1000
    assert v4_after["table_fulls"] == v4["table_fulls"] and v6_after["table_fulls"] == v6["table_fulls"]
    # B still answers the host, and the host's entry for it is the one it had.
    assert http_get(IP4["wn-b"])[0] == 200
    assert walls.mac("wn-b") in sh("ip", "neigh", "show", IP4["wn-b"], "dev", BRIDGE)
