"""The replication protocol as a sans-I/O state machine.

Rule 1: everything that decides what one node sends, and when, lives here. Rule 2: this
module does no I/O and reads no clock and no randomness: bytes, ticks and commits come in
(each with ``now_ms``), :class:`Publish` and :class:`Send` come out. The replica owns
persistence; the caller owns sockets.

Theory of operation
-------------------
Every mutation at node ``i`` in namespace ``ns`` consumes the next seq of ``i`` there, and
the dot ``(i, seq)`` is the delta's id. So a replica's causal context per namespace *is*
the set of delta ids applied here: its version vector is the digest, a dot in its cloud is
the upper side of a gap, and ``CausalContext.missing_from`` names the seqs to repair. No
other sequence tracking exists. Deltas join in any order and any number of times, so
nothing below needs ordered or exactly-once delivery.

1. Fast path. ``on_local_commit`` publishes the node's own batches (origin = this node)
   not yet published, on the namespace's topic, coalesced into one frame per namespace.
2. Digest. Every ``digest_interval_ms`` the node publishes, on :data:`DIGEST_TOPIC`, its
   id and the version vector of each namespace it holds. Its size depends on namespaces
   and origins, never on state, and building it does no O(state) work.
3. Repair. A peer's digest (or a cloud in our own context) shows seqs we lack. They are
   recorded with the time they were first seen; once ``repair_grace_ms`` has passed and
   they are still missing (so they were not merely in flight on PUB/SUB), a
   ``RepairRequest`` goes to a peer whose digest covers them (the origin first). The peer
   answers from its delta log (``RepairReply``) or says ``LogGap``.
4. Range reconciliation, on ``LogGap`` or when we hold nothing of a namespace a peer has
   data in. The asker sends the fingerprints of key-hash ranges; the sender answers each
   range as equal, as its entries (when it holds at most ``range_leaf_entries`` there,
   or the asker holds nothing there: ``range_ship_to_empty``), or as ``range_fanout``
   sub-range fingerprints, which the asker compares with its own
   and asks about again where they differ. Cost grows with the difference, not the state.

   Why the sender's context travels with the entries, and when it may be merged. A
   delta lists every key its context touches; a full state does not (it forgets the keys
   of removed dots). Shipping "the entries you have not seen" would therefore miss
   removes of entries both sides saw. So a shipped range carries the sender's context,
   and ``Replica.apply_range`` judges removals *inside the range* by it, while adding to
   the receiver's context only the dots it actually received: the sender's context also
   covers keys in ranges not yet received, and marking their dots seen would make the
   receiver drop those adds forever when they arrive (a dot seen and not live reads as
   "removed"). Only when *every* range of the session is resolved (equal fingerprints or
   entries applied) does the asker join the sender's context, and only the one from the
   session's *first* reply, a snapshot the sender took before reading any range: every
   range was read at or after it, so each dot it holds is, on its key, either live in
   what we now hold or removed by what we applied. Shipped entries are kept as the bytes
   they came in and checked only when the session applies them
   (:mod:`crdtstore.sync.shipped`); one that breaks a rule fails the whole apply, which
   then changes nothing, and the session is given up. A later snapshot may hold dots added
   to ranges already resolved, and a session interrupted midway has unresolved ranges;
   merging in either case would lose adds. An abandoned session therefore merges
   nothing; what it applied stays (every apply was a safe join) and a later gap starts a
   new session.
5. Log trimming. A logged batch every known peer's digest shows applied is trimmed; the
   log is also bounded by ``max_log_batches`` (oldest first), after which peers that still
   needed the batches fall back to 4.

Rejected, and counted in ``stats`` (never raised): undecodable bytes; batches whose
origin is this node (nobody else may speak for it); namespaces outside ``topics`` (we
hold only those, and never request, serve or accept others); LWW batches with a
timestamp more than ``max_clock_drift_ms`` ahead (deferred: repair fetches them again
once local time has caught up; in a session's ranges, the session is given up and
started again later); namespace type conflicts; replies that break the
protocol. At most one reconciliation session runs per namespace.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtstore.crdt import CausalContext, Dot, DotMap, check_drift
from crdtstore.errors import ClockDriftError, DecodeError, Error
from crdtstore.sync.fingerprint import HASH_SPACE, split_range
from crdtstore.sync.messages import (
    RANGE_ENTRIES,
    RANGE_EQUAL,
    RANGE_SPLIT,
    DeltaBatch,
    Digest,
    LogGap,
    PackedRange,
    RangeAnswer,
    RangeQuery,
    RangeReply,
    RangeSummary,
    RepairReply,
    RepairRequest,
    decode_message,
    encode_message,
)
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings
from crdtstore.sync.shipped import ShippedEntries

log = logging.getLogger(__name__)

DIGEST_TOPIC = "\x00digest"
"""The reserved topic digests are published on (no namespace may start with NUL)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``data`` to every subscriber of ``topic`` (a namespace or DIGEST_TOPIC)."""

    topic: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to one peer."""

    peer: str
    data: bytes


Outgoing = Publish | Send


@dataclass(slots=True)
class _Repair:
    """One outstanding repair request."""

    peer: str
    namespace: str
    origin: str
    first: int
    last: int
    deadline: int


@dataclass(slots=True)
class _Session:
    """The asker's side of one range reconciliation session."""

    id: int
    peer: str
    namespace: str
    round: int = 0
    base: CausalContext | None = None  # the sender's context from the first reply
    pending: list[tuple[int, int]] = field(default_factory=list)  # unresolved, not asked
    asked: list[tuple[int, int]] = field(default_factory=list)  # in the current query
    query: bytes = b""
    # Shipped ranges, applied only when the session completes, as the bytes they came in
    # (~50 B per entry; decoded, ~1 KB): checked only then (see crdtstore.sync.shipped).
    kept: list[tuple[int, int, PackedRange]] = field(default_factory=list)
    shipped: int = 0  # entries in the kept ranges
    kept_bytes: int = 0
    started: int = 0  # ms
    deadline: int = 0
    retries: int = 0


@dataclass(slots=True)
class _Behind:
    """A namespace in which a peer's digest shows seqs this node has not applied."""

    since: int  # ms: when digests first showed it behind
    missing: int  # seqs missing at the last check
    held: int  # dots of other origins held at the last progress
    progress_at: int  # ms: when ``held`` last grew (or ``since``)


class SyncEngine:
    """One node's replication protocol: messages, ticks and commits in; frames out."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        settings: SyncSettings | None = None,
        topics: Iterable[str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.replica = replica
        self.settings = settings if settings is not None else SyncSettings()
        self.topics: frozenset[str] | None = None if topics is None else frozenset(topics)
        self.stats: Counter[str] = Counter()
        self._peers: set[str] = set()
        self._digests: dict[str, dict[str, dict[str, int]]] = {}  # peer -> ns -> vv
        # (ns, origin) -> [(ms first seen, top seq seen)], both ascending: gap evidence.
        self._seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._repairs: dict[int, _Repair] = {}
        self._attempts: Counter[tuple[str, str]] = Counter()
        self._not_before: dict[tuple[str, str], int] = {}
        self._sessions: dict[str, _Session] = {}  # namespace -> its one session
        self._session_not_before: dict[str, int] = {}  # after a session's apply failed
        # Batches received before the deltas their context names: ns -> id -> (batch,
        # its bytes, ms it arrived).
        self._waiting: dict[str, dict[tuple[str, int, int], tuple[DeltaBatch, bytes, int]]] = {}
        self._waiting_bytes = 0
        self._behind: dict[str, _Behind] = {}
        self._drifting: dict[str, int] = {}  # origin -> ms of its last batch refused for drift
        self._fallbacks: Counter[str] = Counter()
        # Inside on_messages: ready batches not applied yet, and each namespace's context
        # as they will leave it (what the checks of the batches after them must see).
        self._group: list[tuple[DeltaBatch, bytes]] | None = None
        self.keepalive: Callable[[], None] | None = None
        """Called between the kept ranges while a session applies them: a bootstrap's
        one transaction of a million entries holds the caller's thread for many seconds,
        and a node that heartbeats from that thread must go on doing so meanwhile (or
        its peers declare it dead). It must not touch the replica or this engine."""
        self._group_ctx: dict[str, CausalContext] = {}
        self._next_id = 1
        self._next_digest = 0
        self._trimmed: dict[tuple[str, str], int] = {}
        self._last_logged: dict[str, int] = {}
        # Own batches already published: a restarted engine does not republish history;
        # whatever it had not published yet, peers repair from the digest.
        self._published: dict[str, int] = {
            ns: replica.context(ns).max_seq(node_id) for ns in replica.namespaces()
        }

    # -- membership of the replication group -----------------------------------------------

    def add_peer(self, peer: str) -> None:
        if peer != self.node_id:
            self._peers.add(peer)

    def remove_peer(self, peer: str) -> None:
        """Forget a peer: its digests no longer hold back trimming; its work is dropped."""
        self._peers.discard(peer)
        self._digests.pop(peer, None)
        for rid in [r for r, rep in self._repairs.items() if rep.peer == peer]:
            del self._repairs[rid]
        for ns in [ns for ns, s in self._sessions.items() if s.peer == peer]:
            del self._sessions[ns]
            self.stats["range_sessions_abandoned"] += 1
            self._drain(ns)

    @property
    def peers(self) -> frozenset[str]:
        return frozenset(self._peers)

    def holds(self, namespace: str) -> bool:
        """Whether this node replicates ``namespace`` (its topics, plus reserved ones)."""
        return (
            self.topics is None
            or namespace in self.topics
            or namespace in self.settings.reserved_namespaces
        )

    def subscriptions(self) -> list[str]:
        """Topics to subscribe to: the digest topic and the held namespaces (all if None)."""
        if self.topics is None:
            return [DIGEST_TOPIC]
        return [DIGEST_TOPIC, *sorted(self.topics | set(self.settings.reserved_namespaces))]

    def peer_lag(self) -> dict[str, int]:
        """Per known peer: how many seqs its last digest shows that we have not applied."""
        lag: dict[str, int] = {}
        for peer in sorted(self._peers):
            behind = 0
            for ns, vv in self._digests.get(peer, {}).items():
                ctx = self.replica.context(ns)
                for origin, top in vv.items():
                    if origin != self.node_id:
                        behind += sum(b - a + 1 for a, b in _spans(ctx, origin, top))
            lag[peer] = behind
        return lag

    def peers_caught_up(self, namespace: str) -> bool:
        """Whether every peer's last digest shows all of this node's own seqs of
        ``namespace`` (used to know a graceful leave reached everyone before stopping)."""
        top = self.replica.context(namespace).max_seq(self.node_id)
        return all(
            self._digests.get(p, {}).get(namespace, {}).get(self.node_id, 0) >= top
            for p in self._peers
        )

    def sessions(self) -> dict[str, str]:
        """Namespace -> peer of each reconciliation session running (for inspection)."""
        return {ns: s.peer for ns, s in self._sessions.items()}

    # -- inputs --------------------------------------------------------------------------------

    def on_local_commit(self, now_ms: int) -> list[Outgoing]:
        """Publish own batches the log holds beyond what was published already."""
        out: list[Outgoing] = []
        for ns in sorted(self.replica.namespaces()):
            if not self.holds(ns):
                continue
            top = self.replica.context(ns).max_seq(self.node_id)
            done = self._published.get(ns, 0)
            if top <= done:
                continue
            self._published[ns] = top
            logged = self.replica.log_batches(ns, self.node_id, done + 1, top)
            if logged is None:
                # Trimmed before it was published: peers repair it by range reconciliation.
                self._reject("publish_log_missing", now_ms, f"{ns}: own {done + 1}..{top}")
                continue
            frames = self._coalesce(ns, logged, now_ms) if self.settings.publish_flush else None
            for data in frames if frames is not None else logged:
                out.append(Publish(ns, data))
                self.stats["batches_published"] += 1
        return self._count_sent(out)

    def greet(self, peer: str) -> list[Outgoing]:
        """Our digest, sent directly to a peer that just joined: it learns what to fetch at
        once instead of at our next published digest (and before its SUB has caught up)."""
        if peer not in self._peers:
            return []
        return self._count_sent([Send(peer, encode_message(self._digest()))])

    def on_tick(self, now_ms: int) -> list[Outgoing]:
        out: list[Outgoing] = []
        if now_ms >= self._next_digest:
            self._next_digest = now_ms + self.settings.digest_interval_ms
            out.append(Publish(DIGEST_TOPIC, encode_message(self._digest())))
            self.stats["digests_sent"] += 1
            self._trim_logs()
            self._expire_waiting(now_ms)
            out.extend(self._check_liveness(now_ms))
        self._observe_clouds(now_ms)
        for rid, rep in list(self._repairs.items()):
            if now_ms >= rep.deadline:
                del self._repairs[rid]
                self._attempts[(rep.namespace, rep.origin)] += 1
                self.stats["repair_timeouts"] += 1
        for ns, session in list(self._sessions.items()):
            if now_ms < session.deadline:
                continue
            if session.retries >= self.settings.range_session_retries:
                del self._sessions[ns]
                self.stats["range_sessions_abandoned"] += 1
                log.warning(
                    "sync %s: gave up reconciling %s with %s", self.node_id, ns, session.peer
                )
                self._drain(ns)
                continue
            session.retries += 1
            session.deadline = now_ms + self.settings.range_session_timeout_ms
            self.stats["range_queries_resent"] += 1
            out.append(Send(session.peer, session.query))
        out.extend(self._schedule_repairs(now_ms))
        return self._count_sent(out)

    def on_message(
        self, peer: str, data: bytes, now_ms: int, publisher: str | None = None
    ) -> list[Outgoing]:
        """Handle one frame from the network (``peer`` is "" for published frames).

        ``publisher``: for a published frame, the node whose PUB it came from, when the
        transport knows it. Nodes publish only their own batches, so a published batch of
        another origin is forged and rejected (repairs, over ROUTER/DEALER, may carry any
        origin's batches from a log).
        """
        self.stats["bytes_received"] += len(data)
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            self._reject("decode_errors", now_ms, f"from {peer!r}: {exc}")
            return []
        if publisher and isinstance(msg, DeltaBatch) and msg.origin != publisher:
            self._reject("rejected_forged_origin", now_ms, f"{msg.origin} via {publisher!r}")
            return []
        if self._group and not isinstance(msg, DeltaBatch):
            self._flush_group(now_ms)  # everything else sees the batches before it applied
        try:
            out = self._dispatch(peer, msg, data, now_ms)
        except Error as exc:  # an invariant a peer's message broke, surfaced by the replica
            self._reject("rejected_invalid", now_ms, f"{type(msg).__name__} from {peer!r}: {exc}")
            return []
        return self._count_sent(out)

    def on_messages(
        self, frames: Sequence[tuple[str, bytes, str | None]], now_ms: int
    ) -> list[Outgoing]:
        """``on_message`` of each ``(peer, data, publisher)`` in order, except that the ready
        batches among them are applied together, one replica commit (``apply_batches``)
        per run of them: a receiver that fell behind catches up with one fsync per group
        instead of one per batch, so a backlog shrinks instead of growing."""
        out: list[Outgoing] = []
        self._group = []
        try:
            for peer, data, publisher in frames:
                out.extend(self.on_message(peer, data, now_ms, publisher))
        finally:
            self._flush_group(now_ms)
            self._group = None
        return out

    def _flush_group(self, now_ms: int) -> None:
        group = self._group
        if not group:
            return
        self._group = None  # until collecting resumes below, batches are applied at once
        self._group_ctx.clear()
        try:
            applied = self.replica.apply_batches(group)
        except Error:
            # One of them cannot be applied: each in its own commit, so the others are,
            # each checked against what is applied for real.
            for batch, data in group:
                self._apply_alone(batch, data, now_ms)
        else:
            self.stats["batch_group_commits"] += 1  # batches_applied / this: group size
            for changed in applied:
                self.stats["batches_applied" if changed else "duplicates"] += 1
        for ns in sorted({batch.namespace for batch, _ in group}):
            self._drain(ns)
        self._group = []

    def _apply_alone(self, batch: DeltaBatch, data: bytes, now_ms: int) -> None:
        ns = batch.namespace
        ctx = self.replica.context(ns)
        if all(Dot(batch.origin, s) in ctx for s in range(batch.first, batch.last + 1)):
            self.stats["duplicates"] += 1
        elif not _causally_ready(batch, ctx):  # what it follows was not applied
            self._wait(batch, data, now_ms)
        else:
            try:
                self._apply_ready(batch, data)
            except Error as exc:
                self._reject("rejected_invalid", now_ms, f"batch {ns}: {exc}")

    def _context(self, ns: str) -> CausalContext:
        """``ns``'s context, with the batches of the group being collected applied."""
        pending = self._group_ctx.get(ns)
        return pending if pending is not None else self.replica.context(ns)

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, peer: str, msg: Any, data: bytes, now_ms: int) -> list[Outgoing]:
        if isinstance(msg, DeltaBatch):
            if peer:
                # Batches travel only published, or inside a RepairReply we asked for; an
                # unsolicited direct one would let any client inject the next seq of anyone.
                self._reject("rejected_invalid", now_ms, f"batch sent directly by {peer!r}")
                return []
            self._apply_batch(msg, data, now_ms)
            return []
        if isinstance(msg, Digest):
            return self._on_digest(msg, now_ms)
        if not peer:
            # Everything but batches and digests is a direct reply to someone.
            self._reject("rejected_invalid", now_ms, f"{type(msg).__name__} was published")
            return []
        if not self.holds(msg.namespace):
            self._reject("rejected_topic", now_ms, f"{type(msg).__name__} for {msg.namespace}")
            return []
        if isinstance(msg, RepairRequest):
            return self._serve_repair(peer, msg)
        if isinstance(msg, RepairReply):
            self._on_repair_reply(peer, msg, now_ms)
            return []
        if isinstance(msg, LogGap):
            return self._on_log_gap(peer, msg, now_ms)
        if isinstance(msg, RangeQuery):
            return self._serve_range_query(peer, msg)
        if isinstance(msg, RangeReply):
            return self._on_range_reply(peer, msg, now_ms)
        self._reject("rejected_invalid", now_ms, f"unexpected {type(msg).__name__}")
        return []

    # -- batches ----------------------------------------------------------------------------------

    def _apply_batch(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """Check and apply one batch; True if it brought anything new."""
        ns = batch.namespace
        if batch.origin == self.node_id:
            self._reject("rejected_own_origin", now_ms, f"{ns}: {batch.first}..{batch.last}")
            return False
        if not self.holds(ns):
            self._reject("rejected_topic", now_ms, f"batch for {ns}")
            return False
        if not self._timestamps_ok(batch, now_ms):
            return False
        if not self._ensure_namespace(ns, batch.type_name, now_ms):
            return False
        ctx = self._context(ns)
        if all(Dot(batch.origin, s) in ctx for s in range(batch.first, batch.last + 1)):
            self.stats["duplicates"] += 1
            return False
        if ns in self._sessions:
            self.stats["batches_deferred_session"] += 1
        if ns in self._sessions or not _causally_ready(batch, ctx):
            # Its context names deltas not applied here yet; applying it now would mark
            # them seen, and they would then never be applied (nor repaired).
            self._wait(batch, data, now_ms)
            return False
        self._apply_ready(batch, data)
        self._drain(ns)
        return True

    def _wait(self, batch: DeltaBatch, data: bytes, now_ms: int) -> None:
        waiting = self._waiting.setdefault(batch.namespace, {})
        key = (batch.origin, batch.first, batch.last)
        if key in waiting:
            return  # a duplicate keeps the first copy's arrival time
        if (
            len(waiting) >= self.settings.max_waiting_batches
            or self._waiting_bytes + len(data) > self.settings.max_waiting_bytes
        ):
            self._reject(
                "waiting_overflow", now_ms, f"{batch.namespace}: dropped, repair refetches"
            )
            return
        waiting[key] = (batch, data, now_ms)
        self._waiting_bytes += len(data)
        self.stats["batches_waiting"] += 1

    def _unwait(self, ns: str, key: tuple[str, int, int]) -> tuple[DeltaBatch, bytes, int]:
        held = self._waiting[ns].pop(key)
        self._waiting_bytes -= len(held[1])
        return held

    def _expire_waiting(self, now_ms: int) -> None:
        """Drop batches held longer than ``max_wait_ms`` (see the setting)."""
        cutoff = now_ms - self.settings.max_wait_ms
        for ns, waiting in self._waiting.items():
            old = [key for key, (_, _, at) in waiting.items() if at <= cutoff]
            for key in old:
                self._unwait(ns, key)
            if old:
                self.stats["waiting_expired"] += len(old)
                self._reject(
                    "waiting_expired_batches",
                    now_ms,
                    f"{ns}: {len(old)} held over {self.settings.max_wait_ms} ms, dropped",
                )

    def _timestamps_ok(self, batch: DeltaBatch, now_ms: int) -> bool:
        """False (counted) if an LWW batch carries a timestamp too far in the future."""
        if not batch.newest:
            return True
        try:
            check_drift(batch.newest, now_ms, self.settings.max_clock_drift_ms)
        except ClockDriftError as exc:
            self._drifting[batch.origin] = now_ms
            self._reject("rejected_clock_drift", now_ms, str(exc))
            return False
        return True

    def _apply_ready(self, batch: DeltaBatch, data: bytes) -> None:
        if self._group is not None:  # on_messages applies it with the others of the group
            self._group.append((batch, data))
            ns = batch.namespace
            joined = self._context(ns).join(batch.rest)
            self._group_ctx[ns] = joined.with_run(batch.origin, batch.first, batch.last)
            return
        if self.replica.apply_batch(batch, data):
            self.stats["batches_applied"] += 1
        else:
            self.stats["duplicates"] += 1

    def _drain(self, ns: str) -> None:
        """Apply the waiting batches of ``ns`` that have become causally ready."""
        waiting = self._waiting.get(ns) if ns not in self._sessions else None
        progress = True
        while waiting and progress:
            progress = False
            for key, (batch, data, _) in list(waiting.items()):
                ctx = self._context(ns)
                if all(Dot(batch.origin, s) in ctx for s in range(batch.first, batch.last + 1)):
                    self._unwait(ns, key)
                elif _causally_ready(batch, ctx):
                    self._unwait(ns, key)
                    self._apply_ready(batch, data)
                    progress = True

    def _coalesce(
        self, ns: str, logged: Sequence[bytes], now_ms: int, origin: str | None = None
    ) -> list[bytes] | None:
        """One frame joining consecutive batches of ``origin`` (this node by default);
        None when they are not one contiguous run: send them as they are.

        Only for the node's own commits found at one flush. Joining them can never make
        a dependency cycle between frames: every dot their contexts name from another
        origin was applied here before the flush, so it travelled in a frame that was
        published before this one. (A frame of old logged batches has no such
        guarantee; repair replies use :meth:`_coalesce_runs`.)"""
        origin = self.node_id if origin is None else origin
        limit = self.settings.publish_coalesce_max_bytes
        if len(logged) < 2 or any(len(b) > limit for b in logged):
            return None
        batches = self._decode_logged(ns, logged, now_ms)
        if batches is None:
            return None
        if any(b.origin != origin for b in batches) or any(
            a.last + 1 != b.first for a, b in itertools.pairwise(batches)
        ):
            return None
        return [_joined(ns, batches)]

    def _coalesce_runs(self, ns: str, logged: Sequence[bytes], origin: str) -> list[bytes]:
        """``logged`` (contiguous batches of ``origin``, oldest first) as few frames as
        causal delivery allows: each frame joins a run whose later batches observed no
        dot of another origin that the run's first batch had not observed.

        Why the rule. A receiver holds a batch until every dot its context names is
        applied. Joining *any* consecutive logged batches of origin A makes a frame that
        needs everything the last of them observed, e.g. B's seqs up to 300; B's frame
        joined the same way needs A's up to 300; each waits for the other forever
        (this was a restarted node that never caught up, with writers sharing keys).
        With the rule, a frame needs only what its first batch needed, all of it
        causally before that batch, so frames of different origins cannot wait on each
        other in a cycle, and a receiver that lacks them can always apply one next."""
        limit = self.settings.publish_coalesce_max_bytes
        batches = self._decode_logged(ns, logged, 0)
        if batches is None or any(b.origin != origin for b in batches):
            return list(logged)
        out: list[bytes] = []
        run: list[DeltaBatch] = []
        raw: list[bytes] = []
        for batch, data in zip(batches, logged, strict=True):
            if run and (
                len(data) > limit
                or run[-1].last + 1 != batch.first
                or not _observes_nothing_new(batch, run[0])
            ):
                out.append(raw[0] if len(run) == 1 else _joined(ns, run))
                run, raw = [], []
            if len(data) > limit:
                out.append(data)
                continue
            run.append(batch)
            raw.append(data)
        if run:
            out.append(raw[0] if len(run) == 1 else _joined(ns, run))
        return out

    def _decode_logged(
        self, ns: str, logged: Sequence[bytes], now_ms: int
    ) -> list[DeltaBatch] | None:
        try:
            batches = [decode_message(b) for b in logged]
        except DecodeError as exc:
            self._reject("corrupt_log", now_ms, f"{ns}: {exc}")
            return None
        if not all(isinstance(b, DeltaBatch) for b in batches):
            return None
        return batches

    # -- digests and repair -----------------------------------------------------------------

    def _digest(self) -> Digest:
        items = tuple(
            (ns, type_name, dict(self.replica.context(ns).vv))
            for ns, type_name in sorted(self.replica.namespaces().items())
            if self.holds(ns)
        )
        return Digest(self.node_id, items)

    def _on_digest(self, msg: Digest, now_ms: int) -> list[Outgoing]:
        if msg.sender == self.node_id:
            return []
        if msg.sender not in self._peers:
            self.stats["digests_from_unknown"] += 1
            return []
        self.stats["digests_received"] += 1
        out: list[Outgoing] = []
        vvs: dict[str, dict[str, int]] = {}
        for ns, type_name, vv in msg.namespaces:
            if not self.holds(ns) or not self._ensure_namespace(ns, type_name, now_ms):
                continue
            vvs[ns] = vv
            for origin, top in vv.items():
                if origin != self.node_id:
                    self._observe(ns, origin, top, now_ms)
            if (
                not self.replica.context(ns)
                and any(vv.values())
                and ns not in self._sessions
                and now_ms >= self._session_not_before.get(ns, 0)
            ):
                # Bootstrap: we hold nothing here; reconciling ranges costs O(state),
                # replaying the log would cost O(history).
                out.extend(self._start_session(msg.sender, ns, now_ms))
        self._digests[msg.sender] = vvs
        out.extend(self._schedule_repairs(now_ms))
        return out

    def _observe(self, ns: str, origin: str, top: int, now_ms: int) -> None:
        seen = self._seen.setdefault((ns, origin), [])
        if not seen or top > seen[-1][1]:
            seen.append((now_ms, top))

    def _observe_clouds(self, now_ms: int) -> None:
        """A dot in our cloud means the seqs below it are missing: evidence of a gap."""
        for ns in self.replica.namespaces():
            ctx = self.replica.context(ns)
            for origin in {d.replica for d in ctx.cloud}:
                if origin != self.node_id:
                    self._observe(ns, origin, ctx.max_seq(origin), now_ms)

    def _repairable_top(self, key: tuple[str, str], now_ms: int) -> int:
        """Highest seq seen missing at least ``repair_grace_ms`` ago (0 if none)."""
        seen = self._seen[key]
        cutoff = now_ms - self.settings.repair_grace_ms
        aged = [i for i, (at, _) in enumerate(seen) if at <= cutoff]
        if not aged:
            return 0
        del seen[: aged[-1]]  # older observations are subsumed by the newest aged one
        return seen[0][1]

    def _schedule_repairs(self, now_ms: int) -> list[Outgoing]:
        out: list[Outgoing] = []
        for key in sorted(self._seen):
            ns, origin = key
            if len(self._repairs) >= self.settings.max_inflight_repairs:
                break
            ctx = self.replica.context(ns)
            if self._seen[key][-1][1] <= ctx.vv.get(origin, 0):
                del self._seen[key]  # caught up with everything ever seen of it
                continue
            if ns in self._sessions or now_ms < self._not_before.get(key, 0):
                continue
            top = self._repairable_top(key, now_ms)
            busy = [
                (r.first, r.last) for r in self._repairs.values() if (r.namespace, r.origin) == key
            ]
            for first, last in _spans(ctx, origin, top):
                if len(self._repairs) >= self.settings.max_inflight_repairs:
                    break
                last = min(last, first + self.settings.max_repair_span - 1)
                if any(a <= last and first <= b for a, b in busy):
                    continue
                peer = self._repair_peer(ns, origin, first)
                if peer is None:
                    continue
                rid = self._new_id()
                self._repairs[rid] = _Repair(
                    peer, ns, origin, first, last, now_ms + self.settings.repair_timeout_ms
                )
                out.append(Send(peer, encode_message(RepairRequest(rid, ns, origin, first, last))))
                self.stats["repairs_requested"] += 1
        return out

    def _repair_peer(self, ns: str, origin: str, first: int) -> str | None:
        """A peer whose digest shows ``first``: the origin first, then the others in turn."""
        able = sorted(
            p for p in self._peers if self._digests.get(p, {}).get(ns, {}).get(origin, 0) >= first
        )
        if not able:
            return None
        if origin in able:
            able.remove(origin)
            able.insert(0, origin)
        return able[self._attempts[(ns, origin)] % len(able)]

    def _serve_repair(self, peer: str, msg: RepairRequest) -> list[Outgoing]:
        if msg.namespace not in self.replica.namespaces():
            self.stats["repairs_unknown_namespace"] += 1
            return []
        logged = self.replica.log_batches(msg.namespace, msg.origin, msg.first, msg.last)
        if logged is None:
            self.stats["log_gaps_sent"] += 1
            gap = LogGap(msg.request, msg.namespace, msg.origin, msg.first, msg.last)
            return [Send(peer, encode_message(gap))]
        self.stats["repairs_served"] += 1
        batches = tuple(logged[: self.settings.max_repair_batches])
        if self.settings.publish_flush:
            # Contiguous batches of one origin travel as few frames as causal delivery
            # allows (see _causal_runs): one envelope, one context per run.
            batches = tuple(self._coalesce_runs(msg.namespace, batches, msg.origin))
        return [Send(peer, encode_message(RepairReply(msg.request, msg.namespace, batches)))]

    def _on_repair_reply(self, peer: str, msg: RepairReply, now_ms: int) -> None:
        rep = self._repairs.pop(msg.request, None)
        if rep is None or rep.peer != peer or rep.namespace != msg.namespace:
            self.stats["repair_replies_unexpected"] += 1  # late or duplicated; still data
        applied = 0
        for data in msg.batches:
            try:
                batch = decode_message(data)
            except DecodeError as exc:
                self._reject("decode_errors", now_ms, f"batch in repair from {peer!r}: {exc}")
                continue
            if not isinstance(batch, DeltaBatch) or batch.namespace != msg.namespace:
                self._reject("rejected_invalid", now_ms, f"repair from {peer!r} holds a stranger")
                continue
            applied += self._apply_batch(batch, data, now_ms)
        if rep is not None and applied == 0:
            # Nothing usable (e.g. deferred for clock drift): do not ask again at once.
            key = (rep.namespace, rep.origin)
            self._not_before[key] = now_ms + self.settings.repair_timeout_ms

    def _on_log_gap(self, peer: str, msg: LogGap, now_ms: int) -> list[Outgoing]:
        rep = self._repairs.pop(msg.request, None)
        if rep is None or rep.peer != peer:
            self.stats["log_gaps_unexpected"] += 1
            return []
        self.stats["log_gaps"] += 1
        if (
            msg.namespace in self._sessions
            or peer not in self._peers
            or now_ms < self._session_not_before.get(msg.namespace, 0)
        ):
            return []
        return self._start_session(peer, msg.namespace, now_ms)

    # -- range reconciliation ------------------------------------------------------------------

    def _start_session(self, peer: str, ns: str, now_ms: int) -> list[Outgoing]:
        session = _Session(self._new_id(), peer, ns, pending=[(0, HASH_SPACE)], started=now_ms)
        self._sessions[ns] = session
        self.stats["range_sessions_started"] += 1
        # Rare (a bootstrap, or a peer's log trimmed past what we miss) and worth seeing.
        log.info("sync %s: reconciling %s with %s", self.node_id, ns, peer)
        return self._send_query(session, now_ms)

    def _send_query(self, session: _Session, now_ms: int) -> list[Outgoing]:
        cap = self.settings.range_max_query_ranges
        session.asked, session.pending = session.pending[:cap], session.pending[cap:]
        mine = self.replica.fingerprints(session.namespace, session.asked)
        summaries = tuple(
            RangeSummary(lo, hi, fp, count)
            for (lo, hi), (fp, count) in zip(session.asked, mine, strict=True)
        )
        query = RangeQuery(
            session.id, session.round, session.namespace, session.base is None, summaries
        )
        session.query = encode_message(query)
        session.deadline = now_ms + self.settings.range_session_timeout_ms
        session.retries = 0
        return [Send(session.peer, session.query)]

    def _serve_range_query(self, peer: str, msg: RangeQuery) -> list[Outgoing]:
        ns = msg.namespace
        if ns not in self.replica.namespaces():
            self.stats["range_queries_unknown_namespace"] += 1
            return []
        # The base context is read BEFORE any range (see the module docstring).
        context = self.replica.context(ns) if msg.want_context else None
        answers: list[RangeAnswer] = []
        budget = self.settings.range_max_reply_entries
        bytes_left = self.settings.range_max_reply_bytes
        for theirs in msg.ranges:
            lo, hi = theirs.lo, theirs.hi
            # One range at a time: a reply that fills its budget early stops here, without
            # computing fingerprints (a scan below bucket size) it would not send.
            [(fp, count)] = self.replica.fingerprints(ns, [(lo, hi)])
            if (fp, count) == (theirs.fingerprint, theirs.count):
                answers.append(RangeAnswer(lo, hi, RANGE_EQUAL, fingerprint=fp, count=count))
                continue
            parts = split_range(lo, hi, self.settings.range_fanout)
            ship = (
                count <= self.settings.range_leaf_entries
                or len(parts) < 2
                or (
                    self.settings.range_ship_to_empty
                    and theirs.count == 0
                    and count <= self.settings.range_max_reply_entries
                )
            )
            packed = None
            if ship:
                if answers and count > budget:
                    break  # the asker asks again for what is left unanswered
                packed = self.replica.read_range_packed(ns, lo, hi, bytes_left)
                if packed is None:
                    if answers:
                        break
                    # Alone over the byte budget: split it if it can be, else ship it
                    # whatever its size (a key's value is bounded by max_value_bytes).
                    ship = len(parts) < 2
                    self.stats["ranges_over_reply_bytes"] += 1
                    if ship:
                        packed = self.replica.read_range_packed(ns, lo, hi, None)
            if ship:
                assert packed is not None
                budget -= packed.count
                bytes_left -= len(packed.data)
                answers.append(RangeAnswer(lo, hi, RANGE_ENTRIES, packed=packed))
                self.stats["ranges_shipped"] += 1
                self.stats["entries_shipped"] += packed.count
            else:
                fps = self.replica.fingerprints(ns, parts)
                sub = tuple(
                    RangeSummary(a, b, f, c) for (a, b), (f, c) in zip(parts, fps, strict=True)
                )
                answers.append(RangeAnswer(lo, hi, RANGE_SPLIT, parts=sub))
                self.stats["ranges_split"] += 1
        self.stats["range_queries_served"] += 1
        reply = RangeReply(msg.session, msg.round, ns, context, tuple(answers))
        return [Send(peer, encode_message(reply))]

    def _on_range_reply(self, peer: str, msg: RangeReply, now_ms: int) -> list[Outgoing]:
        session = self._sessions.get(msg.namespace)
        if (
            session is None
            or session.id != msg.session
            or session.peer != peer
            or session.round != msg.round
        ):
            self.stats["range_replies_stale"] += 1
            return []
        ns = msg.namespace
        base = session.base if session.base is not None else msg.context
        asked = set(session.asked)
        answered = [(a.lo, a.hi) for a in msg.answers]
        type_name = self.replica.namespaces().get(ns)
        if (
            base is None
            or len(set(answered)) != len(answered)
            or not asked.issuperset(answered)
            or any(a.packed is not None and a.packed.type_name != type_name for a in msg.answers)
        ):
            # Validate everything before applying anything: a bad reply changes nothing.
            self._reject("rejected_range_invalid", now_ms, f"{ns} reply from {peer!r}")
            return []
        session.base = base
        differing: list[tuple[int, int]] = []
        equal = [a for a in msg.answers if a.kind == RANGE_EQUAL]
        now_mine = self.replica.fingerprints(ns, [(a.lo, a.hi) for a in equal])
        for answer, own in zip(equal, now_mine, strict=True):
            # Equal to what we hold *now*, not when we asked: our local writes since
            # then are not in what the sender saw.
            if own == (answer.fingerprint, answer.count):
                self.stats["ranges_equal"] += 1
            else:
                differing.append((answer.lo, answer.hi))
        for answer in msg.answers:
            if answer.kind == RANGE_ENTRIES and answer.packed is not None:
                # Kept as it came, checked when the session applies it.
                session.kept.append((answer.lo, answer.hi, answer.packed))
                session.shipped += answer.packed.count
                session.kept_bytes += len(answer.packed.data)
                self.stats["ranges_staged"] += 1
            elif answer.kind == RANGE_SPLIT:
                bounds = [(p.lo, p.hi) for p in answer.parts]
                mine = self.replica.fingerprints(ns, bounds)
                for part, own in zip(answer.parts, mine, strict=True):
                    if own != (part.fingerprint, part.count):
                        differing.append((part.lo, part.hi))
        unanswered = [r for r in session.asked if r not in set(answered)]
        session.pending = unanswered + differing + session.pending
        session.asked = []
        session.round += 1
        if session.pending:
            return self._send_query(session, now_ms)
        # Every range resolved: now, and only now, the staged ranges are applied and the
        # first reply's context joins ours (one engine step: nothing interleaves).
        del self._sessions[ns]
        ranges = _StagedRanges(
            session.kept, base, now_ms, self.settings.max_clock_drift_ms, self.keepalive
        )
        try:
            self.replica.apply_ranges(ns, ranges, base, session.kept_bytes)
        except Error as exc:
            # A shipped entry broke a rule (checked only now): nothing was applied. Not
            # restarted at once, so a peer that keeps sending it costs little.
            reason = (
                "rejected_clock_drift"
                if isinstance(exc, ClockDriftError)
                else "rejected_range_invalid"
            )
            self._reject(reason, now_ms, f"{ns} ranges from {peer!r}: {exc}")
            self.stats["range_sessions_abandoned"] += 1
            self._session_not_before[ns] = now_ms + self.settings.range_session_timeout_ms
            self._drain(ns)
            return []
        self.stats["ranges_applied"] += len(session.kept)
        self.stats["range_sessions_completed"] += 1
        log.info(
            "sync %s: %s reconciled with %s: %d rounds, %d entries received in %.1f s, applied",
            self.node_id,
            ns,
            session.peer,
            session.round,
            session.shipped,
            (now_ms - session.started) / 1000,
        )
        self._drain(ns)
        return []

    # -- liveness ------------------------------------------------------------------------------

    def behind(self) -> dict[str, dict[str, int]]:
        """Namespace -> ``since`` (ms it fell behind), ``missing`` (seqs peers' digests
        show that it lacks) and ``progress_at`` (ms it last gained a dot), for each
        namespace in which this node is behind a peer (for status and inspection)."""
        return {
            ns: {"since": b.since, "missing": b.missing, "progress_at": b.progress_at}
            for ns, b in sorted(self._behind.items())
        }

    def _check_liveness(self, now_ms: int) -> list[Outgoing]:
        """The safety net under repair: whatever the reason (a dependency that cannot be
        met, a peer that answers nothing useful, a bug), a namespace that stays behind
        without progress for ``stuck_after_ms`` is reconciled by ranges."""
        out: list[Outgoing] = []
        ahead = self._peers_ahead(now_ms)
        for ns in [ns for ns in self._behind if ns not in ahead]:
            del self._behind[ns]
        for ns, by_peer in sorted(ahead.items()):
            ctx = self.replica.context(ns)
            held = sum(s for r, s in ctx.vv.items() if r != self.node_id) + sum(
                1 for d in ctx.cloud if d.replica != self.node_id
            )
            missing = max(by_peer.values())
            state = self._behind.get(ns)
            if state is None:
                self._behind[ns] = _Behind(now_ms, missing, held, now_ms)
                continue
            state.missing = missing
            if held > state.held or ns in self._sessions:
                # A running session is progress of its own (bounded by its timeouts).
                state.held, state.progress_at = held, now_ms
                continue
            if now_ms - state.progress_at < self.settings.stuck_after_ms:
                continue
            if now_ms < self._session_not_before.get(ns, 0):
                continue
            # Furthest ahead first; rotate on each fallback so one bad peer cannot hold us.
            peers = sorted(by_peer, key=lambda p: (-by_peer[p], p))
            peer = peers[self._fallbacks[ns] % len(peers)]
            self._fallbacks[ns] += 1
            self.stats["stuck_fallbacks"] += 1
            log.warning(
                "sync %s: %s stuck %d seqs behind %s for %.1f s with no progress "
                "(%d batches held); reconciling by ranges",
                self.node_id,
                ns,
                by_peer[peer],
                peer,
                (now_ms - state.progress_at) / 1000,
                len(self._waiting.get(ns, {})),
            )
            state.progress_at = now_ms  # the next fallback only after another full bound
            out.extend(self._start_session(peer, ns, now_ms))
        return out

    def _peers_ahead(self, now_ms: int) -> dict[str, dict[str, int]]:
        """Namespace -> peer -> seqs its digest shows that we lack, for peers ahead.

        Origins whose batches were refused for clock drift lately are left out: they
        are deferred on purpose (applied once local time catches up), not stuck."""
        recent = now_ms - self.settings.stuck_after_ms
        drifting = {o for o, at in self._drifting.items() if at >= recent}
        for origin in [o for o, at in self._drifting.items() if at < recent]:
            del self._drifting[origin]
        ahead: dict[str, dict[str, int]] = {}
        for peer in sorted(self._peers):
            for ns, vv in self._digests.get(peer, {}).items():
                ctx = self.replica.context(ns)
                lacking = sum(
                    b - a + 1
                    for origin, top in vv.items()
                    if origin != self.node_id and origin not in drifting
                    for a, b in _spans(ctx, origin, top)
                )
                if lacking:
                    ahead.setdefault(ns, {})[peer] = lacking
        return ahead

    # -- log trimming ----------------------------------------------------------------------------

    def _trim_logs(self) -> None:
        for ns in sorted(self.replica.namespaces()):
            reports = [self._digests[p][ns] for p in self._peers if ns in self._digests.get(p, {})]
            # Trim by acknowledgement only once every known peer has reported a digest.
            if reports and all(p in self._digests for p in self._peers):
                for origin in self.replica.context(ns).vv:
                    upto = min(vv.get(origin, 0) for vv in reports)
                    if upto > self._trimmed.get((ns, origin), 0):
                        self._trimmed[(ns, origin)] = upto
                        self.stats["log_trimmed"] += self.replica.trim_log(ns, origin, upto)
            self.stats["log_bounded"] += self.replica.bound_log(ns, self.settings.max_log_batches)

    # -- small helpers ---------------------------------------------------------------------

    def _ensure_namespace(self, ns: str, type_name: str, now_ms: int) -> bool:
        try:
            self.replica.ensure_namespace(ns, type_name)
        except Error as exc:  # TypeMismatch, or a type this build does not know
            self._reject("rejected_type_mismatch", now_ms, f"{ns}: {exc}")
            return False
        return True

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _count_sent(self, out: list[Outgoing]) -> list[Outgoing]:
        for item in out:
            self.stats["bytes_sent"] += len(item.data)
            self.stats["messages_sent"] += 1
        return out

    def _reject(self, reason: str, now_ms: int, detail: str) -> None:
        """Count a rejection; log it at most once per reason per ``log_interval_ms``."""
        self.stats[reason] += 1
        last = self._last_logged.get(reason)
        if last is None or now_ms - last >= self.settings.log_interval_ms:
            self._last_logged[reason] = now_ms
            log.warning(
                "sync %s: %s (%s; %d so far)", self.node_id, reason, detail, self.stats[reason]
            )


def _causally_ready(batch: DeltaBatch, ctx: CausalContext) -> bool:
    """Every dot the batch's context names, beyond its own seqs, is in ``ctx``."""
    own, lo, hi = batch.origin, batch.first, batch.last
    theirs = batch.rest  # the batch's own run needs nothing here
    for replica, top in theirs.vv.items():
        have = ctx.vv.get(replica, 0)
        for seq in range(have + 1, top + 1):
            if not (replica == own and lo <= seq <= hi) and Dot(replica, seq) not in ctx:
                return False
    return all((d.replica == own and lo <= d.seq <= hi) or d in ctx for d in theirs.cloud)


class _StagedRanges:
    """A session's kept ranges for ``Replica.apply_ranges``, as :class:`ShippedEntries`;
    iterable more than once (a replica retries a transaction after growing its map)."""

    def __init__(
        self,
        kept: list[tuple[int, int, PackedRange]],
        base: CausalContext,
        now_ms: int,
        max_drift_ms: int,
        keepalive: Callable[[], None] | None,
    ) -> None:
        self._kept, self._base, self._keepalive = kept, base, keepalive
        self._now_ms, self._max_drift_ms = now_ms, max_drift_ms

    def __iter__(self) -> Iterator[tuple[int, int, ShippedEntries]]:
        for lo, hi, packed in self._kept:
            yield lo, hi, ShippedEntries(packed, self._base, self._now_ms, self._max_drift_ms)
            if self._keepalive is not None:
                self._keepalive()


def _joined(ns: str, batches: Sequence[DeltaBatch]) -> bytes:
    """One encoded batch joining contiguous ``batches`` of one origin."""
    delta: DotMap[Any] = batches[0].delta
    for b in batches[1:]:
        delta = delta.join(b.delta)
    return encode_message(
        DeltaBatch(ns, batches[0].origin, batches[0].first, batches[-1].last, delta)
    )


def _observes_nothing_new(batch: DeltaBatch, first: DeltaBatch) -> bool:
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


def _spans(ctx: CausalContext, origin: str, top: int) -> list[tuple[int, int]]:
    """The inclusive seq ranges of ``origin`` up to ``top`` missing from ``ctx``."""
    if top <= ctx.vv.get(origin, 0):
        return []
    return ctx.missing_from(CausalContext({origin: top})).get(origin, [])
