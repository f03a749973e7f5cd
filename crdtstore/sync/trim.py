"""Log trimming: the delta log keeps what some peer may still repair from it, and no more.

Invariants: a logged batch is trimmed by acknowledgement only once *every* known peer
has reported a digest, and only below the lowest seq of its origin that all of them
show applied; independently, each namespace's log is bounded by ``max_log_batches``
(oldest first), after which a peer that still needed the batches gets ``LogGap`` and
falls back to range reconciliation. Trimming never changes state, only what repair can
serve.
"""

from __future__ import annotations

from collections import Counter

from crdtstore.crdt import CausalContext
from crdtstore.sync.peers import PeerDigests
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings


class LogTrimmer:
    """Trims each namespace's log by the peers' digests, and bounds it."""

    def __init__(self, replica: Replica, settings: SyncSettings, stats: Counter[str]) -> None:
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._trimmed: dict[tuple[str, str], int] = {}  # (ns, origin) -> trimmed up to
        # ns -> its context as of its last bounding. The log gains a batch only with new
        # dots, so an unchanged context needs no bounding: that is a write transaction
        # (and, durable, an fsync) per namespace per digest on an idle node otherwise.
        self._bounded_at: dict[str, CausalContext] = {}

    def trim(self, peers: PeerDigests) -> None:
        for ns in sorted(self._replica.namespaces()):
            ctx = self._replica.context(ns)
            reports = peers.all_reports(ns)
            if reports:
                for origin in ctx.vv:
                    upto = min(vv.get(origin, 0) for vv in reports)
                    if upto > self._trimmed.get((ns, origin), 0):
                        self._stats["log_trimmed"] += self._replica.trim_log(ns, origin, upto)
                        self._trimmed[(ns, origin)] = upto  # once done: a failed trim is retried
            if self._bounded_at.get(ns) != ctx:
                bound = self._settings.max_log_batches
                self._stats["log_bounded"] += self._replica.bound_log(ns, bound)
                self._bounded_at[ns] = ctx  # once done: a failed bounding is retried
