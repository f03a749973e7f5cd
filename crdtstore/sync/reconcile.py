"""Range reconciliation, both sides: the fallback when a log no longer holds a gap, and
the bootstrap of a node that holds nothing of a namespace. Cost grows with the
difference between the two replicas, not with their size.

Rule 1: a session's phase changes only by :meth:`Session.fire` along
:data:`TRANSITIONS`; an event not listed for the phase is a bug, and raises. Rule 2:
nothing a session receives reaches the replica before its phase is ``APPLYING``, and
the sender's context is joined only on the way to ``DONE``. Rule 3: at most one session
runs per namespace, and ``RangeReconciler`` holds exactly the sessions in an asking
phase (``OPENING``, ``NARROWING``): a namespace it holds takes no batch and no repair.

Theory of operation
-------------------
The asker sends the fingerprints of key-hash ranges (a ``RangeQuery``); the sender
(:class:`RangeServer`, which keeps no state) answers each range as equal, as its entries
(when it holds at most ``range_leaf_entries`` there, or the asker holds nothing there:
``range_ship_to_empty``), or as ``range_fanout`` sub-range fingerprints, which the asker
compares with its own and asks about again where they differ.

Why the sender's context travels with the entries, and when it may be merged. A delta
lists every key its context touches; a full state does not (it forgets the keys of
removed dots). Shipping "the entries you have not seen" would therefore miss removes of
entries both sides saw. So a shipped range carries the sender's context, and
``Replica.apply_range`` judges removals *inside the range* by it, while adding to the
receiver's context only the dots it actually received: the sender's context also covers
keys in ranges not yet received, and marking their dots seen would make the receiver
drop those adds forever when they arrive. Only when *every* range of the session is
resolved (equal fingerprints or entries received) does the asker apply what it kept and
join the sender's context, and only the one from the session's *first* reply (the
``OPENING`` phase asks for it), a snapshot the sender took before reading any range:
every range was read at or after it, so each dot it holds is, on its key, either live
in what we now hold or removed by what we applied. Shipped entries are kept as the
bytes they came in and checked only when the session applies them
(:mod:`crdtstore.sync.shipped`); one that breaks a rule fails the whole apply, which
then changes nothing (``FAILED``), and no session starts there for
``range_session_timeout_ms``. A later snapshot may hold dots added to ranges already
resolved, and a session interrupted midway has unresolved ranges; merging in either case
would lose adds. An ``ABANDONED`` session therefore merges nothing and applies nothing; a
later gap starts a new one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from crdtstore.crdt import CausalContext
from crdtstore.errors import ClockDriftError, Error, StorageError
from crdtstore.sync.fingerprint import HASH_SPACE, split_range
from crdtstore.sync.messages import (
    RANGE_ENTRIES,
    RANGE_EQUAL,
    RANGE_SPLIT,
    PackedRange,
    RangeAnswer,
    RangeQuery,
    RangeReply,
    RangeSummary,
    encode_message,
)
from crdtstore.sync.outgoing import Outgoing, Send
from crdtstore.sync.rejections import Rejections, log
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings
from crdtstore.sync.shipped import ShippedEntries

Progress = Callable[[], None]
"""Called between the kept ranges while a session applies them, so the caller's thread
can do what must not wait (a node's heartbeat) during a long apply; it must touch neither
the replica nor the engine."""


class Phase(Enum):
    OPENING = "opening"  # the first query is out; the sender's context is not fixed yet
    NARROWING = "narrowing"  # the base context is fixed; asking where ranges still differ
    APPLYING = "applying"  # every range resolved: the kept ranges are being applied
    DONE = "done"  # applied, and the base context joined
    FAILED = "failed"  # a shipped entry broke a rule at the apply: nothing was applied
    ABANDONED = "abandoned"  # its peer stopped answering or left: nothing was applied


class Event(Enum):
    REPLY = "reply"  # a valid reply after which ranges remain to ask about
    RESOLVED = "resolved"  # a valid reply that resolved the last ranges
    TIMEOUT = "timeout"  # a round went unanswered: asked again
    EXHAUSTED = "exhausted"  # a round went unanswered ``range_session_retries`` times
    PEER_GONE = "peer gone"  # the peer left the replication group
    APPLIED = "applied"
    APPLY_FAILED = "apply failed"


_ASKING: dict[Event, Phase] = {
    Event.REPLY: Phase.NARROWING,
    Event.RESOLVED: Phase.APPLYING,
    Event.EXHAUSTED: Phase.ABANDONED,
    Event.PEER_GONE: Phase.ABANDONED,
}

TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.OPENING: {**_ASKING, Event.TIMEOUT: Phase.OPENING},
    Phase.NARROWING: {**_ASKING, Event.TIMEOUT: Phase.NARROWING},
    Phase.APPLYING: {Event.APPLIED: Phase.DONE, Event.APPLY_FAILED: Phase.FAILED},
}
"""Phase -> event -> next phase. A phase with no entry is final."""

ASKING_PHASES = frozenset({Phase.OPENING, Phase.NARROWING})

ENDINGS: dict[Phase, str] = {
    Phase.DONE: "range_sessions_completed",
    Phase.FAILED: "range_sessions_abandoned",
    Phase.ABANDONED: "range_sessions_abandoned",
}
"""The counter each final phase adds to."""


@dataclass(slots=True)
class Session:
    """The asker's side of one range reconciliation session."""

    id: int
    peer: str
    namespace: str
    started: int  # ms
    phase: Phase = Phase.OPENING
    round: int = 0
    base: CausalContext | None = None  # the sender's context from the first reply
    pending: list[tuple[int, int]] = field(default_factory=lambda: [(0, HASH_SPACE)])
    asked: list[tuple[int, int]] = field(default_factory=list)  # in the current query
    query: bytes = b""
    # Shipped ranges, applied only when the session completes, as the bytes they came in
    # (a fraction of their decoded size): checked only then (see crdtstore.sync.shipped).
    kept: list[tuple[int, int, PackedRange]] = field(default_factory=list)
    shipped: int = 0  # entries in the kept ranges
    kept_bytes: int = 0
    deadline: int = 0
    retries: int = 0

    def fire(self, event: Event) -> Phase:
        try:
            self.phase = TRANSITIONS[self.phase][event]
        except KeyError:
            raise RuntimeError(
                f"range session {self.id}: no transition on {event.value} in {self.phase.value}"
            ) from None
        return self.phase


class RangeReconciler:
    """The asking side: one session at most per namespace, driven by replies and ticks.

    Methods that can end sessions return the namespaces whose session ended: their held
    batches may be ready now (see :class:`crdtstore.sync.delivery.CausalBuffer`)."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        settings: SyncSettings,
        stats: Counter[str],
        reject: Rejections,
        ids: Iterator[int],
    ) -> None:
        self._node_id = node_id
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._reject = reject
        self._ids = ids
        self._sessions: dict[str, Session] = {}  # namespace -> its one asking session
        self._not_before: dict[str, int] = {}  # namespace -> ms, after a FAILED apply

    def __contains__(self, namespace: object) -> bool:
        """Whether a session is asking about ``namespace``."""
        return namespace in self._sessions

    def session(self, namespace: str) -> Session | None:
        return self._sessions.get(namespace)

    def peers(self) -> dict[str, str]:
        """Namespace -> peer of each session running."""
        return {ns: s.peer for ns, s in self._sessions.items()}

    def may_start(self, namespace: str, now_ms: int) -> bool:
        return namespace not in self._sessions and now_ms >= self._not_before.get(namespace, 0)

    def start(self, peer: str, namespace: str, now_ms: int) -> list[Outgoing]:
        session = Session(next(self._ids), peer, namespace, started=now_ms)
        self._sessions[namespace] = session
        self._stats["range_sessions_started"] += 1
        # Rare (a bootstrap, or a peer's log trimmed past what we miss) and worth seeing.
        log.info("sync %s: reconciling %s with %s", self._node_id, namespace, peer)
        return self._send_query(session, now_ms)

    def tick(self, now_ms: int) -> tuple[list[Outgoing], list[str]]:
        """Ask again where a round went unanswered; give up after the retries."""
        out: list[Outgoing] = []
        ended: list[str] = []
        for ns, session in list(self._sessions.items()):
            if now_ms < session.deadline:
                continue
            if session.retries >= self._settings.range_session_retries:
                self._fire(session, Event.EXHAUSTED)
                log.warning(
                    "sync %s: gave up reconciling %s with %s", self._node_id, ns, session.peer
                )
                ended.append(ns)
                continue
            self._fire(session, Event.TIMEOUT)
            session.retries += 1
            session.deadline = now_ms + self._settings.range_session_timeout_ms
            self._stats["range_queries_resent"] += 1
            out.append(Send(session.peer, session.query))
        return out, ended

    def forget_peer(self, peer: str) -> list[str]:
        """Abandon the sessions with ``peer``; the namespaces they held."""
        ended = [ns for ns, s in self._sessions.items() if s.peer == peer]
        for ns in ended:
            self._fire(self._sessions[ns], Event.PEER_GONE)
        return ended

    def on_reply(
        self, peer: str, msg: RangeReply, now_ms: int, progress: Progress | None
    ) -> tuple[list[Outgoing], bool]:
        """Take a reply in; the next query, and whether the session ended (applied or
        failed). ``progress``: see :data:`Progress`."""
        session = self._sessions.get(msg.namespace)
        if (
            session is None
            or session.id != msg.session
            or session.peer != peer
            or session.round != msg.round
        ):
            self._stats["range_replies_stale"] += 1
            return [], False
        ns = msg.namespace
        base = session.base if session.base is not None else msg.context
        asked = set(session.asked)
        answered = [(a.lo, a.hi) for a in msg.answers]
        type_name = self._replica.namespaces().get(ns)
        if (
            base is None
            or len(set(answered)) != len(answered)
            or not asked.issuperset(answered)
            or any(a.packed is not None and a.packed.type_name != type_name for a in msg.answers)
        ):
            # Validate everything before keeping anything: a bad reply changes nothing.
            self._reject("rejected_range_invalid", now_ms, f"{ns} reply from {peer!r}")
            return [], False
        session.base = base
        differing = self._take_answers(session, msg)
        unanswered = [r for r in session.asked if r not in set(answered)]
        session.pending = unanswered + differing + session.pending
        session.asked = []
        session.round += 1
        if session.pending:
            self._fire(session, Event.REPLY)
            return self._send_query(session, now_ms), False
        # Every range resolved: now, and only now, the kept ranges are applied and the
        # first reply's context joins ours (one engine step: nothing interleaves).
        self._fire(session, Event.RESOLVED)
        self._apply(session, base, now_ms, progress)
        return [], True

    def _take_answers(self, session: Session, msg: RangeReply) -> list[tuple[int, int]]:
        """Keep the shipped ranges; the ranges that still differ."""
        ns = session.namespace
        differing: list[tuple[int, int]] = []
        equal = [a for a in msg.answers if a.kind == RANGE_EQUAL]
        now_mine = self._replica.fingerprints(ns, [(a.lo, a.hi) for a in equal])
        for answer, own in zip(equal, now_mine, strict=True):
            # Equal to what we hold *now*, not when we asked: our local writes since
            # then are not in what the sender saw.
            if own == (answer.fingerprint, answer.count):
                self._stats["ranges_equal"] += 1
            else:
                differing.append((answer.lo, answer.hi))
        for answer in msg.answers:
            if answer.kind == RANGE_ENTRIES and answer.packed is not None:
                # Kept as it came, checked when the session applies it.
                session.kept.append((answer.lo, answer.hi, answer.packed))
                session.shipped += answer.packed.count
                session.kept_bytes += len(answer.packed.data)
                self._stats["ranges_staged"] += 1
            elif answer.kind == RANGE_SPLIT:
                bounds = [(p.lo, p.hi) for p in answer.parts]
                mine = self._replica.fingerprints(ns, bounds)
                for part, own in zip(answer.parts, mine, strict=True):
                    if own != (part.fingerprint, part.count):
                        differing.append((part.lo, part.hi))
        return differing

    def _apply(
        self, session: Session, base: CausalContext, now_ms: int, progress: Progress | None
    ) -> None:
        ns, peer = session.namespace, session.peer
        ranges = _StagedRanges(
            session.kept, base, now_ms, self._settings.max_clock_drift_ms, progress
        )
        try:
            self._replica.apply_ranges(ns, ranges, base, session.kept_bytes)
        except Error as exc:
            # A shipped entry broke a rule (checked only now), or this node cannot store
            # the ranges: nothing was applied. Not restarted at once, so a peer that keeps
            # sending it, or a full disk, costs little.
            if isinstance(exc, StorageError):
                self._reject.local_failure(now_ms, f"{ns} ranges from {peer!r}", exc)
            else:
                reason = (
                    "rejected_clock_drift"
                    if isinstance(exc, ClockDriftError)
                    else "rejected_range_invalid"
                )
                self._reject(reason, now_ms, f"{ns} ranges from {peer!r}: {exc}")
            self._fire(session, Event.APPLY_FAILED)
            self._not_before[ns] = now_ms + self._settings.range_session_timeout_ms
            return
        self._stats["ranges_applied"] += len(session.kept)
        self._fire(session, Event.APPLIED)
        log.info(
            "sync %s: %s reconciled with %s: %d rounds, %d entries received in %.1f s, applied",
            self._node_id,
            ns,
            peer,
            session.round,
            session.shipped,
            (now_ms - session.started) / 1000,
        )

    def _fire(self, session: Session, event: Event) -> None:
        phase = session.fire(event)
        if phase not in ASKING_PHASES:
            self._sessions.pop(session.namespace, None)
        ending = ENDINGS.get(phase)
        if ending is not None:
            self._stats[ending] += 1

    def _send_query(self, session: Session, now_ms: int) -> list[Outgoing]:
        cap = self._settings.range_max_query_ranges
        session.asked, session.pending = session.pending[:cap], session.pending[cap:]
        mine = self._replica.fingerprints(session.namespace, session.asked)
        summaries = tuple(
            RangeSummary(lo, hi, fp, count)
            for (lo, hi), (fp, count) in zip(session.asked, mine, strict=True)
        )
        want_context = session.phase is Phase.OPENING
        query = RangeQuery(session.id, session.round, session.namespace, want_context, summaries)
        session.query = encode_message(query)
        session.deadline = now_ms + self._settings.range_session_timeout_ms
        session.retries = 0
        return [Send(session.peer, session.query)]


class _StagedRanges:
    """A session's kept ranges for ``Replica.apply_ranges``, as :class:`ShippedEntries`;
    iterable more than once (a replica retries a transaction after growing its map)."""

    def __init__(
        self,
        kept: list[tuple[int, int, PackedRange]],
        base: CausalContext,
        now_ms: int,
        max_drift_ms: int,
        progress: Progress | None,
    ) -> None:
        self._kept, self._base, self._progress = kept, base, progress
        self._now_ms, self._max_drift_ms = now_ms, max_drift_ms

    def __iter__(self) -> Iterator[tuple[int, int, ShippedEntries]]:
        for lo, hi, packed in self._kept:
            yield lo, hi, ShippedEntries(packed, self._base, self._now_ms, self._max_drift_ms)
            if self._progress is not None:
                self._progress()


class RangeServer:
    """The answering side: each query on its own, from the replica as it is (no state)."""

    def __init__(self, replica: Replica, settings: SyncSettings, stats: Counter[str]) -> None:
        self._replica = replica
        self._settings = settings
        self._stats = stats

    def serve(self, peer: str, msg: RangeQuery) -> list[Outgoing]:
        ns = msg.namespace
        if ns not in self._replica.namespaces():
            self._stats["range_queries_unknown_namespace"] += 1
            return []
        # The base context is read BEFORE any range (see the module docstring).
        context = self._replica.context(ns) if msg.want_context else None
        answers: list[RangeAnswer] = []
        budget = self._settings.range_max_reply_entries
        bytes_left = self._settings.range_max_reply_bytes
        for theirs in msg.ranges:
            lo, hi = theirs.lo, theirs.hi
            # One range at a time: a reply that fills its budget early stops here, without
            # computing fingerprints (a scan below bucket size) it would not send.
            [(fp, count)] = self._replica.fingerprints(ns, [(lo, hi)])
            if (fp, count) == (theirs.fingerprint, theirs.count):
                answers.append(RangeAnswer(lo, hi, RANGE_EQUAL, fingerprint=fp, count=count))
                continue
            parts = split_range(lo, hi, self._settings.range_fanout)
            ship = self._ships_whole(count, theirs.count, len(parts))
            packed = None
            if ship:
                if answers and count > budget:
                    break  # the asker asks again for what is left unanswered
                packed = self._replica.read_range_packed(ns, lo, hi, bytes_left)
                if packed is None:
                    if answers:
                        break
                    # Alone over the byte budget: split it if it can be, else ship it
                    # whatever its size (a key's value is bounded by max_value_bytes).
                    ship = len(parts) < 2
                    self._stats["ranges_over_reply_bytes"] += 1
                    if ship:
                        packed = self._replica.read_range_packed(ns, lo, hi, None)
            if ship:
                assert packed is not None
                budget -= packed.count
                bytes_left -= len(packed.data)
                answers.append(RangeAnswer(lo, hi, RANGE_ENTRIES, packed=packed))
                self._stats["ranges_shipped"] += 1
                self._stats["entries_shipped"] += packed.count
            else:
                fps = self._replica.fingerprints(ns, parts)
                sub = tuple(
                    RangeSummary(a, b, f, c) for (a, b), (f, c) in zip(parts, fps, strict=True)
                )
                answers.append(RangeAnswer(lo, hi, RANGE_SPLIT, parts=sub))
                self._stats["ranges_split"] += 1
        self._stats["range_queries_served"] += 1
        reply = RangeReply(msg.session, msg.round, ns, context, tuple(answers))
        return [Send(peer, encode_message(reply))]

    def _ships_whole(self, count: int, theirs: int, parts: int) -> bool:
        """Whether a differing range of ``count`` entries here (``theirs`` there) is
        answered with its entries rather than split into ``parts`` sub-ranges."""
        return (
            count <= self._settings.range_leaf_entries
            or parts < 2
            or (
                self._settings.range_ship_to_empty
                and theirs == 0
                and count <= self._settings.range_max_reply_entries
            )
        )
