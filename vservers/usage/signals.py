"""What the sampler tells the rest of the panel.

`node_sampled` is sent at the end of each sampling pass of a node, with kwargs `node` (the
Node) and `at` (an aware datetime, the pass's sample time), after its samples are committed:
a receiver reads them with vservers.usage.queries.recent. It is sent with send_robust: a
receiver that raises is logged and does not fail the sampling.
"""

from __future__ import annotations

from django.dispatch import Signal

node_sampled = Signal()
