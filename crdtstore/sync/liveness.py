"""The liveness check: the safety net under repair.

Repair assumes a missing batch can be fetched and then applied. Whatever breaks that
(a dependency that cannot be met, a peer that answers nothing useful, a bug), a replica
must not stay behind forever: liveness is a property the tests check, not only eventual
equality.

Invariant: a namespace in which some peer's digest shows seqs this node lacks, and in
which this node gained no dot of another origin for ``stuck_after_ms``, is reconciled by
ranges (the path that needs nothing in order) with the peer furthest ahead; each further
fallback waits another full bound and rotates to the next peer, so one bad peer cannot
hold it. A running reconciliation session counts as progress (its own timeouts bound
it). Origins whose batches were refused for clock drift lately are not counted as
lacking: they are deferred on purpose (applied once local time catches up), not stuck.

This module decides; the engine starts the sessions it names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

from crdtstore.sync.peers import PeerDigests
from crdtstore.sync.rejections import log
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings


@dataclass(slots=True)
class Behind:
    """A namespace in which a peer's digest shows seqs this node has not applied."""

    since: int  # ms: when digests first showed it behind
    missing: int  # seqs missing at the last check
    held: int  # dots of other origins held at the last progress
    progress_at: int  # ms: when ``held`` last grew (or ``since``)


class LivenessCheck:
    """Tracks the namespaces this node is behind in, and names the stuck ones."""

    def __init__(
        self, node_id: str, replica: Replica, settings: SyncSettings, stats: Counter[str]
    ) -> None:
        self._node_id = node_id
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._behind: dict[str, Behind] = {}
        self._drifting: dict[str, int] = {}  # origin -> ms of its last batch refused for drift
        self._fallbacks: Counter[str] = Counter()

    def drift_refused(self, origin: str, now_ms: int) -> None:
        """A batch of ``origin`` was refused for clock drift (its seqs are deferred)."""
        self._drifting[origin] = now_ms

    def behind(self) -> dict[str, dict[str, int]]:
        """Namespace -> ``since``, ``missing``, ``progress_at`` (see SyncEngine.behind)."""
        return {
            ns: {"since": b.since, "missing": b.missing, "progress_at": b.progress_at}
            for ns, b in sorted(self._behind.items())
        }

    def stuck(
        self,
        now_ms: int,
        peers: PeerDigests,
        reconciling: Container[str],
        may_reconcile: Callable[[str, int], bool],
        held_batches: Callable[[str], int],
    ) -> Iterator[tuple[str, str]]:
        """``(namespace, peer)`` for each namespace to reconcile now, and with whom.

        ``reconciling``: namespaces with a session running; ``may_reconcile(ns, now)``:
        whether a session may start there; ``held_batches(ns)``: batches waiting (for
        the log). A generator: the caller starts each session before the next check."""
        ahead = peers.lacking(self._replica.context, self._recently_drifting(now_ms))
        for ns in [ns for ns in self._behind if ns not in ahead]:
            del self._behind[ns]
        for ns, by_peer in sorted(ahead.items()):
            ctx = self._replica.context(ns)
            held = sum(s for r, s in ctx.vv.items() if r != self._node_id) + sum(
                1 for d in ctx.cloud if d.replica != self._node_id
            )
            missing = max(by_peer.values())
            state = self._behind.get(ns)
            if state is None:
                self._behind[ns] = Behind(now_ms, missing, held, now_ms)
                continue
            state.missing = missing
            if held > state.held or ns in reconciling:
                state.held, state.progress_at = held, now_ms
                continue
            if now_ms - state.progress_at < self._settings.stuck_after_ms:
                continue
            if not may_reconcile(ns, now_ms):
                continue
            # Furthest ahead first; rotate on each fallback so one bad peer cannot hold us.
            ranked = sorted(by_peer, key=lambda p: (-by_peer[p], p))
            peer = ranked[self._fallbacks[ns] % len(ranked)]
            self._fallbacks[ns] += 1
            self._stats["stuck_fallbacks"] += 1
            log.warning(
                "sync %s: %s stuck %d seqs behind %s for %.1f s with no progress "
                "(%d batches held); reconciling by ranges",
                self._node_id,
                ns,
                by_peer[peer],
                peer,
                (now_ms - state.progress_at) / 1000,
                held_batches(ns),
            )
            state.progress_at = now_ms  # the next fallback only after another full bound
            yield ns, peer

    def _recently_drifting(self, now_ms: int) -> set[str]:
        recent = now_ms - self._settings.stuck_after_ms
        for origin in [o for o, at in self._drifting.items() if at < recent]:
            del self._drifting[origin]
        return set(self._drifting)
