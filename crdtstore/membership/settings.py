"""Membership's settings: the failure detector's and the member records' timers, named.

Invariant: membership reads no timing literal from anywhere else; every field has a
default suited to a LAN cluster and says what it bounds. Validated (positive ints) by
``crdtstore.settings.NodeSettings``, which holds one of these as ``membership``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """Heartbeats, suspicion, greeting seeds, pruning and the directory's member view."""

    heartbeat_interval_ms: int = 500
    """How often a node publishes a heartbeat and the failure detector ticks."""

    suspect_after_ms: int = 2_000
    """Silence after which a member is suspected. Lifeguard-style: stretched while this
    node itself is falling behind, so an overloaded node does not accuse healthy ones."""

    dead_after_ms: int = 6_000
    """How long a member stays suspect without refuting before it is declared dead (so
    a silent member is dead after ``suspect_after_ms + dead_after_ms``, both stretched by
    Lifeguard's local health while this node itself runs late)."""

    hello_interval_ms: int = 1_000
    """How often a node with no known peer greets its seeds again."""

    prune_after_ms: int = 24 * 3600 * 1000
    """A member that left, or has been dead this long, is removed from the member set."""

    member_view_interval_ms: int = 1_000
    """The role holder writes its failure detector's view into the directory (for every
    process sharing it: ``members()``, ``watch_members()``, tooz) at once on each status
    change, and at least this often otherwise (last-heard times, and a stamp that tells
    readers the view is current; one older than three intervals reads as stale)."""

    overlay: bool = True
    """Membership over a partial-view overlay (HyParView neighbours, probing, gossip;
    :mod:`crdtstore.membership.protocol`) instead of every node connecting to, and
    hearing the heartbeats of, every other (the full mesh, ``overlay = false``):
    connections and idle cost per node stay flat as the cluster grows, and deltas reach
    non-neighbours relayed by neighbours. Every node of a cluster uses the same mode: a
    node refuses a peer of the other mode (see :mod:`crdtstore.membership.versions`)."""
