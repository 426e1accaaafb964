"""Bridges and veth pairs that connect VPS network namespaces, all through netlink.

Every VPS gets one veth pair: the host end (``host_if``) is a port of a Linux bridge that
carries the VPS gateway addresses; the other end is created directly inside the VPS's
network namespace as ``eth0`` (a veth peer can be given its namespace, ``IFLA_NET_NS_FD``,
in the request that creates the pair), so no temporary name ever appears on the host and
there is nothing to move or rename afterwards.

Inside a VPS's namespace we talk netlink over a socket opened in that namespace: a start's
setup child, which made the namespace, hands one over (GuestNetns); otherwise a short-lived
thread joins the namespace of the VPS's process with setns(2) (which changes only the calling
thread), opens the socket and exits. A netlink socket stays bound to the
namespace it was created in, so the rest runs in the caller's thread. This avoids both
named namespaces under /var/run/netns and the helper process pyroute2 forks for every
``IPRoute(netns=...)``.

pyroute2 takes ~160 ms to import (python -X importtime, 2026-12-06), longer than a whole start,
and adds 18 MB to the resident memory of the process that imports it, which every fork of that
process then copies page tables for and tears down (2026-12-07): the requests of every start,
stop and status, and setting a bridge up (which every long-running engine process meets once),
go through rtnl. pyroute2 is imported by the functions of the rare ones (removing a bridge,
route look-ups, counters of one link) when they run.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import firewall, ptys, rtnl
from .errors import Conflict, EngineError, InvalidInput
from .procfs import write_sysctls
from .syscalls import CLONE_NEWNET, setns
from .validate import interface_name as validate_ifname  # the name callers and tests use


def _load_site() -> None:
    """site's paths, where `vserver` runs without them (resident.LAUNCHER's `python -S`): the
    engine's one package from outside the standard library, pyroute2, is imported here (and
    tests/engine/test_cli_startup.py holds every other engine module to the standard library).
    Commands that never import this module (--help, list) are spared site's ~5 ms."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


_load_site()

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms of every start)
if TYPE_CHECKING:
    from pyroute2 import IPRoute

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

GUEST_IF = "eth0"
BRIDGE_MAX_PORTS = 1024  # BR_MAX_PORTS in the kernel's net/bridge/br_private.h
# The kernel's neighbour (ARP, NDP) tables are one per address family for the whole host, every
# network namespace included, and their limits can only be set from the host's namespace (a
# namespace has no neigh/default sysctls; measured on 6.18). Each VPS that talks to the host
# costs two entries (the host's for the VPS, the VPS's for its gateway), so the default hard limit
# (gc_thresh3 = 1024) overflows at about 500 busy VPSs: new neighbours are refused ("neighbor
# table overflow") and VPSs stop answering (measured: 953 of 1,000). Past gc_thresh2 the kernel
# collects entries idle for 5 s to make room, the host's own among them. A VPS pins at most
# firewall.NEXT_HOPS entries per family (its guard), so gc_thresh2 is sized for every port of a
# full bridge at that cap with 8,192 to spare for the host and the entries VPSs make for each
# other; gc_thresh3 is twice that, the kernel's own ratio. Raised, never lowered. Memory: an
# entry is ~470 bytes of slab (measured), so a table at gc_thresh3 holds ~68 MB per family.
_NEIGHBOURS_PLANNED = BRIDGE_MAX_PORTS * firewall.NEXT_HOPS + 8192  # 73,728
NEIGHBOUR_FLOORS = {"gc_thresh3": 2 * _NEIGHBOURS_PLANNED, "gc_thresh2": _NEIGHBOURS_PLANNED}
# Frames to IEEE 802.1D's reserved group addresses 01:80:c2:00:00:03-0f are forwarded rather than
# handed to the host's stack on the port they came in by (where no bridge firewall rule sees
# them, and their source was learned first), so the firewall's prerouting rules meet and drop
# them. 00-02 cannot be set here (the kernel refuses): 00 is forwarded anyway without STP, 01 is
# dropped by the kernel, 02 meets the firewall's input hook. See firewall.RESERVED_GROUPS.
GROUP_FWD_MASK = 0xFFF8
# The host end of a VPS's veth is a bridge port and nothing more: no IPv6 on it (no link-local
# address, no router advertisement taken there, which would add routes to the host's table).
HOST_END_SYSCTLS = ("/proc/sys/net/ipv6/conf/{}/accept_ra", "0"), ("/proc/sys/net/ipv6/conf/{}/disable_ipv6", "1")
_NEIGHBOUR_SYSCTL = "/proc/sys/net/{family}/neigh/default/{name}"
RT_SCOPE_LINK = 253
_COUNTERS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)


# --- validation --------------------------------------------------------------------------


def _interface(value: object, version: int | None = None) -> IPInterface:
    try:
        iface = ipaddress.ip_interface(value)  # type: ignore[arg-type]  # anything: refused below
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"bad address {value!r}: {exc}") from None
    if version is not None and iface.version != version:
        raise InvalidInput(f"{value} is not an IPv{version} address")
    return iface


def _address(value: object, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(value)  # type: ignore[arg-type]  # anything: refused below
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"bad address {value!r}: {exc}") from None
    if addr.version != version:
        raise InvalidInput(f"{value} is not an IPv{version} address")
    return addr


def _pid(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"bad process id {value!r}")
    return value


# --- netlink plumbing --------------------------------------------------------------------


@contextmanager
def _netlink_errors(what: str) -> Iterator[None]:
    """Turn netlink and system errors into an EngineError that says what was being done."""
    try:
        yield
    except OSError as exc:
        raise EngineError(f"{what}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # pyroute2's NetlinkError (not an OSError), looked up only once pyroute2 is imported:
        # before that none can be raised, and importing it here would cost its ~160 ms.
        pyroute2 = sys.modules.get("pyroute2.netlink.exceptions")
        if pyroute2 is not None and isinstance(exc, pyroute2.NetlinkError):
            raise EngineError(f"{what}: {os.strerror(exc.code)}") from exc
        raise


class _ProcessGone(EngineError):
    """The process whose network namespace was asked for does not exist."""


@contextmanager
def _netns_fd(pid: int) -> Iterator[int]:
    """An open handle on the network namespace of process PID.

    Holding it while we work means a pid reused meanwhile cannot redirect us elsewhere.
    """
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _ProcessGone(f"process {pid} does not exist") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _is_host_netns(nsfd: int) -> bool:
    ours, theirs = os.stat("/proc/self/ns/net"), os.fstat(nsfd)
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def _netns_socket(
    nsfd: int, sysctls: dict[str, str] | None = None, inside: Callable[[], None] | None = None
) -> socket.socket:
    """A NETLINK_ROUTE socket in the network namespace NSFD, after writing SYSCTLS (paths
    under /proc/sys/net, which shows the namespace of the thread that opens them) and running
    INSIDE there."""
    return _start_netns_socket(nsfd, sysctls, inside)()


def _start_netns_socket(
    nsfd: int,
    sysctls: dict[str, str] | None = None,
    inside: Callable[[], None] | None = None,
    sysctls_when: threading.Event | None = None,
) -> Callable[[], socket.socket]:
    """_netns_socket in a thread that starts now (INSIDE runs first there, and SYSCTLS are
    written once SYSCTLS_WHEN is set, if given); the function returned waits for it and
    returns the socket (or raises what went wrong there). Call it in every case, with NSFD
    still open: the socket pins the namespace until closed."""
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def worker() -> None:
        # setns() moves only this thread, and the thread ends right after: the caller's
        # thread and the rest of the process never leave the host namespace.
        try:
            setns(nsfd, CLONE_NEWNET)
            if inside is not None:
                inside()
            if sysctls_when is not None:
                sysctls_when.wait()
            write_sysctls((sysctls or {}).items())
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=worker, name="netns-socket")
    thread.start()

    def join() -> socket.socket:
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    return join


@contextmanager
def _host() -> Iterator[IPRoute]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


@contextmanager
def _netns(nsfd: int, what: str) -> Iterator[IPRoute]:
    """IPRoute working inside the network namespace NSFD."""
    from pyroute2 import IPRoute

    with _netlink_errors(f"enter the network namespace of {what}"):
        sock = _netns_socket(nsfd)
    # We own the socket and close it ourselves: while open it pins the namespace.
    try:
        with IPRoute(use_socket=sock) as ipr:
            yield ipr
    finally:
        sock.close()


def _get_link(ipr: IPRoute, name: str):
    """The RTM_NEWLINK message for NAME, or None if there is no such interface."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _kind(link) -> str | None:
    return link.get(("linkinfo", "kind"))


def _add_address(nl: rtnl.Socket, index: int, iface: IPInterface, ifname: str,
                 present: list[rtnl.Address]) -> None:
    """Add IFACE to interface INDEX unless it is among its PRESENT addresses (IPv6 without
    DAD: usable at once instead of "tentative" for a second or more)."""
    for address in present:
        if address.interface.ip == iface.ip:
            if address.interface.network.prefixlen == iface.network.prefixlen:
                return
            raise Conflict(f"{ifname} already has {address.interface}, not {iface}")
    try:
        nl.add_address(index, iface)
    except rtnl.NetlinkFailure as exc:
        if exc.errno != errno.EEXIST:  # added concurrently: fine
            raise


# --- bridge ------------------------------------------------------------------------------


def ensure_bridge(
    bridge: str,
    gateway4: ipaddress.IPv4Interface,
    gateway6: ipaddress.IPv6Interface | None = None,
) -> None:
    """Make sure BRIDGE exists, carries the gateway address(es) and is up.

    1. Create the bridge if missing (fixed MAC, STP off, forward delay 0 so a new port
       forwards at once, reserved group frames forwarded to the firewall: GROUP_FWD_MASK);
       an existing bridge gets these settings too.
    2. Add each gateway address it does not have yet (IPv6 with IFA_F_NODAD).
    3. Set it up, and learn no source address from a reserved group frame.
    Safe to call again and concurrently. Addresses it already has are kept.
    """
    validate_ifname(bridge)
    gw4 = _interface(gateway4, 4)
    gw6 = _interface(gateway6, 6) if gateway6 is not None else None
    ptys.raise_host_limit()  # the host's pty pool, sized for every guest (see ptys.py)
    if _bridge_ready(bridge, [gw for gw in (gw4, gw6) if gw is not None]) and _neighbour_limit_ok():
        return
    raise_neighbour_limits()
    mac = firewall.bridge_mac(bridge)
    options = {"forward_delay": 0, "stp_state": 0, "group_fwd_mask": GROUP_FWD_MASK}
    with _netlink_errors(f"set up bridge {bridge}"), rtnl.Socket() as nl:
        link = nl.link_kind(bridge)
        if link is None:
            try:
                nl.put_bridge(bridge, mac, **options)
            except rtnl.NetlinkFailure as exc:
                if exc.errno != errno.EEXIST:  # created concurrently: checked below
                    raise
            link = nl.link_kind(bridge)
            if link is None:
                raise EngineError(f"bridge {bridge} vanished right after creation")
        index, kind = link
        if kind != "bridge":
            raise Conflict(f"{bridge} exists and is not a bridge ({kind or 'no kind'})")
        # An existing bridge gets the fixed MAC too: the firewall's notrack rule knows the
        # host's frames by it (see firewall.bridge_mac).
        nl.put_bridge(bridge, mac, **options, index=index)
        present = nl.addresses(index)
        for gw in (gw4, gw6):
            if gw is not None:
                _add_address(nl, index, gw, bridge, present)
        nl.set_up(index)
    # Learn no source from a reserved group frame either (sysfs has the option; netlink
    # carries it in IFLA_BR_MULTI_BOOLOPT).
    with _netlink_errors(f"set up bridge {bridge}"):
        with open(f"/sys/class/net/{bridge}/bridge/no_linklocal_learn", "w") as fh:
            fh.write("1")


def _bridge_ready(bridge: str, gateways: list[IPInterface]) -> bool:
    """Whether BRIDGE is already as ensure_bridge leaves it: every start asks, so this is
    answered from sysfs and one address dump instead of the dozen pyroute2 calls of setting
    it up."""
    sysfs = f"/sys/class/net/{bridge}"
    try:
        with open(f"{sysfs}/flags") as fh:
            up = int(fh.read(), 16) & rtnl.IFF_UP
        with open(f"{sysfs}/bridge/stp_state") as fh:
            stp = int(fh.read())
        with open(f"{sysfs}/bridge/forward_delay") as fh:
            delay = int(fh.read())
        with open(f"{sysfs}/bridge/group_fwd_mask") as fh:
            mask = int(fh.read(), 16)
        with open(f"{sysfs}/bridge/no_linklocal_learn") as fh:
            ll_learn_off = int(fh.read())
        with open(f"{sysfs}/address") as fh:
            mac = fh.read().strip()
        index = socket.if_nametoindex(bridge)
    except (OSError, ValueError):
        return False
    if not up or stp or delay or mask != GROUP_FWD_MASK or not ll_learn_off or mac != firewall.bridge_mac(bridge):
        return False
    try:
        with rtnl.Socket() as nl:
            present = {a.interface for a in nl.addresses(index)}
    except OSError:
        return False
    return all(gw in present for gw in gateways)


def _neighbour_limit_ok() -> bool:
    """One read on every start: a host that rebooted or had the value reset gets it raised."""
    try:
        with open(_NEIGHBOUR_SYSCTL.format(family="ipv4", name="gc_thresh3")) as fh:
            return int(fh.read()) >= NEIGHBOUR_FLOORS["gc_thresh3"]
    except (OSError, ValueError):
        return False


def raise_neighbour_limits() -> dict[str, int]:
    """Raise the host's neighbour table limits (IPv4 and IPv6) to NEIGHBOUR_FLOORS where they
    are lower; returns what was written (the hard limit first, so they stay ordered)."""
    written = {}
    for family in ("ipv4", "ipv6"):
        for name in ("gc_thresh3", "gc_thresh2"):
            path = _NEIGHBOUR_SYSCTL.format(family=family, name=name)
            try:
                with open(path) as fh:
                    current = int(fh.read())
                if current < NEIGHBOUR_FLOORS[name]:
                    with open(path, "w") as fh:
                        fh.write(str(NEIGHBOUR_FLOORS[name]))
                    written[path] = NEIGHBOUR_FLOORS[name]
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
            except (OSError, ValueError) as exc:
                raise EngineError(f"cannot raise the neighbour table limit {path}: {exc}") from exc
    return written


def remove_bridge(bridge: str) -> None:
    """Delete BRIDGE if it exists; refuse (Conflict) while it still has ports."""
    from pyroute2.netlink.exceptions import NetlinkError

    validate_ifname(bridge)
    with _host() as ipr, _netlink_errors(f"remove bridge {bridge}"):
        link = _get_link(ipr, bridge)
        if link is None:
            firewall.remove(bridge)  # its tables, if a crash left them behind
            return
        if _kind(link) != "bridge":
            raise Conflict(f"{bridge} is not a bridge; not deleting it")
        index = link["index"]
        ports = sorted(msg.get("IFLA_IFNAME") for msg in ipr.link("dump") if msg.get("IFLA_MASTER") == index)
        if ports:
            raise Conflict(f"bridge {bridge} still has ports: {', '.join(ports)}")
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # deleted concurrently: fine
                raise
    firewall.remove(bridge)  # the bridge's nftables tables live and die with it


# --- VPS interfaces ----------------------------------------------------------------------


def attach(
    bridge: str,
    host_if: str,
    netns_pid: int,
    addresses: list[IPInterface],
    gateway4: ipaddress.IPv4Address | None,
    gateway6: ipaddress.IPv6Address | None,
    mtu: int | None = None,
    mac: str | None = None,
    netns: GuestNetns | None = None,
) -> None:
    """Connect the network namespace of process NETNS_PID to BRIDGE (NETNS: handles on that
    namespace, from the process that made it, with its guard and announce defaults set).

    1. Delete HOST_IF if it exists (left over from an earlier run); refuse if it is not
       a veth.
    2. Create the veth pair HOST_IF <-> eth0, with eth0 created directly in the target
       namespace and HOST_IF enslaved to BRIDGE; set HOST_IF up. eth0 gets MAC if given
       (the firewall's guest_mac: the only source address its port lets through).
    3. Seal the port: no IPv6 on HOST_IF; with MAC, learning off and MAC bound to the port.
    4. Inside: the guard on next hops (firewall.GUEST_GUARD), set lo and eth0 up, add
       ADDRESSES (IPv6 with IFA_F_NODAD), and add a default route via each gateway whose
       family has an address.
    On failure HOST_IF (and with it eth0) is deleted and an EngineError is raised.
    """
    validate_ifname(bridge)
    validate_ifname(host_if)
    pid = _pid(netns_pid)
    ifaces = [_interface(a) for a in addresses]
    gw4 = _address(gateway4, 4) if gateway4 is not None else None
    gw6 = _address(gateway6, 6) if gateway6 is not None else None
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise InvalidInput(f"bad MTU {mtu!r}: 68-65535")
    mac = firewall.validate_mac(mac) if mac is not None else None

    if netns is not None:
        if _is_host_netns(netns.fd):
            raise Conflict(f"attach {host_if}: process {pid} is in the host's network namespace")
        _attach(bridge, host_if, netns.fd, pid, ifaces, gw4, gw6, mtu, mac, netns.route)
        return
    try:
        with _netns_fd(pid) as nsfd:
            if _is_host_netns(nsfd):
                raise Conflict(f"attach {host_if}: process {pid} is in the host's network namespace")
            _attach(bridge, host_if, nsfd, pid, ifaces, gw4, gw6, mtu, mac)
    except _ProcessGone as exc:
        raise EngineError(f"attach {host_if}: {exc}") from None


def _attach(bridge, host_if, nsfd, pid, ifaces, gw4, gw6, mtu, mac=None, route=None) -> None:
    # The requests of every start go through rtnl (see there why), the rare ones through pyroute2.
    if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        if os.path.exists(f"/sys/class/net/{bridge}"):
            raise Conflict(f"attach {host_if}: {bridge} is not a bridge")
        raise EngineError(f"attach {host_if}: bridge {bridge} does not exist")
    if os.path.exists(f"/sys/class/net/{host_if}"):
        detach(host_if)  # left over from an earlier run
    made = threading.Event()
    if route is not None:  # a start's: the guard and the announce defaults are in place

        def inside() -> socket.socket:
            return route
    else:
        # The guest's side that needs no eth0 (the guard on next hops) is made in a thread
        # meanwhile: libnftables and the kernel work without the GIL, in parallel with the
        # veth's creation. eth0's own settings wait until it exists.
        inside = _start_netns_socket(nsfd, ANNOUNCE, firewall.guard_here, made)
    joined = False
    try:
        try:
            with _netlink_errors(f"attach {host_if} to {bridge}"), rtnl.Socket() as host:
                master = socket.if_nametoindex(bridge)
                try:
                    host.add_veth(host_if, master, GUEST_IF, nsfd, mtu, peer_mac=mac)
                except rtnl.NetlinkFailure as exc:
                    if exc.errno == errno.EEXIST:
                        raise Conflict(
                            f"attach {host_if}: {host_if} exists on the host or pid {pid} already has an {GUEST_IF}"
                        ) from exc
                    if exc.errno == errno.EXFULL:
                        raise Conflict(
                            f"attach {host_if}: bridge {bridge} has {BRIDGE_MAX_PORTS} ports, the kernel's limit; "
                            "run more servers as a second installation (its own VSERVER_ROOT and VSERVER_BRIDGE)"
                        ) from exc
                    raise
        finally:
            made.set()
        try:
            _seal_port(host_if, mac)
            with _netlink_errors(f"enter the network namespace of pid {pid}"):
                joined = True
                sock = inside()
            _configure_guest(sock, pid, host_if, ifaces, gw4, gw6)
            _rebind_host_neighbours(bridge, host_if, ifaces, mac)
        except BaseException:
            # Deleting the host end deletes eth0 too.
            try:
                detach(host_if)
            except EngineError:
                pass
            raise
    finally:
        if not joined:  # failed on the way: the thread must be done before NSFD closes
            try:
                inside().close()
            except BaseException:  # noqa: BLE001 - the error on the way is the one to report
                pass


def _seal_port(host_if: str, mac: str | None) -> None:
    """Make the new port HOST_IF a bridge port only: no IPv6 on the host end (HOST_END_SYSCTLS),
    and with the VPS's MAC known, that MAC bound to it in the bridge's table (static, sticky)
    and learning off: whatever source addresses the VPS sends, the table holds one entry for
    it, on its own port. Done while eth0 is still down, so no frame has come in yet."""
    with _netlink_errors(f"attach {host_if}: seal the port"):
        for path, value in HOST_END_SYSCTLS:
            try:
                with open(path.format(host_if), "w") as fh:
                    fh.write(value)
            except FileNotFoundError:
                pass  # a host without IPv6: nothing to turn off
        if mac is not None:
            with rtnl.Socket() as host:
                index = socket.if_nametoindex(host_if)
                host.add_static_fdb(index, mac)
                host.set_port_learning(index, False)


def _rebind_host_neighbours(bridge: str, host_if: str, ifaces: list[IPInterface], mac: str | None) -> None:
    """Point the host's neighbour entries for the VPS's addresses on BRIDGE at its MAC (or
    drop them without one). eth0's own announcement does this too, but it is one frame, sent
    the moment eth0 comes up, and an address given back and handed out again kept the old
    server's MAC on the host whenever that frame was lost: the host then sent the new server's
    traffic to a MAC no port has any more, until its entry aged out (three CI runs of four, 15 s
    without an answer). One request per address, and none is made where there was none."""
    with _netlink_errors(f"attach {host_if}: the host's neighbour entries"), rtnl.Socket() as host:
        index = socket.if_nametoindex(bridge)
        for iface in ifaces:
            host.rebind_neighbour(index, iface.ip, mac)


# A VPS announces its addresses when eth0 comes up (gratuitous ARP, unsolicited neighbour
# advertisements): an address freed by one VPS and given to the next would otherwise stay
# bound to the old MAC in the host's and the other VPSs' neighbour tables for up to a minute.
ANNOUNCE = {
    f"/proc/sys/net/ipv4/conf/{GUEST_IF}/arp_notify": "1",
    f"/proc/sys/net/ipv6/conf/{GUEST_IF}/ndisc_notify": "1",
}
# The same as the namespace's defaults, which an interface made there afterwards starts with.
ANNOUNCE_BY_DEFAULT = {
    "/proc/sys/net/ipv4/conf/default/arp_notify": "1",
    "/proc/sys/net/ipv6/conf/default/ndisc_notify": "1",
}


@dataclass(frozen=True)
class GuestNetns:
    """A guest's fresh network namespace, as the process that made it hands it over (a start's
    setup child, launch.py): an fd of it, and a NETLINK_ROUTE socket opened in it (netlink
    sockets stay bound to the namespace they were made in). That process has also written
    ANNOUNCE_BY_DEFAULT there (procfs.write_sysctls) and put the guard on next hops in place
    (firewall.guard_here): attach needs no thread inside the namespace."""

    fd: int
    route: socket.socket


def _configure_guest(sock, pid, host_if, ifaces, gw4, gw6) -> None:
    """On SOCK, a netlink socket in the guest's namespace (closed here): lo up; the addresses
    on eth0, then eth0 up (which announces them and adds their prefix routes); a default route
    per family."""
    with rtnl.Socket(sock) as ns:
        with _netlink_errors(f"attach {host_if}: find {GUEST_IF} in pid {pid}"):
            lo = ns.link_index("lo")
            index = ns.link_index(GUEST_IF)
            if index is None:
                raise EngineError(f"attach {host_if}: {GUEST_IF} did not appear in pid {pid}")
            if lo is not None:
                ns.set_up(lo)
        for iface in ifaces:
            with _netlink_errors(f"attach {host_if}: add {iface} in pid {pid}"):
                try:
                    ns.add_address(index, iface)
                except rtnl.NetlinkFailure as exc:
                    if exc.errno != errno.EEXIST:
                        raise
        with _netlink_errors(f"attach {host_if}: set {GUEST_IF} up in pid {pid}"):
            ns.set_up(index)
        families = {iface.version for iface in ifaces}
        for gw, version in ((gw4, 4), (gw6, 6)):
            if gw is None or version not in families:
                continue
            with _netlink_errors(f"attach {host_if}: default route via {gw} in pid {pid}"):
                ns.add_default_route(gw, index)


def detach(host_if: str, grace: float = 0.0) -> None:
    """Delete the veth HOST_IF if it exists (its peer eth0 goes with it). With GRACE (seconds),
    the guest's processes are gone: the kernel deletes the pair itself when it tears down the
    guest's network namespace, in a work queue, so it is given that long to do so first.

    Waiting costs nothing: on this VM the kernel's teardown took the pair 0-16 ms after a stop
    (median 4 ms), where deleting it ourselves took 18-20 ms, most of it waiting for RCU grace
    periods with the rtnl lock held, which every other start's and stop's netlink requests
    wait for (2026-12-07, this VM). The delete stays the fallback for a namespace
    something else still holds (a shell of the operator's in it, say).

    Through rtnl's plain messages, not pyroute2: a stop finds the veth still there whenever
    the kernel has not yet torn down the guest's network namespace (it does so in a work
    queue after the last process left; on a busy node, every time), and pyroute2's event
    loop and parsing cost a few milliseconds of the worker's CPU per stop."""
    validate_ifname(host_if)
    sysfs = f"/sys/class/net/{host_if}"
    if not os.path.exists(sysfs):
        return  # the usual case on a quiet host: no netlink round trip needed
    with rtnl.Socket(watch_links=grace > 0) as sock, _netlink_errors(f"detach {host_if}"):
        link = sock.link_kind(host_if)
        if link is None:
            return  # the namespace's teardown took it meanwhile
        index, kind = link
        if kind != "veth":
            raise Conflict(f"{host_if} is not a veth ({kind or 'no kind'}); not deleting it")
        if grace > 0 and sock.await_deletion(index, lambda: not os.path.exists(sysfs), grace):
            return
        try:
            sock.delete_link(index)
        except rtnl.NetlinkFailure as exc:
            if exc.errno != errno.ENODEV:  # deleted concurrently: fine
                raise


# --- queries -----------------------------------------------------------------------------


def link_exists(name: str) -> bool:
    validate_ifname(name)
    with _host() as ipr, _netlink_errors(f"look up {name}"):
        return _get_link(ipr, name) is not None


def routed_via(address: str) -> str | None:
    """Name of the interface the host kernel would send ADDRESS out of, None if unroutable.

    Check this names the project's bridge before sending anything to a VPS address: the
    default route leaves the machine.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        addr = ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidInput(f"bad address {address!r}: {exc}") from None
    with _host() as ipr, _netlink_errors(f"route lookup for {addr}"):
        try:
            routes = ipr.route("get", dst=addr.compressed)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL):
                return None
            raise
        oif = routes[0].get("RTA_OIF") if routes else None
        if oif is None:
            return None
        links = ipr.link("get", index=oif)
        return links[0].get("IFLA_IFNAME") if links else None


# A guest with network admin may put any number of addresses on its eth0; status lists what
# the kernel has, but no more than this many (IPv4 first, in the order they were added, so the
# engine's own come first in each family), so a guest cannot make the worker read without end.
STATUS_ADDRESS_LIMIT = 64


def netns_addresses(netns_pid: int) -> list[str]:
    """Addresses with prefix on eth0 in the namespace of NETNS_PID, link-local left out, at
    most STATUS_ADDRESS_LIMIT of them.

    For status: a process that has just exited (or has no eth0) has no addresses.
    """
    pid = _pid(netns_pid)
    try:
        with _netns_fd(pid) as nsfd, _netlink_errors(f"list addresses in pid {pid}"):
            with rtnl.Socket(_netns_socket(nsfd)) as ns:
                eth0 = ns.link_index(GUEST_IF)
                if eth0 is None:
                    return []
                found = ns.addresses(eth0, limit=STATUS_ADDRESS_LIMIT)
                return [str(a.interface) for a in found if a.scope != RT_SCOPE_LINK]
    except _ProcessGone:
        return []


def interface_counters(host_if: str) -> dict[str, int]:
    """Traffic counters of the host end HOST_IF (its rx is what the VPS sent)."""
    validate_ifname(host_if)
    with _host() as ipr, _netlink_errors(f"read counters of {host_if}"):
        link = _get_link(ipr, host_if)
        if link is None:
            raise EngineError(f"interface {host_if} does not exist")
        stats = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
        return {name: int(stats.get(name, 0)) for name in _COUNTERS}
