"""Which address a request comes from, for the login throttle and the audit log.

gunicorn listens on 127.0.0.1 only, so REMOTE_ADDR is either a local client (the operator's
browser on this host, an SSH tunnel) or a reverse proxy on this host. X-Forwarded-For is a
header like any other: whoever sends the request can write anything into it. It is therefore
read only when REMOTE_ADDR is one of the proxies named in PANEL_TRUSTED_PROXIES (empty by
default), and then from the right: each trusted proxy appends the address it received the
request from, so the right-most entry that is not itself a trusted proxy is the client. What
a client wrote into the header itself stands further left and is never looked at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# How much of an IPv6 address one client is assumed to control: a /64 is what a single host
# or home line usually gets, so counting per address would give an attacker 2^64 tries.
IPV6_CLIENT_PREFIX = 64


def parse_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks ("127.0.0.1", "10.0.0.0/8", "::1") of trusted proxies."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"PANEL_TRUSTED_PROXIES must list IP addresses or networks, not {value!r}"
            ) from None
    return tuple(networks)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:203.0.113.5 is 203.0.113.5
    return address


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_ip(request) -> str | None:
    """The client's address as text, or None when REMOTE_ADDR is missing or malformed."""
    proxies = parse_proxies(getattr(settings, "PANEL_TRUSTED_PROXIES", ()))
    address = _address(request.META.get("REMOTE_ADDR"))
    if address is None or not _trusted(address, proxies):
        return str(address) if address is not None else None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for hop in reversed(forwarded.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            # Unreadable: the trusted proxy to its right did not write this. Stop at that
            # proxy rather than guess, so garbage cannot make up a fresh address.
            break
        address = hop_address
        if not _trusted(address, proxies):
            break
    return str(address)


def throttle_key(ip: str | None) -> str:
    """What the per-address login throttle counts under: the address itself for IPv4, its
    /64 network for IPv6, "unknown" without an address (all such requests share one count)."""
    address = _address(ip)
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)
