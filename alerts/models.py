"""The thresholds a tenant sets per server, and the episodes they found.

An episode is one stretch of time in which a rule's condition held: it starts when the
condition holds (for the rule's duration), gets the one mail, and ends when the condition has
cleared (below the threshold by HYSTERESIS points, or the server seen running again). At most
one episode per rule is open: a unique constraint backs the evaluation's own check, so two
evaluations at once (two workers of a node) mail once."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

# A percentage rule's episode ends only once the value is this many points below the
# threshold: a value hovering at the threshold would otherwise start an episode (and mail)
# every few samples.
HYSTERESIS = 5


class Kind(models.TextChoices):
    DISK = "disk", "Disk"
    MEMORY = "memory", "Memory"
    UNREACHABLE = "unreachable", "Unreachable"


# What the page offers before the tenant saved anything (nothing is on until then):
# (threshold in percent or None, minutes or None).
DEFAULTS: dict[str, tuple[int | None, int | None]] = {
    Kind.DISK: (90, None),
    Kind.MEMORY: (95, 5),
    Kind.UNREACHABLE: (None, 5),
}
USES_THRESHOLD = {Kind.DISK, Kind.MEMORY}
USES_MINUTES = {Kind.MEMORY, Kind.UNREACHABLE}


class AlertRule(models.Model):
    """One kind of alert for one server. THRESHOLD is a percentage (disk: of the plan's disk,
    memory: of the plan's memory), MINUTES how long the condition must hold (memory,
    unreachable). PENDING_SINCE is the evaluation's own state: since when the condition has
    held without an episode yet (memory: the time of the first sample above; unreachable: the
    first pass that found the server down)."""

    server = models.ForeignKey("vservers.VirtualServer", on_delete=models.CASCADE, related_name="alert_rules")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    threshold = models.PositiveSmallIntegerField(null=True, blank=True)
    minutes = models.PositiveSmallIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=False)
    pending_since = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["server", "kind"]
        constraints = [models.UniqueConstraint(fields=["server", "kind"], name="one_alert_rule_per_server_and_kind")]

    def __str__(self) -> str:
        return f"{self.server}: {self.describe()}"

    def describe(self) -> str:
        """The rule in words, as the page and the audit log say it."""
        if self.kind == Kind.DISK:
            return f"disk at or above {self.threshold} %"
        if self.kind == Kind.MEMORY:
            return f"memory at or above {self.threshold} % for {self.minutes} min"
        return f"unreachable for {self.minutes} min"

    def clears_below(self) -> float:
        """The value under which a percentage rule's episode ends: HYSTERESIS points below the
        threshold, or half of it for thresholds under 10 %."""
        threshold = float(self.threshold or 0)
        return threshold - min(HYSTERESIS, threshold / 2)

    def end_episode(self, now=None) -> int:
        """End the open episode, if any (the rule was switched off or its server is gone)."""
        return self.episodes.filter(ended__isnull=True).update(ended=now or timezone.now())


class AlertEpisode(models.Model):
    """A stretch of time in which RULE's condition held. VALUE: what was measured when it
    started (percent; minutes for unreachable). MAILS: how many mails went into the outbox
    (0 when every admin opted out)."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="episodes")
    started = models.DateTimeField()
    ended = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    mails = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-started", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"], condition=models.Q(ended__isnull=True), name="one_open_episode_per_rule"
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule} from {self.started:%Y-%m-%d %H:%M}" + (f" to {self.ended:%H:%M}" if self.ended else "")


def rules_of(server) -> dict[str, AlertRule]:
    return {rule.kind: rule for rule in AlertRule.objects.filter(server=server)}


def save_rules(server, wanted: dict[str, dict]) -> dict[str, dict]:
    """Make SERVER's rules what WANTED says (kind -> enabled, threshold, minutes); returns
    what changed, kind -> {field: [before, after]}, for the audit log. A rule switched off
    ends its open episode; a changed rule counts its duration again from the next sample.
    Call it in a transaction."""
    changes: dict[str, dict] = {}
    existing = rules_of(server)
    for kind, fields in wanted.items():
        rule = existing.get(kind)
        before = {"enabled": False, "threshold": None, "minutes": None} if rule is None else {
            "enabled": rule.enabled, "threshold": rule.threshold, "minutes": rule.minutes}
        diff = {name: [before[name], value] for name, value in fields.items() if before[name] != value}
        if not diff:
            continue
        changes[kind] = diff
        if rule is None:
            rule = AlertRule(server=server, kind=kind)
        for name, value in fields.items():
            setattr(rule, name, value)
        rule.pending_since = None
        rule.save()
        if not rule.enabled:
            rule.end_episode()
    return changes
