"""What is inside a server, as the worker last read it through the engine."""

from __future__ import annotations

from django.db import models


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


class Service(models.Model):
    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="services")
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=20)
    pid = models.PositiveIntegerField(null=True, blank=True)
    seconds = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["server", "name"], name="unique_guest_service")]

    def __str__(self) -> str:
        return self.name
