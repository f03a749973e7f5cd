"""Whether a serving node is healthy: it holds the network role and its loop runs.

One answer for ``/healthz`` and for the systemd watchdog, so a supervisor and a load
balancer never disagree about the same node.
"""

from __future__ import annotations

from crdtstore.node import Node

LOOP_STALL_S = 10.0
"""A replicator loop that has not gone round for this long is stuck. It goes round at
least every ``heartbeat_interval_ms`` when idle (its membership tick); the longest
legitimate pause is one large apply (a 300,000-entry bootstrap range applies in about
2 s on a loaded 2-core machine)."""


def health(node: Node | None) -> str | None:
    """Why the node is not healthy, or None when it holds the role and its loop runs."""
    if node is None:
        return "starting"
    age = node.network_loop_age_s()
    if age is None:
        return "not holding the network role"
    if age > LOOP_STALL_S:
        return f"replicator loop stalled for {age:.1f}s"
    return None
