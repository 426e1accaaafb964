"""Joining a node: the operator's one-time token, the panel's side of the exchange, and the
node's credentials.

1. The operator adds a node in the panel (name, SSH address, its VSERVER_ROOT) and is shown a
   join token once (new_token): 32 random bytes; only its SHA-256 is stored (a token that
   strong needs no slow hash), with the time it expires (PANEL_JOIN_TOKEN_SECONDS). A new
   token replaces the hash, which voids the old one.
2. On the new host, `manage.py node join URL TOKEN` (vservers.management.commands.node) sends
   the token with what the host has (CPUs, memory, disk, its sshd's host key, its migration
   key) to api/nodes_join.py, which calls accept(): the token is the only credential.
3. accept() checks the token under a row lock, records what the node sent, makes the node's
   database credentials (a PostgreSQL role of its own, vservers.nodes.credentials) and its
   Redis user (vservers.nodes.redis_acl: its own queue only), and answers with the node's
   name, queue, REDIS_URL and DATABASE_URL; joining again renews both passwords. The hash
   stays, marked used (no expiry, joined_at set), so a second use is told "used", not
   "unknown".
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from ..engine import validate
from ..engine.errors import InvalidInput
from ..models import Node
from . import credentials, redis_acl
from .queues import queue_for

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
# Bounds on what a joining node may report (a typo or a lie must not make capacity absurd).
MAX_CPUS = 4096
MAX_MB = 2**40


class JoinRefused(Exception):
    """The join cannot go on; the message is a sentence for the person running the command."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def new_token(node: Node) -> str:
    """A new join token for NODE (shown once; voids any earlier one)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    while token.startswith("-"):  # 1 in 64: argparse would read it as an option on `node join URL TOKEN`
        token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = timezone.now() + timedelta(seconds=settings.PANEL_JOIN_TOKEN_SECONDS)
    Node.objects.filter(pk=node.pk).update(join_token_hash=token_hash(token), join_token_expires=expires)
    node.join_token_hash, node.join_token_expires = token_hash(token), expires
    return token


def add_node(name: str, ssh_address: str, vserver_root: str) -> tuple[Node, str]:
    """A node made in the panel, with its queue "node-<name>", and its first join token."""
    node = Node.objects.create(name=name, queue_name=queue_for(name), ssh_address=ssh_address,
                               vserver_root=vserver_root)
    return node, new_token(node)


@dataclass(frozen=True)
class Offer:
    """What a joining host sends (the JSON body of the join request)."""

    token: str
    cpus: int
    memory_mb: int
    disk_mb: int
    ssh_host_key: str
    ssh_public_key: str
    ssh_address: str = ""  # empty: the one the operator entered
    vserver_root: str = ""  # empty: the one the operator entered


@dataclass(frozen=True)
class Joined:
    """What the panel answers: everything the node's env file needs."""

    name: str
    queue: str
    vserver_root: str
    redis_url: str
    database_url: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "queue": self.queue, "vserver_root": self.vserver_root,
                "redis_url": self.redis_url, "database_url": self.database_url}


def _checked(offer: Offer) -> Offer:
    try:
        validate.ssh_public_key(offer.ssh_public_key)
    except InvalidInput as exc:
        raise JoinRefused(f"The node's migration key is not a public key: {exc}.") from None
    try:
        validate.ssh_public_key(offer.ssh_host_key)
    except InvalidInput as exc:
        raise JoinRefused(f"The node's SSH host key is not a public key: {exc}.") from None
    if not (1 <= offer.cpus <= MAX_CPUS and 1 <= offer.memory_mb <= MAX_MB and 1 <= offer.disk_mb <= MAX_MB):
        raise JoinRefused("The node's CPUs, memory and disk must be positive numbers.")
    if offer.vserver_root and not offer.vserver_root.startswith("/"):
        raise JoinRefused("The node's VSERVER_ROOT must be an absolute path.")
    return offer


def accept(offer: Offer) -> Joined:
    """The panel's side of the join (see the module's docstring). JoinRefused with a sentence
    for a token that is unknown, used or expired, or an offer that does not hold."""
    offer = _checked(offer)
    digest = token_hash(offer.token)
    now = timezone.now()
    with transaction.atomic():
        # Row lock: two joins with one token (a double run) cannot both pass.
        node = Node.objects.select_for_update().filter(join_token_hash=digest).first()
        if node is None:
            raise JoinRefused("This join token is not known to the panel: it was replaced by a newer one, or "
                              "mistyped. Ask the operator for a new token (Nodes: the node's New join token).")
        if node.join_token_expires is None:
            raise JoinRefused(f"This join token was used already: node {node.name} joined with it at "
                              f"{node.joined_at:%Y-%m-%d %H:%M} UTC. A node joins again with a new token.")
        if node.join_token_expires < now:
            raise JoinRefused(f"This join token expired at {node.join_token_expires:%Y-%m-%d %H:%M} UTC. "
                              "Ask the operator for a new one (Nodes: the node's New join token).")
        node.cpus, node.memory_mb, node.disk_mb = offer.cpus, offer.memory_mb, offer.disk_mb
        node.ssh_host_key = offer.ssh_host_key.strip()
        node.ssh_public_key = offer.ssh_public_key.strip()
        if offer.ssh_address:
            node.ssh_address = offer.ssh_address
        if offer.vserver_root:
            node.vserver_root = offer.vserver_root
        node.join_token_expires = None  # used: the hash stays, to say so to a second use
        node.joined_at = now
        database_url = credentials.grant(node)
        try:
            redis_url = redis_acl.grant(node)
        except (RedisError, ValueError) as exc:
            log.error("node %s: could not make its Redis user: %s", node.name, exc)
            raise JoinRefused(f"The panel could not make the node's Redis user ({exc}). The panel's Redis must "
                              "be Redis 7 and REDIS_URL's user allowed ACL SETUSER; see docs/cluster.md.") from None
        node.save()
    return Joined(name=node.name, queue=node.queue_name, vserver_root=node.vserver_root,
                  redis_url=redis_url, database_url=database_url)
