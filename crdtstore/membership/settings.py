"""Membership's settings: the protocol's and the member records' timers, named.

Invariant: membership reads no timing literal from anywhere else; every field has a
default suited to a LAN cluster and says what it bounds. Validated (positive ints) by
``crdtstore.settings.NodeSettings``, which holds one of these as ``membership``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """Probing, suspicion, joining through seeds, pruning and the directory's member view."""

    heartbeat_interval_ms: int = 500
    """How often a node probes a member (SWIM's protocol period) and refreshes what the
    member records tell the protocol. (The name is the setting's since v0.1.0.)"""

    suspect_after_ms: int = 2_000
    """Silence after which a member is suspected. Lifeguard-style: stretched while this
    node itself is falling behind, so an overloaded node does not accuse healthy ones."""

    dead_after_ms: int = 6_000
    """How long a member stays suspect without refuting before it is declared dead (so
    a silent member is dead after ``suspect_after_ms + dead_after_ms``, both stretched by
    Lifeguard's local health while this node itself runs late)."""

    hello_interval_ms: int = 1_000
    """How often a node with no neighbour asks its seeds to join again."""

    prune_after_ms: int = 24 * 3600 * 1000
    """A member that left, or has been dead this long, is removed from the member set."""

    member_view_interval_ms: int = 1_000
    """The role holder writes its failure detector's view into the directory (for every
    process sharing it: ``members()``, ``watch_members()``, tooz) at once on each status
    change, and at least this often otherwise (last-heard times, and a stamp that tells
    readers the view is current; one older than three intervals reads as stale)."""

    overlay: bool = True
    """Kept so that configurations written for v0.2.0 (``overlay = true``) still load:
    membership always runs over the partial-view overlay (HyParView neighbours, SWIM
    probing, gossip; :mod:`crdtstore.membership.protocol`). ``False`` (the full mesh of
    releases up to v0.2.0) is refused by ``NodeSettings`` with the upgrade path."""
