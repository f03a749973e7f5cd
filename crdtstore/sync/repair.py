"""Log repair, both sides: pulling the seqs a gap shows from a peer's delta log, and
serving such pulls from ours.

Asking (:class:`RepairScheduler`). Evidence of a gap is a peer's digest showing seqs we
lack, or a dot in our own context's cloud (the seqs below it are missing). Each is kept
with the time it was first seen. A seq is asked for only once it was seen missing at
least ``repair_grace_ms`` ago and is still missing, so a batch merely in flight on
PUB/SUB is not fetched twice. Invariants: at most ``max_inflight_repairs`` requests are
outstanding, none overlapping another of the same origin, each of at most
``max_repair_span`` seqs; a request goes only to a peer whose digest shows its first seq
(the origin first, then the others in turn as attempts time out); nothing is asked in a
namespace under range reconciliation (the session brings it, or its end reopens the
gap); after a reply that brought nothing usable, the same origin waits a timeout.

Serving (:class:`RepairServer`). A request is answered from the log (``RepairReply``,
at most ``max_repair_batches``) or, when the log no longer holds the interval, with
``LogGap`` (the asker then reconciles by ranges). Contiguous logged batches of the origin
travel joined into as few frames as causal delivery allows: see :func:`coalesce_runs`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass

from crdtstore.crdt import Dot
from crdtstore.sync.messages import DeltaBatch, LogGap, RepairReply, RepairRequest, encode_message
from crdtstore.sync.outgoing import Outgoing, Send
from crdtstore.sync.peers import PeerDigests, missing_spans
from crdtstore.sync.publish import decode_logged, joined
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings

GapKey = tuple[str, str]  # namespace, origin


@dataclass(slots=True)
class Repair:
    """One outstanding repair request."""

    peer: str
    namespace: str
    origin: str
    first: int
    last: int
    deadline: int


class RepairScheduler:
    """Gap evidence and the repair requests it leads to (the asking side)."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        settings: SyncSettings,
        stats: Counter[str],
        ids: Iterator[int],
    ) -> None:
        self._node_id = node_id
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._ids = ids
        # (ns, origin) -> [(ms first seen, top seq seen)], both ascending: gap evidence.
        self._seen: dict[GapKey, list[tuple[int, int]]] = {}
        self._outstanding: dict[int, Repair] = {}
        self._attempts: Counter[GapKey] = Counter()
        self._not_before: dict[GapKey, int] = {}

    # -- evidence ------------------------------------------------------------------------------

    def observe(self, ns: str, origin: str, top: int, now_ms: int) -> None:
        """A peer's digest shows ``origin``'s seqs up to ``top`` in ``ns``."""
        seen = self._seen.setdefault((ns, origin), [])
        if not seen or top > seen[-1][1]:
            seen.append((now_ms, top))

    def observe_clouds(self, now_ms: int) -> None:
        """A dot in our cloud means the seqs below it are missing: evidence of a gap."""
        for ns in self._replica.namespaces():
            ctx = self._replica.context(ns)
            for origin in {d.replica for d in ctx.cloud}:
                if origin != self._node_id:
                    self.observe(ns, origin, ctx.max_seq(origin), now_ms)

    def pending(self) -> bool:
        """Whether a gap is in evidence or a request outstanding (ticks have work)."""
        return bool(self._seen or self._outstanding)

    # -- requests ------------------------------------------------------------------------------

    def expire(self, now_ms: int) -> None:
        """Drop requests past their deadline; the next attempt goes to the next peer."""
        for rid, rep in list(self._outstanding.items()):
            if now_ms >= rep.deadline:
                del self._outstanding[rid]
                self._attempts[(rep.namespace, rep.origin)] += 1
                self._stats["repair_timeouts"] += 1

    def schedule(
        self,
        now_ms: int,
        peers: PeerDigests,
        reconciling: Container[str],
        held: Callable[[str, str], list[tuple[int, int]]] | None = None,
    ) -> list[Outgoing]:
        """Requests for every gap aged past the grace, within the in-flight bound.

        ``held(ns, origin)``: runs received and waiting for what they depend on; they are
        not asked for again (their dependencies are, being missing too)."""
        out: list[Outgoing] = []
        limit = self._settings.max_inflight_repairs
        for key in sorted(self._seen):
            ns, origin = key
            if len(self._outstanding) >= limit:
                break
            ctx = self._replica.context(ns)
            if self._seen[key][-1][1] <= ctx.vv.get(origin, 0):
                del self._seen[key]  # caught up with everything ever seen of it
                continue
            if ns in reconciling or now_ms < self._not_before.get(key, 0):
                continue
            top = self._repairable_top(key, now_ms)
            busy = [
                (r.first, r.last)
                for r in self._outstanding.values()
                if (r.namespace, r.origin) == key
            ]
            spans = missing_spans(ctx, origin, top)
            if held is not None and spans:
                spans = _without(spans, held(ns, origin))
            for first, last in spans:
                if len(self._outstanding) >= limit:
                    break
                last = min(last, first + self._settings.max_repair_span - 1)
                if any(a <= last and first <= b for a, b in busy):
                    continue
                peer = self._choose_peer(peers, ns, origin, first)
                if peer is None:
                    continue
                rid = next(self._ids)
                deadline = now_ms + self._settings.repair_timeout_ms
                self._outstanding[rid] = Repair(peer, ns, origin, first, last, deadline)
                out.append(Send(peer, encode_message(RepairRequest(rid, ns, origin, first, last))))
                self._stats["repairs_requested"] += 1
        return out

    def _repairable_top(self, key: GapKey, now_ms: int) -> int:
        """Highest seq seen missing at least ``repair_grace_ms`` ago (0 if none)."""
        seen = self._seen[key]
        cutoff = now_ms - self._settings.repair_grace_ms
        aged = [i for i, (at, _) in enumerate(seen) if at <= cutoff]
        if not aged:
            return 0
        del seen[: aged[-1]]  # older observations are subsumed by the newest aged one
        return seen[0][1]

    def _choose_peer(self, peers: PeerDigests, ns: str, origin: str, first: int) -> str | None:
        """A peer whose digest shows ``first``: the origin first, then the others in turn."""
        able = peers.holders(ns, origin, first)
        if not able:
            return None
        if origin in able:
            able.remove(origin)
            able.insert(0, origin)
        return able[self._attempts[(ns, origin)] % len(able)]

    # -- answers -------------------------------------------------------------------------------

    def replied(self, request: int, peer: str, namespace: str) -> Repair | None:
        """The request a ``RepairReply`` answers, no longer outstanding. A reply that
        matches none (late, duplicated, from another peer) is counted; its batches are
        still data, checked like any other."""
        rep = self._outstanding.pop(request, None)
        if rep is None or rep.peer != peer or rep.namespace != namespace:
            self._stats["repair_replies_unexpected"] += 1
        return rep

    def fruitless(self, rep: Repair, now_ms: int) -> None:
        """``rep``'s reply brought nothing usable (e.g. deferred for clock drift): do not
        ask again at once."""
        self._not_before[(rep.namespace, rep.origin)] = now_ms + self._settings.repair_timeout_ms

    def gap(self, request: int, peer: str) -> bool:
        """Whether a ``LogGap`` answers a request of ours to ``peer`` (else counted)."""
        rep = self._outstanding.pop(request, None)
        if rep is None or rep.peer != peer:
            self._stats["log_gaps_unexpected"] += 1
            return False
        self._stats["log_gaps"] += 1
        return True

    def forget_peer(self, peer: str) -> None:
        for rid in [r for r, rep in self._outstanding.items() if rep.peer == peer]:
            del self._outstanding[rid]


class RepairServer:
    """Answers repair requests from the delta log (the serving side; keeps no state)."""

    def __init__(
        self, replica: Replica, settings: SyncSettings, stats: Counter[str], reject: Rejections
    ) -> None:
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._reject = reject

    def serve(self, peer: str, msg: RepairRequest) -> list[Outgoing]:
        if msg.namespace not in self._replica.namespaces():
            self._stats["repairs_unknown_namespace"] += 1
            return []
        logged = self._replica.log_batches(msg.namespace, msg.origin, msg.first, msg.last)
        if logged is None:
            self._stats["log_gaps_sent"] += 1
            gap = LogGap(msg.request, msg.namespace, msg.origin, msg.first, msg.last)
            return [Send(peer, encode_message(gap))]
        self._stats["repairs_served"] += 1
        batches = tuple(logged[: self._settings.max_repair_batches])
        if self._settings.publish_flush:
            # One envelope, one context per run (see coalesce_runs).
            batches = tuple(self.coalesce_runs(msg.namespace, batches, msg.origin))
        return [Send(peer, encode_message(RepairReply(msg.request, msg.namespace, batches)))]

    def coalesce_runs(self, ns: str, logged: Sequence[bytes], origin: str) -> list[bytes]:
        """:func:`coalesce_runs` with this node's limit (a method so that a test can serve
        repairs by another rule)."""
        return coalesce_runs(
            ns, logged, origin, self._settings.publish_coalesce_max_bytes, self._reject
        )


def coalesce_runs(
    ns: str, logged: Sequence[bytes], origin: str, limit: int, reject: Rejections
) -> list[bytes]:
    """``logged`` (contiguous batches of ``origin``, oldest first) as few frames as causal
    delivery allows: each frame joins a run whose later batches observed no dot of
    another origin that the run's first batch had not observed; a batch over ``limit``
    bytes travels alone.

    Why the rule. A receiver holds a batch until every dot its context names is applied.
    Joining *any* consecutive logged batches of origin A makes a frame that needs
    everything the last of them observed, e.g. B's seqs up to 300; B's frame joined the
    same way needs A's up to 300; each waits for the other forever (this was a restarted
    node that never caught up, with writers sharing keys). With the rule, a frame needs
    only what its first batch needed, all of it causally before that batch, so frames
    of different origins cannot wait on each other in a cycle, and a receiver that lacks
    them can always apply one next."""
    batches = decode_logged(ns, logged, 0, reject)
    if batches is None or any(b.origin != origin for b in batches):
        return list(logged)
    out: list[bytes] = []
    run: list[DeltaBatch] = []
    raw: list[bytes] = []
    for batch, data in zip(batches, logged, strict=True):
        if run and (
            len(data) > limit
            or run[-1].last + 1 != batch.first
            or not observes_nothing_new(batch, run[0])
        ):
            out.append(raw[0] if len(run) == 1 else joined(ns, run))
            run, raw = [], []
        if len(data) > limit:
            out.append(data)
            continue
        run.append(batch)
        raw.append(data)
    if run:
        out.append(raw[0] if len(run) == 1 else joined(ns, run))
    return out


def observes_nothing_new(batch: DeltaBatch, first: DeltaBatch) -> bool:
    """Every dot of another origin that ``batch`` observed, ``first`` observed too (dots
    of the batches' own origin below ``batch`` are causally before ``first`` or in the
    run between them)."""
    own, base = batch.origin, first.rest
    for replica, top in batch.rest.vv.items():
        if replica == own:
            continue
        have = base.vv.get(replica, 0)
        if top > have and any(Dot(replica, s) not in base for s in range(have + 1, top + 1)):
            return False
    return all(d.replica == own or d in base for d in batch.rest.cloud)


def _without(spans: list[tuple[int, int]], runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The inclusive ``spans`` less the inclusive ``runs`` (both sorted)."""
    out: list[tuple[int, int]] = []
    for first, last in spans:
        pos = first
        for a, b in runs:
            if b < pos or a > last:
                continue
            if a > pos:
                out.append((pos, a - 1))
            pos = max(pos, b + 1)
            if pos > last:
                break
        if pos <= last:
            out.append((pos, last))
    return out
