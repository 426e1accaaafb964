"""The sampler tells the alerts: after each pass of a node, its rules are judged."""

from __future__ import annotations

import logging
from datetime import datetime

from .evaluate import evaluate

log = logging.getLogger(__name__)


def node_sampled(sender, node, at: datetime, **kwargs) -> None:
    """The receiver of vservers.usage.signals.node_sampled: judge NODE's rules at the pass's
    sample time AT. The signal is sent with send_robust: an error here is logged by the
    sampler and fails nothing of the sampling."""
    counts = evaluate(node, at)
    if counts["started"] or counts["ended"]:
        log.info("alerts of node %s: %s", node.name, ", ".join(f"{v} {k}" for k, v in counts.items()))
