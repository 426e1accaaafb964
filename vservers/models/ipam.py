"""Address pools and allocations. An address belongs to at most one server: allocation runs
in one transaction that locks the pool row (SQLite: the IMMEDIATE transaction's write lock),
and a unique constraint is the backstop."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Self

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction


class PoolExhausted(Exception):
    """No free address is left in the pool."""


def validate_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValidationError(f"not a network in CIDR form: {exc}") from None


class IPPool(models.Model):
    name = models.CharField(max_length=60, unique=True)
    node = models.ForeignKey("vservers.Node", on_delete=models.PROTECT, related_name="pools")
    network = models.CharField(max_length=50, validators=[validate_network], help_text="e.g. 198.18.0.0/16")
    gateway = models.GenericIPAddressField(help_text="the node's bridge address in this network")
    # Other nodes on the same layer-2 network: they may take addresses from this pool too, and a
    # server migrating between two of them keeps its addresses.
    shared_with = models.ManyToManyField("vservers.Node", blank=True, related_name="shared_pools")

    class Meta:
        ordering = ["name"]
        verbose_name = "IP pool"

    def __str__(self) -> str:
        return f"{self.name} ({self.network})"

    def clean(self) -> None:
        validate_network(self.network)
        try:
            gateway = ipaddress.ip_address(self.gateway)
        except ValueError:
            raise ValidationError({"gateway": "not an IP address"}) from None
        if gateway not in self.ip_network:
            raise ValidationError({"gateway": "the gateway must lie inside the network"})
        if gateway == self.ip_network.network_address:
            raise ValidationError({"gateway": "the gateway cannot be the network's own address"})
        overlapping = [p.name for p in IPPool.objects.exclude(pk=self.pk) if p.ip_network.overlaps(self.ip_network)]
        if overlapping:
            raise ValidationError({"network": f"overlaps pool {overlapping[0]}"})

    @property
    def ip_network(self):
        return ipaddress.ip_network(self.network)

    @property
    def size(self) -> int:
        """How many addresses the pool can hand out, by arithmetic instead of counting (a /15
        has 131070 hosts, an IPv6 /64 more than can be counted): what iter_hosts yields."""
        network = self.ip_network
        gateway = ipaddress.ip_address(self.gateway)
        if network.version == 4:
            reserved = 2 if network.prefixlen < 31 else 0  # network and broadcast address
            hosts = network.num_addresses - reserved
            gateway_is_host = gateway in network and (
                not reserved or gateway not in (network.network_address, network.broadcast_address)
            )
        else:
            reserved = 1 if network.prefixlen < 127 else 0  # the subnet-router anycast address
            hosts = network.num_addresses - reserved
            gateway_is_host = gateway in network and (not reserved or gateway != network.network_address)
        return hosts - (1 if gateway_is_host else 0)

    def iter_hosts(self) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        gateway = ipaddress.ip_address(self.gateway)
        for host in self.ip_network.hosts():
            if host != gateway:
                yield host

    def first_free(self, used: set[str]) -> str | None:
        for host in self.iter_hosts():
            if str(host) not in used:
                return str(host)
        return None

    @classmethod
    def usable_on(cls, node) -> list[Self]:
        """The pools NODE may allocate from: its own first, then those shared with it (each
        in the order they were made)."""
        own = list(cls.objects.filter(node=node).order_by("pk"))
        shared = list(cls.objects.filter(shared_with=node).exclude(node=node).order_by("pk"))
        return own + shared

    @classmethod
    def allocate_on(cls, node, server) -> IPAddress:
        """The lowest free address of the first pool NODE may use that has one: its own pools
        first, then those shared with it (PoolExhausted says why there is none)."""
        pools = cls.usable_on(node) if node is not None else []
        if not pools:
            raise PoolExhausted(f"node {node} has no address pool")
        for pool in pools:
            try:
                return pool.allocate(server)
            except PoolExhausted:
                continue
        where = f"pool {pools[0].name}" if len(pools) == 1 else f"the pools of node {node}"
        raise PoolExhausted(f"no free address left in {where}")

    def allocate(self, server) -> IPAddress:
        """Give SERVER the lowest free address of this pool (race-free)."""
        for _attempt in range(5):
            try:
                with transaction.atomic():
                    IPPool.objects.select_for_update().filter(pk=self.pk).first()  # the pool lock
                    used = set(self.addresses.values_list("address", flat=True))
                    free = self.first_free(used)
                    if free is None:
                        raise PoolExhausted(f"no free address left in pool {self.name}")
                    return IPAddress.objects.create(pool=self, address=free, server=server)
            except IntegrityError:
                continue  # another allocator won this address: look again
        raise PoolExhausted(f"could not allocate an address in pool {self.name}")

    @property
    def prefixlen(self) -> int:
        return self.ip_network.prefixlen


class IPAddress(models.Model):
    pool = models.ForeignKey(IPPool, on_delete=models.PROTECT, related_name="addresses")
    address = models.GenericIPAddressField(unique=True)
    server = models.ForeignKey(
        "vservers.VirtualServer", null=True, blank=True, on_delete=models.SET_NULL, related_name="addresses"
    )
    allocated = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pool", "address"]
        verbose_name = "IP address"
        verbose_name_plural = "IP addresses"  # Django would add an "s": "IP addresss"

    def __str__(self) -> str:
        return self.address

    @property
    def with_prefix(self) -> str:
        return f"{self.address}/{self.pool.prefixlen}"
