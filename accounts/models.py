"""Tenants (customers), their members, the audit log, and what the login throttle and the
session check keep (failed sign-ins, each user's session epoch)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Tenant(models.Model):
    """A customer. Quotas bound what its servers may add up to."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=40, unique=True)
    contact_email = models.EmailField(blank=True)
    max_servers = models.PositiveIntegerField(default=5)
    max_cpus = models.DecimalField(max_digits=6, decimal_places=2, default=4)
    max_memory_mb = models.PositiveIntegerField(default=4096)
    max_disk_mb = models.PositiveIntegerField(default=20480)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's place in a tenant. A user belongs to at most one tenant; operators are staff
    users and need none."""

    ADMIN = "admin"
    READONLY = "readonly"
    ROLES = [(ADMIN, "Tenant admin"), (READONLY, "Read-only")]

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=ROLES, default=ADMIN)

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"

    @property
    def can_act(self) -> bool:
        return self.role == self.ADMIN


class AuditEntry(models.Model):
    """Who did what to which object, when, from where."""

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.object_repr}"

    @classmethod
    def record(cls, request, action: str, obj=None, tenant=None, *, actor=None, **details) -> AuditEntry:
        """An entry by ACTOR, or else by the request's user; its address is the request's
        client (accounts.addresses: REMOTE_ADDR unless a trusted proxy forwarded it)."""
        from .addresses import client_ip

        # request.user comes wrapped in a SimpleLazyObject (sign-out, password change): the
        # entry names what it wraps, the user's model and name, never "SimpleLazyObject".
        # A lazy object answers __class__ with the wrapped object's class (type() does not).
        kind = obj.__class__.__name__ if obj is not None else ""
        if actor is None and request is not None:
            user = getattr(request, "user", None)
            actor = user if user is not None and user.is_authenticated else None
        return cls.objects.create(
            actor=actor,
            tenant=tenant if tenant is not None else getattr(obj, "tenant", None),
            action=action,
            object_type=kind,
            object_id=str(getattr(obj, "uuid", getattr(obj, "pk", "")) or "") if obj is not None else "",
            object_repr=str(obj)[:200] if obj is not None else "",
            remote_addr=client_ip(request) if request is not None else None,
            details=details,
        )


class LoginFailure(models.Model):
    """One failed sign-in, for the throttle (accounts.throttle): counted per known device, per
    user name and address, per user name and per address over a sliding window, and deleted
    once older than that window."""

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # The name as typed, lower-cased (it need not exist: unknown names are counted the same).
    username = models.CharField(max_length=150)
    # accounts.addresses.throttle_key: an IPv4 address or an IPv6 /64.
    address = models.CharField(max_length=64)
    # The user signed in since: no longer counted for the name, still for the address.
    user_cleared = models.BooleanField(default=False)
    # The known-device id (accounts.devices) the failure was made with, if any.
    device = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["username", "created"]),
            models.Index(fields=["address", "created"]),
        ]

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.username} from {self.address}"


class SessionEpoch(models.Model):
    """A user's session epoch (accounts.sessions): every session remembers the epoch it was
    opened in, and counts only while the user's epoch is still the same. Signing out anywhere
    or disabling the account moves the epoch on, which ends all of the user's sessions."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="session_epoch"
    )
    epoch = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.user} epoch {self.epoch}"


class PasswordResetRequest(models.Model):
    """One password reset asked for, for its throttle (accounts.views.PasswordResetView):
    counted per client address and per e-mail address, deleted once older than the window."""

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # accounts.addresses.throttle_key of the client.
    address = models.CharField(max_length=64)
    # The e-mail address as typed, lower-cased (it need not belong to an account).
    email = models.CharField(max_length=254)

    class Meta:
        indexes = [
            models.Index(fields=["address", "created"]),
            models.Index(fields=["email", "created"]),
        ]

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.email} from {self.address}"
