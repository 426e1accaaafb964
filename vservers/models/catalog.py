"""What servers are made of and where they run: plans, templates and nodes."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class Plan(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=60, unique=True)
    cpus = models.DecimalField(max_digits=5, decimal_places=2, help_text="share of cores, e.g. 0.5")
    memory_mb = models.PositiveIntegerField()
    disk_mb = models.PositiveIntegerField()
    pids = models.PositiveIntegerField(default=256)
    io_weight = models.PositiveIntegerField(
        default=100, help_text="share of disk time against other servers, 1-10000 (100 is even)")
    io_read_mbps = models.PositiveIntegerField(null=True, blank=True, help_text="MB/s read; empty: no limit")
    io_write_mbps = models.PositiveIntegerField(null=True, blank=True, help_text="MB/s written; empty: no limit")
    io_read_iops = models.PositiveIntegerField(null=True, blank=True, help_text="reads per second; empty: no limit")
    io_write_iops = models.PositiveIntegerField(null=True, blank=True, help_text="writes per second; empty: no limit")
    network_admin = models.BooleanField(
        default=False,
        help_text="root inside may change its own addresses, routes and firewall (CAP_NET_ADMIN); "
        "off keeps the network as the panel set it. Applies at the next start.")
    snapshots_max = models.PositiveIntegerField(
        default=3, validators=[MaxValueValidator(50)],
        help_text="snapshots a server keeps at most (0: none); their space counts against the tenant's disk")
    backups_kept = models.PositiveIntegerField(
        default=7, validators=[MaxValueValidator(365)],
        help_text="scheduled backups kept per server; older ones are pruned (0: no scheduled backups)")
    is_active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["memory_mb", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.cpus} CPU, {self.memory_mb} MB, {self.disk_mb} MB disk)"


class Template(models.Model):
    """Mirrors an engine template by name; the engine pins the version at create time."""

    name = models.SlugField(max_length=32, unique=True)
    display_name = models.CharField(max_length=60)
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name or self.name


def _ratio(default: str, what: str) -> models.DecimalField:
    return models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal(default),
        validators=[MinValueValidator(Decimal("0.1")), MaxValueValidator(Decimal("100"))],
        help_text=f"how far the plans of its servers may add up beyond its {what}, e.g. 2 for twice "
        "(1: no overcommit); approvals warn beyond it",
    )


class Node(models.Model):
    """A host with its own worker, reached through its own RQ queue.

    The overcommit ratios are the node's own (as in Proxmox and Virtualizor), not one
    setting for all: nodes differ in hardware and in what their servers do. CPU time is
    shared fairly by the cgroups, so CPUs overcommit well (4 by default); memory and disk
    are hard limits the node must really have (1: none)."""

    name = models.SlugField(max_length=40, unique=True)
    queue_name = models.CharField(max_length=60, unique=True, default="default")
    is_active = models.BooleanField(default=True)
    cpus = models.PositiveIntegerField(default=2)
    memory_mb = models.PositiveIntegerField(default=4096)
    disk_mb = models.PositiveIntegerField(default=65536)
    cpu_ratio = _ratio("4.0", "CPUs")
    memory_ratio = _ratio("1.0", "memory")
    disk_ratio = _ratio("1.0", "disk")
    last_seen = models.DateTimeField(null=True, blank=True)  # the worker's last heartbeat
    # No new servers are placed here; the ones it has stay (evacuate moves them off).
    draining = models.BooleanField(default=False)
    # Joining (manage.py node join URL TOKEN): the hash of the one-time token the operator was
    # shown, until when it may be used, and when the node used it.
    join_token_hash = models.CharField(max_length=128, blank=True)
    join_token_expires = models.DateTimeField(null=True, blank=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    # Where the other nodes ship a migrating server: this node's sshd ("host" or "host:port"),
    # its host key (their known_hosts line), the state root its incoming/ lies under, and the
    # public key this node itself ships with (the others authorize it, limited to their
    # incoming/ directory).
    ssh_address = models.CharField(max_length=200, blank=True)
    ssh_host_key = models.TextField(blank=True)
    ssh_public_key = models.TextField(blank=True)
    vserver_root = models.CharField(max_length=200, default="/var/lib/vservers")
    # The node's own database role, when the database is PostgreSQL (empty: none made).
    db_role = models.CharField(max_length=63, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_online(self) -> bool:
        """Whether its worker's heartbeat is recent (PANEL_NODE_TIMEOUT_SECONDS). A node that
        is not is "unreachable", and what it holds is unknown, never "stopped"."""
        if self.last_seen is None:
            return False
        age = (timezone.now() - self.last_seen).total_seconds()
        return age <= settings.PANEL_NODE_TIMEOUT_SECONDS

    @property
    def accepts_servers(self) -> bool:
        """Whether placement may put a new server here (online is checked apart)."""
        return self.is_active and not self.draining
