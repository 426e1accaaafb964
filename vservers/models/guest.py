"""What is inside a server, as the worker last read it through the engine.

This is where data from inside a guest enters the panel (store_listing): the guest's root
writes /etc/passwd and the service directories as he likes, so only what the engine's own
validators accept becomes a row; the rest is counted, and shown to operators escaped."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TypeVar

from django.db import models, transaction
from django.utils import timezone

from vservers.engine import validate
from vservers.engine.errors import InvalidInput

# The most rows of one kind the panel keeps for a server: a guest can list any number.
MAX_ROWS = 200
# Refused names an operator sees: the first few, each as ascii() of its first SAMPLE_CHARS.
MAX_SAMPLES = 10
SAMPLE_CHARS = 40
# What an integer column holds everywhere (PostgreSQL's integer); a guest's runsv status file
# can claim any pid and start time.
_INT_MAX = 2**31 - 1


def guest_text(value: str, limit: int) -> str:
    """VALUE, text from a guest (a home directory, a shell), fit for a column and a page:
    escaped with ascii() when it holds control or undecodable characters (a NUL or a lone
    surrogate cannot even be stored), and cut to LIMIT."""
    return (value if value.isprintable() else ascii(value))[:limit]


def _small(number: int | None) -> int | None:
    return number if number is not None and 0 <= number <= _INT_MAX else None


class GuestAccount(models.Model):
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="guest_accounts")
    name = models.CharField(max_length=32)
    uid = models.PositiveIntegerField()
    home = models.CharField(max_length=200)
    shell = models.CharField(max_length=200)
    is_system = models.BooleanField(default=False)

    class Meta:
        ordering = ["uid"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="unique_guest_account")]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def fits(account) -> bool:
        """Whether the engine's Account may be a row: a name the engine acts on, a uid the
        column holds."""
        try:
            validate.user_name(account.name, allow_reserved=True)
        except InvalidInput:
            return False
        return account.uid <= _INT_MAX

    @classmethod
    def from_guest(cls, server, account) -> GuestAccount:
        return cls(server=server, name=account.name, uid=account.uid, home=guest_text(account.home, 200),
                   shell=guest_text(account.shell, 200), is_system=account.is_system)


class Service(models.Model):
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="services")
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=20)
    pid = models.PositiveIntegerField(null=True, blank=True)
    seconds = models.PositiveIntegerField(null=True, blank=True)  # in its state, when read
    # When it entered its state: the read's time less `seconds`. Pages and the API count from
    # here; `seconds` alone stays what it was at the read ("up for 0 s" minutes after a start,
    # when the services were last read right after it).
    since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="unique_guest_service")]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def fits(service) -> bool:
        try:
            validate.service_name(service.name)
        except InvalidInput:
            return False
        return True

    @property
    def seconds_now(self) -> int | None:
        """How long it has been in its state, now."""
        if self.since is None:
            return self.seconds
        return max(0, int((timezone.now() - self.since).total_seconds()))

    @classmethod
    def from_guest(cls, server, service) -> Service:
        seconds = _small(service.seconds)
        since = timezone.now() - timedelta(seconds=seconds) if seconds is not None else None
        return cls(server=server, name=service.name, state=service.state[:20], pid=_small(service.pid),
                   seconds=seconds, since=since)


class UnlistedEntries(models.Model):
    """Entries of a server's accounts or services that the worker read but did not store as
    rows (see store_listing); none when everything was stored."""

    class Kind(models.TextChoices):
        ACCOUNTS = "accounts", "accounts"
        SERVICES = "services", "services"

    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="unlisted_entries")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # Names the engine's validator refuses ("/", "..", control characters, too long, not UTF-8)
    # and accounts whose uid no integer column holds.
    refused = models.PositiveIntegerField(default=0)
    # Acceptable entries past MAX_ROWS.
    beyond = models.PositiveIntegerField(default=0)
    # For operators: sample() of the first MAX_SAMPLES refused names; nothing of the guest's raw.
    samples = models.JSONField(default=list)

    class Meta:
        ordering = ["kind"]
        verbose_name_plural = "unlisted entries"
        constraints = [models.UniqueConstraint(fields=["server", "kind"], name="unique_unlisted_kind")]

    def __str__(self) -> str:
        return f"{self.refused + self.beyond} {self.kind} not listed"

    @property
    def noun(self) -> str:
        return "account" if self.kind == self.Kind.ACCOUNTS else "service"

    @property
    def limit(self) -> int:
        return MAX_ROWS


def sample(name: str) -> str:
    """NAME as an operator may see it: printable ASCII, short, with its length if cut."""
    shown = ascii(name[:SAMPLE_CHARS])
    return f"{shown} (the first {SAMPLE_CHARS} of {len(name)} characters)" if len(name) > SAMPLE_CHARS else shown


_KINDS: dict[type[models.Model], str] = {
    GuestAccount: UnlistedEntries.Kind.ACCOUNTS,
    Service: UnlistedEntries.Kind.SERVICES,
}
Row = TypeVar("Row", GuestAccount, Service)


def store_listing(server, model: type[Row], entries: Iterable) -> list:
    """Replace SERVER's rows of MODEL (GuestAccount or Service) with ENTRIES, the engine's
    Account or Service objects as read from its guest, and return those stored.

    An entry becomes a row only if MODEL.fits() accepts it (the engine acts on no other name,
    and a name with "/" or a newline would break the pages that link to it) and it is among
    the first MAX_ROWS of them; the others are counted in one UnlistedEntries row."""
    kind = _KINDS[model]
    kept: list = []
    samples: list[str] = []
    refused = beyond = 0
    for entry in entries:
        if not model.fits(entry):
            refused += 1
            if len(samples) < MAX_SAMPLES:
                samples.append(sample(entry.name))
        elif len(kept) < MAX_ROWS:
            kept.append(entry)
        else:
            beyond += 1
    with transaction.atomic():
        model.objects.filter(server=server).delete()
        model.objects.bulk_create(model.from_guest(server, entry) for entry in kept)
        UnlistedEntries.objects.filter(server=server, kind=kind).delete()
        if refused or beyond:
            UnlistedEntries.objects.create(server=server, kind=kind, refused=refused, beyond=beyond, samples=samples)
    return kept
