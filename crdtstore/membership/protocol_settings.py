"""The overlay membership protocol's settings, each a named bound with its reason.

Invariant: the protocol and its parts (probing, dissemination, admission) read no
timing or size literal from anywhere else. The replicator builds them from the node's
membership settings; the simulator and the benchmarks set them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtstore.membership.overlay import OverlaySettings


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    probe_interval_ms: int = 500
    """Every neighbour is pinged this often (the protocol period)."""
    probe_timeout_ms: int = 200
    """A ping unanswered this long goes out again through ``indirect_probes`` others."""
    indirect_probes: int = 3
    random_probe_interval_ms: int = 2_000
    """Besides its neighbours, a node probes one random member this often (see
    :mod:`crdtstore.membership.probing`: a member whose neighbours all share its side of
    a partition is otherwise never found dead on the other side)."""
    suspect_after_ms: int = 2_000
    """A neighbour unanswered (directly and indirectly) this long is suspected."""
    dead_after_ms: int = 6_000
    """A suspect not refuted this long is dead (both stretched by local health)."""
    join_interval_ms: int = 1_000
    """How often a node without neighbours asks its seeds (or known members) to join."""
    shuffle_interval_ms: int = 10_000
    rotate_interval_ms: int = 30_000
    """How often a node swaps one neighbour for a random live member."""
    table_sync_interval_ms: int = 5_000
    """How often a node compares its member table's hash with one neighbour's."""
    table_exchange_ms: int = 200
    """How long a table exchange with a new neighbour is given before the next new
    neighbour's starts (one at a time: the first one usually makes the rest equal)."""
    reconnect_interval_ms: int = 10_000
    """How often a node offers its table to one member it holds dead, so that both
    sides of a healed partition learn of each other (and the living refute)."""
    prune_after_ms: int = 24 * 3600 * 1000
    retransmit_mult: int = 1
    """Each update rides on ``retransmit_mult * ceil(log2(N + 1))`` probes and acks
    (SWIM's lambda). The flood already carries it once to every neighbour, and probes
    go only to neighbours, so these copies only repair losses: SWIM's 3 or 4 (it has no
    flood) made a 1,000-node start storm drain its queues for minutes."""
    max_piggyback: int = 8
    gossip_interval_ms: int = 20
    """Updates learned within this long leave together, one message per neighbour: a
    burst (a mass start, a partition) costs a few frames per neighbour, not one per
    update, for at most this much added latency per hop."""
    max_local_health: int = 8
    max_incarnation_jump: int = 1 << 16
    """How far above the incarnation of a member's replicated record (its own word) what
    is said of it over the membership channel is believed. Legit lives climb by one per
    restart or refutation, and each is written to the record; a forged update far above
    is refused (see :mod:`crdtstore.membership.admission`)."""
    max_relayed_probes: int = 16
    """Indirect probes one member may have this node run for it at a time (a prober asks
    each helper once per target a round, for a handful of targets)."""
    log_interval_ms: int = 10_000
    """A refusal of the same kind is logged at most this often (all are counted)."""
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
