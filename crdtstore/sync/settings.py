"""The sync engine's settings: every limit and interval of the protocol, named, in one place.

Invariant: the engine reads no literal timing or size limit from anywhere else; each
field here has a default that suits a LAN cluster of a few dozen nodes and a docstring
saying what it bounds and why it exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """Policy of one node's replication: what to gossip, when, and how much."""

    digest_interval_ms: int = 1000
    """How often the node publishes its digest (its per-namespace version vectors).

    A digest is the only periodic traffic of an idle cluster; its size depends on the
    number of namespaces and origins, never on the amount of state."""

    repair_grace_ms: int = 1500
    """How long a gap must persist before it is repaired.

    A seq becomes repairable only once a peer's digest (or a cloud in our own context)
    showed it at least this long ago and it is still missing, so a batch that is merely
    still in flight on PUB/SUB is not fetched a second time. With the defaults that is
    "seen missing across two digests"."""

    repair_timeout_ms: int = 2000
    """A repair request unanswered for this long is dropped and retried with another peer."""

    max_repair_batches: int = 64
    """Most logged batches one repair reply carries (bounds the reply's size)."""

    max_repair_span: int = 4096
    """Most seqs one repair request asks for; a longer gap is fetched in several requests."""

    max_inflight_repairs: int = 8
    """Most repair requests this node has outstanding at once, over all peers."""

    range_fanout: int = 16
    """Into how many sub-ranges a differing key-hash range is split per round."""

    range_leaf_entries: int = 24
    """A differing range holding at most this many entries (on the sender) is shipped
    whole instead of split further: below this, one more round trip of fingerprints
    costs more than the entries themselves."""

    range_ship_to_empty: bool = True
    """Ship a differing range whole, however many entries it holds (up to
    ``range_max_reply_entries``), when the asker holds nothing in it: splitting it further
    would only make more round trips, as every sub-range differs too. This is what makes
    a new node's bootstrap a stream of large replies instead of a tree walk."""

    range_max_query_ranges: int = 256
    """Most ranges one reconciliation query asks about (the rest wait for the next round)."""

    range_max_reply_entries: int = 16384
    """Most entries one reconciliation reply ships; ranges beyond it are left unanswered
    and asked again (bounds the reply's size)."""

    range_max_reply_bytes: int = 8 * 1024 * 1024
    """About the most bytes of entries one reconciliation reply ships (values can be large:
    4,096 entries of a megabyte would pass any message limit). A range over it is split,
    or left for the next round; one that cannot be split is shipped alone."""

    range_session_timeout_ms: int = 3000
    """A reconciliation round unanswered for this long is asked again; and a session whose
    shipped entries failed their checks is not started again for this long."""

    range_session_retries: int = 3
    """Unanswered re-asks after which a reconciliation session is abandoned (its ranges
    are applied only when it completes, so nothing of it is; a later gap starts anew)."""

    max_log_batches: int = 100_000
    """Bound of each namespace's delta log. Batches every known peer has applied are
    trimmed earlier; beyond this bound the oldest go regardless, and a peer that still
    needed them falls back to range reconciliation."""

    max_clock_drift_ms: int = 60_000
    """An LWW batch with a timestamp further ahead of local time than this is deferred:
    rejected now (counted) and fetched again by repair once local time has caught up."""

    max_waiting_batches: int = 4096
    """Most batches held back (in memory) until the deltas their context names arrive;
    beyond it a batch is dropped (counted) and fetched again by repair."""

    max_waiting_bytes: int = 64 * 1024 * 1024
    """Most bytes of batches held back at once (the count bound alone would let 4,096
    large batches hold gigabytes); beyond it a batch is dropped (counted) as above."""

    max_wait_ms: int = 10_000
    """Longest a batch is held back waiting for the deltas its context names. Past it,
    it is dropped (counted as ``waiting_expired``): what it needs did not come, so
    waiting longer is not how it will be applied; repair fetches it again, and if that
    makes no progress either, the liveness check below changes the path."""

    stuck_after_ms: int = 10_000
    """The liveness bound. A namespace whose peers' digests show seqs this node lacks,
    and where this node has gained no dot of another origin for this long, is declared
    stuck: the node logs it, counts it (``stuck_fallbacks``) and reconciles the
    namespace by ranges with the peer furthest ahead, the path that needs nothing in
    order. Longer than a few repair rounds (``repair_grace_ms + repair_timeout_ms``),
    so an ordinary repair is never cut short."""

    publish_flush: bool = True
    """Coalesce the own commits found at one flush into one frame per namespace (one
    envelope, one compact context) instead of publishing each commit's batch alone."""

    publish_coalesce_max_bytes: int = 16 * 1024
    """Coalesce only batches up to this size: joining them saves receivers a commit each,
    which matters for small ones; a large batch already amortizes its commit, and
    decoding, joining and re-encoding it would cost the publisher more than it saves."""

    log_interval_ms: int = 10_000
    """Rejections and protocol errors are logged at most once per reason per interval
    (every one is counted in ``engine.stats`` regardless)."""

    reserved_namespaces: tuple[str, ...] = ("__members", "__drops")
    """Namespaces every node replicates whatever its ``topics``: cluster membership, and
    the records of dropped namespaces (``crdtstore.storage.drops``)."""
