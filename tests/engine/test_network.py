"""Network layer against the real kernel: a test bridge, veth pairs and network namespaces.

Safety: traffic goes only to addresses in namespaces these tests create, inside 198.18.0.0/15
and fd00::/8, and only after `ip route get` shows the host would send it over the test
bridge (the default route leaves this machine). Everything made here is named vsnt<hex> and
deleted by name in teardown, even on failure.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vservers.engine import firewall, network, rtnl
from vservers.engine.errors import Conflict, EngineError, InvalidInput

IPv4orIPv6 = ipaddress.IPv4Interface | ipaddress.IPv6Interface

TEST_NET4 = ipaddress.ip_network("198.18.0.0/15")
TEST_NET6 = ipaddress.ip_network("fd00::/8")

GW4 = ipaddress.IPv4Interface("198.19.250.1/24")
GW6 = ipaddress.IPv6Interface("fd00:250::1/64")
A4 = ipaddress.IPv4Interface("198.19.250.10/24")
A6 = ipaddress.IPv6Interface("fd00:250::10/64")
B4 = ipaddress.IPv4Interface("198.19.250.11/24")
B6 = ipaddress.IPv6Interface("fd00:250::11/64")

for _iface in (GW4, GW6, A4, A6, B4, B6):
    assert _iface.ip in TEST_NET4 or _iface.ip in TEST_NET6, f"{_iface} is outside the test ranges"


def ip(*args: str, pid: int | None = None) -> str:
    """Run `ip ARGS` on the host, or inside the network namespace of PID."""
    prefix = ["nsenter", "--target", str(pid), "--net"] if pid is not None else []
    done = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@dataclass
class Lab:
    """Names and processes one test made; teardown removes exactly these."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    links: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return self.name("")

    def name(self, suffix: str) -> str:
        name = f"vsnt{self.tag}{suffix}"
        assert len(name) <= 15
        if name not in self.links:
            self.links.append(name)
        return name

    def namespace(self) -> int:
        """Start a process in a new network namespace and return its pid."""
        proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo ready && exec sleep 60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        # unshare has switched namespaces before it execs sh: once sh speaks, the pid
        # (the same through both execs) is in the new namespace.
        assert proc.stdout.readline() == "ready\n"
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        return proc.pid

    def cleanup(self) -> None:
        # Links first (a bridge before its ports would only release them), then processes.
        for name in reversed(self.links):
            if subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0:
                subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


def our_links(lab: Lab) -> list[str]:
    names = re.findall(r"^\d+: ([^:@]+)", ip("-o", "link"), re.MULTILINE)
    return [n for n in names if n.startswith(f"vsnt{lab.tag}")]


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for bridges, veths and namespaces")
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    # A leftover of an earlier run on the same subnets would make routing ambiguous.
    in_use = [ipaddress.ip_interface(a) for a in re.findall(r"\binet6? (\S+)", ip("-o", "addr"))]
    clash = [str(a) for a in in_use if a.ip in GW4.network or a.ip in GW6.network]
    assert not clash, f"test subnets already in use on this host: {clash}"
    lab = Lab()
    try:
        yield lab
    finally:
        lab.cleanup()
    assert our_links(lab) == [], "test interfaces left behind"


def assert_routed_via(address: IPv4orIPv6, bridge: str) -> None:
    """Refuse to go on unless the host sends ADDRESS over BRIDGE (checked two ways)."""
    addr = str(address.ip)
    out = ip("route", "get", addr)
    assert re.search(rf"\bdev {re.escape(bridge)}\b", out), f"{addr} would leave via {out!r}"
    assert network.routed_via(addr) == bridge


def ping(address: IPv4orIPv6, bridge: str, pid: int | None = None) -> None:
    """One echo request to ADDRESS from the host or from inside PID's namespace."""
    addr = str(address.ip)
    if pid is None:
        assert_routed_via(address, bridge)
    else:
        # Inside our namespace, eth0 on the test bridge is the only way out.
        assert re.search(r"\bdev eth0\b", ip("route", "get", addr, pid=pid))
    prefix = ["nsenter", "--target", str(pid), "--net"] if pid is not None else []
    family = "-6" if address.version == 6 else "-4"
    done = subprocess.run([*prefix, "ping", family, "-c1", "-W2", addr], capture_output=True, text=True)
    assert done.returncode == 0, f"ping {addr} from {pid or 'host'}: {done.stdout}{done.stderr}"


needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (apt-get install iputils-ping)")


# --- validation (no kernel objects) ------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * 16, "a b", "eth0/1", "..", ".", "tab\t", "ünï", "a:b"])
def test_bad_interface_names_raise_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInput):
        network.ensure_bridge(name, GW4)
    with pytest.raises(InvalidInput):
        network.remove_bridge(name)
    with pytest.raises(InvalidInput):
        network.attach("vsntok", name, os.getpid(), [A4], GW4.ip, None)
    with pytest.raises(InvalidInput):
        network.attach(name, "vsntok", os.getpid(), [A4], GW4.ip, None)
    with pytest.raises(InvalidInput):
        network.detach(name)
    with pytest.raises(InvalidInput):
        network.link_exists(name)
    with pytest.raises(InvalidInput):
        network.interface_counters(name)


def test_it_accepts_fifteen_character_names() -> None:
    assert network.validate_ifname("a-b_c.D" + "9" * 8) == "a-b_c.D99999999"


def test_bad_addresses_raise_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        network.ensure_bridge("vsntok", GW6)  # IPv6 where IPv4 belongs
    with pytest.raises(InvalidInput):
        network.ensure_bridge("vsntok", GW4, GW4)
    with pytest.raises(InvalidInput):
        network.attach("vsntok", "vsntok2", os.getpid(), ["not-an-address"], None, None)
    with pytest.raises(InvalidInput):
        network.attach("vsntok", "vsntok2", os.getpid(), [A4], GW6.ip, None)
    with pytest.raises(InvalidInput):
        network.attach("vsntok", "vsntok2", 0, [A4], GW4.ip, None)
    with pytest.raises(InvalidInput):
        network.attach("vsntok", "vsntok2", os.getpid(), [A4], GW4.ip, None, mtu=20)
    with pytest.raises(InvalidInput):
        network.routed_via("198.19.250")


# --- against the kernel ------------------------------------------------------------------


@needs_ping
def test_two_servers_talk_to_each_other_and_the_host(lab: Lab) -> None:
    bridge = lab.bridge
    host_a, host_b = lab.name("a"), lab.name("b")
    run_netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None

    network.ensure_bridge(bridge, GW4, GW6)
    network.ensure_bridge(bridge, GW4, GW6)  # idempotent
    addrs = ip("-o", "addr", "show", "dev", bridge)
    assert addrs.count(f"inet {GW4} ") == 1 and addrs.count(f"inet6 {GW6} ") == 1
    assert "tentative" not in ip("-o", "-6", "addr", "show", "dev", bridge, "scope", "global")
    details = ip("-d", "link", "show", "dev", bridge)
    assert "stp_state 0" in details and "forward_delay 0" in details
    assert network.link_exists(bridge)

    pid_a, pid_b = lab.namespace(), lab.namespace()
    network.attach(bridge, host_a, pid_a, [A4, A6], GW4.ip, GW6.ip)
    network.attach(bridge, host_b, pid_b, [B4, B6], GW4.ip, GW6.ip, mtu=1400)

    assert network.netns_addresses(pid_a) == [str(A4), str(A6)]
    assert network.netns_addresses(pid_b) == [str(B4), str(B6)]
    assert f"master {bridge}" in ip("-o", "link", "show", "dev", host_a)
    assert "mtu 1400" in ip("-o", "link", "show", "dev", "eth0", pid=pid_b)
    assert "mtu 1400" in ip("-o", "link", "show", "dev", host_b)
    assert "tentative" not in ip("-o", "-6", "addr", "show", "dev", "eth0", "scope", "global", pid=pid_a)
    assert f"default via {GW4.ip} dev eth0" in ip("route", pid=pid_a)
    assert f"default via {GW6.ip} dev eth0" in ip("-6", "route", pid=pid_a)
    assert "UP" in ip("-o", "link", "show", "dev", "lo", pid=pid_a)

    # Nothing is sent anywhere before the host's routing is known to use the test bridge.
    for address in (A4, A6, B4, B6):
        assert_routed_via(address, bridge)
    ping(A4, bridge)
    ping(B4, bridge)
    ping(A6, bridge)
    ping(B6, bridge)
    ping(B4, bridge, pid=pid_a)
    ping(A6, bridge, pid=pid_b)
    ping(GW4, bridge, pid=pid_b)

    counters = network.interface_counters(host_a)
    assert counters["rx_packets"] > 0 and counters["tx_packets"] > 0 and counters["rx_bytes"] > 0

    with pytest.raises(Conflict):
        network.remove_bridge(bridge)  # still has ports
    assert network.link_exists(bridge)

    network.detach(host_a)
    network.detach(host_a)  # idempotent
    assert not network.link_exists(host_a)
    assert "eth0" not in ip("-o", "link", pid=pid_a)  # the peer went with it
    network.detach(host_b)
    network.remove_bridge(bridge)
    network.remove_bridge(bridge)  # idempotent
    assert not network.link_exists(bridge)
    assert network.routed_via(str(A4.ip)) != bridge
    assert our_links(lab) == []
    # Entering namespaces by pid named none of them under /run/netns.
    assert (set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None) == run_netns


def _veth_into(lab: Lab, suffix: str, pid: int) -> str:
    """A veth whose host end is NAME and whose peer is eth0 in PID's namespace."""
    name = lab.name(suffix)
    ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
    return name


def _refuse_deletes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, and refuse, every delete the engine's rtnl would send."""
    asked: list[int] = []

    def refused(self: rtnl.Socket, index: int) -> None:
        asked.append(index)
        raise AssertionError("the engine deleted the veth itself")

    monkeypatch.setattr(rtnl.Socket, "delete_link", refused)
    return asked


def test_detach_with_grace_leaves_a_dead_namespaces_veth_to_the_kernel(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest's last process has gone: the kernel deletes the pair with the namespace, in
    a work queue, quicker than a delete of ours (network.detach), so detach waits for it. Here
    the test holds the namespace a moment longer, so the pair is surely there when detach
    looks, and detach returns only after the kernel took it."""
    pid = lab.namespace()
    name = _veth_into(lab, "a", pid)
    asked = _refuse_deletes(monkeypatch)
    held = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    released = threading.Event()

    def release() -> None:
        os.close(held)
        released.set()

    proc = lab.procs[-1]
    proc.kill()
    proc.wait(timeout=10)
    assert os.path.exists(f"/sys/class/net/{name}")
    timer = threading.Timer(0.2, release)
    timer.start()
    try:
        network.detach(name, grace=30.0)
    finally:
        timer.join()
    assert released.is_set()  # detach did not return before the namespace was let go
    assert asked == []
    assert not os.path.exists(f"/sys/class/net/{name}")


def test_detach_with_grace_deletes_a_veth_whose_namespace_lives_on(lab: Lab) -> None:
    """Something still holds the namespace (here its process): after the grace, detach
    deletes the pair itself."""
    pid = lab.namespace()
    name = _veth_into(lab, "a", pid)
    network.detach(name, grace=0.05)
    assert not os.path.exists(f"/sys/class/net/{name}")
    assert "eth0" not in ip("-o", "link", pid=pid)


def test_await_deletion_hears_a_deletion_by_someone_else_and_times_out_without_one(lab: Lab) -> None:
    pid = lab.namespace()
    name = _veth_into(lab, "a", pid)
    sysfs = f"/sys/class/net/{name}"

    def gone() -> bool:
        return not os.path.exists(sysfs)

    with rtnl.Socket(watch_links=True) as sock:
        index = sock.link_index(name)
        assert index is not None
        assert sock.await_deletion(index, gone, 0.05) is False
        ip("link", "del", name)
        assert sock.await_deletion(index, gone, 10.0) is True


def test_attach_replaces_a_leftover_host_interface(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4)
    pid = lab.namespace()
    host_if = lab.name("a")
    network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    first = ip("-o", "link", "show", "dev", host_if).split(":")[0]
    network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    assert ip("-o", "link", "show", "dev", host_if).split(":")[0] != first  # a new pair
    assert network.netns_addresses(pid) == [str(A4)]


def test_default_routes_only_for_families_with_an_address(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4, GW6)
    pid = lab.namespace()
    network.attach(lab.bridge, lab.name("a"), pid, [A4], GW4.ip, GW6.ip)
    assert f"default via {GW4.ip}" in ip("route", pid=pid)
    assert ip("-6", "route", "show", "default", pid=pid).strip() == ""


def test_a_failed_attach_leaves_nothing_behind(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4, GW6)
    pid = lab.namespace()
    host_if = lab.name("a")
    off_link = ipaddress.IPv6Address("fd00:251::1")  # no route to it from fd00:250::/64
    with pytest.raises(EngineError, match="default route"):
        network.attach(lab.bridge, host_if, pid, [A4, A6], GW4.ip, off_link)
    assert not network.link_exists(host_if)
    assert "eth0" not in ip("-o", "link", pid=pid)


def test_attach_refuses_a_namespace_that_already_has_eth0(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4)
    pid = lab.namespace()
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1", pid=pid)
    host_if = lab.name("a")
    with pytest.raises(Conflict):
        network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    assert not network.link_exists(host_if)


def test_attach_needs_the_bridge_and_the_process(lab: Lab) -> None:
    pid = lab.namespace()
    host_if = lab.name("a")
    with pytest.raises(EngineError, match="does not exist"):
        network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    network.ensure_bridge(lab.bridge, GW4)
    lab.procs[0].kill()
    lab.procs[0].wait()
    with pytest.raises(EngineError, match="does not exist"):
        network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    assert not network.link_exists(host_if)


def test_attach_refuses_the_hosts_own_namespace(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4)
    host_if = lab.name("a")
    with pytest.raises(Conflict, match="host's network namespace"):
        network.attach(lab.bridge, host_if, os.getpid(), [A4], GW4.ip, None)
    assert not network.link_exists(host_if)


def test_a_bridge_made_elsewhere_is_set_up_as_the_engines_own(lab: Lab) -> None:
    """STP on, a forward delay, another MAC, no reserved group frames forwarded: ensure_bridge
    sets what the engine's bridge needs and keeps the bridge."""
    bridge = lab.bridge
    ip("link", "add", bridge, "address", "02:00:00:00:00:01", "type", "bridge", "stp_state", "1",
       "forward_delay", "1500")
    index = int(Path(f"/sys/class/net/{bridge}/ifindex").read_text())
    network.ensure_bridge(bridge, GW4, GW6)
    sysfs = Path(f"/sys/class/net/{bridge}")
    assert int(sysfs.joinpath("ifindex").read_text()) == index
    assert (sysfs / "bridge/stp_state").read_text().strip() == "0"
    assert (sysfs / "bridge/forward_delay").read_text().strip() == "0"
    assert int((sysfs / "bridge/group_fwd_mask").read_text(), 16) == network.GROUP_FWD_MASK
    assert (sysfs / "address").read_text().strip() == firewall.bridge_mac(bridge)
    assert "UP" in ip("-o", "link", "show", "dev", bridge)
    addrs = ip("-o", "addr", "show", "dev", bridge)
    assert f"inet {GW4} " in addrs and f"inet6 {GW6} " in addrs


def test_a_gateway_address_with_another_prefix_is_a_conflict(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, ipaddress.IPv4Interface(f"{GW4.ip}/28"))
    with pytest.raises(Conflict, match="already has"):
        network.ensure_bridge(lab.bridge, GW4)


def test_setting_a_bridge_up_imports_no_pyroute2(lab: Lab) -> None:
    """Every long-running engine process sets its bridge up once (the worker's first start);
    pyroute2 would stay in it, 18 MB that each of its forks copies page tables for."""
    code = ("import sys, ipaddress; from vservers.engine import network; "
            f"network.ensure_bridge({lab.bridge!r}, ipaddress.ip_interface({str(GW4)!r})); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert network.link_exists(lab.bridge)


def test_it_refuses_to_treat_other_interfaces_as_its_own(lab: Lab) -> None:
    other = lab.name("d")  # a veth: not a bridge (the kernel here has no dummy driver)
    ip("link", "add", other, "type", "veth", "peer", "name", lab.name("e"))
    with pytest.raises(Conflict):
        network.ensure_bridge(other, GW4)
    with pytest.raises(Conflict):
        network.remove_bridge(other)
    network.ensure_bridge(lab.bridge, GW4)
    with pytest.raises(Conflict):
        network.detach(lab.bridge)  # not a veth: never deleted by detach
    assert network.link_exists(other) and network.link_exists(lab.bridge)


def test_the_pair_goes_away_with_the_namespace(lab: Lab) -> None:
    network.ensure_bridge(lab.bridge, GW4)
    pid = lab.namespace()
    host_if = lab.name("a")
    network.attach(lab.bridge, host_if, pid, [A4], GW4.ip, None)
    lab.procs[0].kill()
    lab.procs[0].wait()
    assert network.netns_addresses(pid) == []  # for status: gone means no addresses
    wait_for(lambda: not network.link_exists(host_if))
    network.remove_bridge(lab.bridge)  # no ports left


def test_entering_a_namespace_forks_no_helper(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    network.ensure_bridge(lab.bridge, GW4)
    pid = lab.namespace()
    network.attach(lab.bridge, lab.name("a"), pid, [A4], GW4.ip, None)

    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    fds = len(os.listdir("/proc/self/fd"))
    assert network.netns_addresses(pid) == [str(A4)]
    assert len(os.listdir("/proc/self/fd")) == fds  # the namespace socket was closed


def test_routed_via_names_lo_for_a_local_address() -> None:
    # Only a route lookup: nothing is sent.
    assert network.routed_via("127.0.0.1") == "lo"


def test_the_bridge_raises_the_hosts_neighbour_limits_and_never_lowers_them(lab: Lab) -> None:
    # The host's ARP and NDP tables hold every namespace's neighbours; at the kernel's default
    # limit (1024) about 500 busy VPSs fill them and the next ones stop answering.
    paths = {(family, name): f"/proc/sys/net/{family}/neigh/default/{name}"
             for family in ("ipv4", "ipv6") for name in network.NEIGHBOUR_FLOORS}
    saved = {key: Path(path).read_text() for key, path in paths.items()}
    try:
        for (_family, name), path in paths.items():
            Path(path).write_text({"gc_thresh3": "1024", "gc_thresh2": "512"}[name])
        network.ensure_bridge(lab.bridge, GW4)  # made here, or found ready: raised either way
        assert {key: int(Path(path).read_text()) for key, path in paths.items()} == {
            (family, name): network.NEIGHBOUR_FLOORS[name] for family, name in paths}
        higher = {key: network.NEIGHBOUR_FLOORS[key[1]] * 2 for key in paths}
        for key, value in higher.items():
            Path(paths[key]).write_text(str(value))
        assert network.raise_neighbour_limits() == {}
        network.ensure_bridge(lab.bridge, GW4)
        assert {key: int(Path(path).read_text()) for key, path in paths.items()} == higher
    finally:
        for key, text in saved.items():
            Path(paths[key]).write_text(text)


def test_a_bridge_keeps_the_fixed_mac_the_firewall_knows_the_host_by(lab: Lab) -> None:
    # The bridge table's notrack rule tells the host's frames by this MAC: a bridge that took
    # another (made by hand, or one without an address set, which follows its ports) gets it back.
    from vservers.engine import firewall

    network.ensure_bridge(lab.bridge, GW4)
    address = Path(f"/sys/class/net/{lab.bridge}/address")
    assert address.read_text().strip() == firewall.bridge_mac(lab.bridge)
    ip("link", "set", "dev", lab.bridge, "address", "02:00:00:00:00:01")
    network.ensure_bridge(lab.bridge, GW4)
    assert address.read_text().strip() == firewall.bridge_mac(lab.bridge)


@needs_ping
def test_a_reused_address_reaches_its_new_holder_even_when_its_announcement_is_lost(lab: Lab) -> None:
    """An address given back and handed out again: the host's neighbour entry still names the
    first holder's MAC (reachable: it answered a moment ago), and the new holder's gratuitous
    ARP, its one announcement, is lost on the way (dropped here by a table of this test's own).
    attach points the host's entry at the new MAC, so the first ping is answered; without that
    the host kept sending to a MAC no port has."""
    bridge = lab.bridge
    first_mac, second_mac = "02:00:5e:00:53:0a", "02:00:5e:00:53:0b"
    network.ensure_bridge(bridge, GW4)
    first, second = lab.namespace(), lab.namespace()
    network.attach(bridge, lab.name("a"), first, [A4], GW4.ip, None, mac=first_mac)
    ping(A4, bridge)
    assert first_mac in ip("neigh", "show", "to", str(A4.ip), "dev", bridge)
    network.detach(lab.name("a"))

    table = f"vsnt{lab.tag}garp"
    rule = (f"arp operation request arp saddr ip {A4.ip} arp daddr ip {A4.ip} counter drop")
    script = (f"add table bridge {table}\n"
              f"add chain bridge {table} lose {{ type filter hook prerouting priority -300; }}\n"
              f"add rule bridge {table} lose {rule}\n")
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        network.attach(bridge, lab.name("b"), second, [A4], GW4.ip, None, mac=second_mac)
        entry = ip("neigh", "show", "to", str(A4.ip), "dev", bridge)
        lost = re.search(r"packets (\d+)", subprocess.run(["nft", "list", "table", "bridge", table],
                                                          capture_output=True, text=True, check=True).stdout)
        ping(A4, bridge)
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", table], check=True)
    assert lost is not None and int(lost.group(1)) >= 1, "the control: the announcement was not lost"
    assert second_mac in entry, entry
