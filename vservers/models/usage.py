"""Usage history, packed like RRD's archives (the layout: vservers.usage.archive).

Three archives, one row per series per period; a series is a server's, or its node's total
(server empty). `start` is the period's first second (epoch, UTC):

 - UsageRaw: a 5-minute bucket's samples (kept 24 h);
 - UsageFiveMin: a day's 288 five-minute points (kept 30 days);
 - UsageDaily: a month's daily points (kept a year).

`rolled` says the row's content is in the next archive: the sampler rolls up a raw bucket
once it is closed, the prune job a day once it is over (and any bucket the sampler missed);
writing a slot of a rollup row clears its `rolled`, so a late bucket reaches the daily one.
"""

from __future__ import annotations

from django.db import models


class UsageRow(models.Model):
    node = models.ForeignKey("vservers.Node", on_delete=models.CASCADE, related_name="+")
    server = models.ForeignKey("vservers.VirtualServer", null=True, blank=True, on_delete=models.CASCADE,
                               related_name="+")
    start = models.BigIntegerField()
    data = models.BinaryField()
    rolled = models.BooleanField(default=False)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{type(self).__name__} {self.server_id or f'node {self.node_id}'} @{self.start}"


def _constraints(name: str) -> list[models.BaseConstraint]:
    """One row per series and period: a server's, or its node's total (no server)."""
    return [
        models.UniqueConstraint(fields=["server", "start"], condition=models.Q(server__isnull=False),
                                name=f"{name}_one_per_server"),
        models.UniqueConstraint(fields=["node", "start"], condition=models.Q(server__isnull=True),
                                name=f"{name}_one_per_node"),
    ]


def _indexes(name: str) -> list[models.Index]:
    """What pruning (oldest first) and rolling up (rows not rolled yet) look rows up by."""
    return [
        models.Index(fields=["start"], name=f"{name}_start"),
        models.Index(fields=["start"], condition=models.Q(rolled=False), name=f"{name}_unrolled"),
    ]


class UsageRaw(UsageRow):
    class Meta:
        constraints = _constraints("usage_raw")
        indexes = _indexes("usage_raw")


class UsageFiveMin(UsageRow):
    class Meta:
        constraints = _constraints("usage_5min")
        indexes = _indexes("usage_5min")


class UsageDaily(UsageRow):
    class Meta:
        constraints = _constraints("usage_daily")
        indexes = _indexes("usage_daily")
