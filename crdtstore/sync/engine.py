"""The replication protocol as a sans-I/O state machine: one node's engine.

Rule 1: everything that decides what one node sends, and when, lives in this package,
and this module only routes: each message type goes to the part that owns its
sub-protocol (:data:`SyncEngine._routes`), and the parts own their state. Rule 2: no
part does I/O or reads a clock or randomness: bytes, ticks and commits come in (each
with ``now_ms``), :class:`Publish` and :class:`Send` come out. The replica owns
persistence; the caller owns sockets, threads and heartbeats.

Theory of operation
-------------------
Every mutation at node ``i`` in namespace ``ns`` consumes the next seq of ``i`` there, and
the dot ``(i, seq)`` is the delta's id. So a replica's causal context per namespace *is*
the set of delta ids applied here: its version vector is the digest, a dot in its cloud is
the upper side of a gap, and ``CausalContext.missing_from`` names the seqs to repair. No
other sequence tracking exists. Deltas join in any order and any number of times, so
nothing below needs ordered or exactly-once delivery.

1. Fast path (:mod:`~crdtstore.sync.publish`). ``on_local_commit`` publishes the node's
   own batches not yet published, on the namespace's topic, one frame per namespace.
   A received batch is applied once causally ready, or held until it is
   (:mod:`~crdtstore.sync.delivery`); ``on_messages`` applies the ready batches of its
   frames in one replica commit.
2. Digest (here). Every ``digest_interval_ms`` the node publishes, on
   :data:`DIGEST_TOPIC`, its id and, per namespace it holds, a hash and total of its
   version vector (:mod:`~crdtstore.sync.digests`): its size depends on namespaces only,
   never on origins or state. A receiver that cannot tell the vector from the hash asks
   for it (``VectorRequest``). While a peer that reads only full vectors (protocol
   version 1, see ``set_digest_form``) is connected, the digest carries the vectors
   themselves. Peers' vectors are kept in :mod:`~crdtstore.sync.peers`.
3. Repair (:mod:`~crdtstore.sync.repair`). Seqs a digest or our cloud shows missing, for
   longer than ``repair_grace_ms``, are pulled from a peer's delta log.
4. Range reconciliation (:mod:`~crdtstore.sync.reconcile`), on ``LogGap``, when we hold
   nothing of a namespace a peer has data in, or when the liveness check
   (:mod:`~crdtstore.sync.liveness`) finds a namespace behind with no progress.
5. Log trimming (:mod:`~crdtstore.sync.trim`), at each digest.

Rejected, and counted in ``stats`` (never raised; :mod:`~crdtstore.sync.rejections`):
undecodable bytes; message types that are not the sync protocol's; batches whose origin
is this node (nobody else may speak for it), or that a publisher sent in another's
name, or that a peer sent directly; namespaces outside ``topics`` (we hold only those,
and never request, serve or accept others); LWW batches with a timestamp more than
``max_clock_drift_ms`` ahead (deferred: repair fetches them again once local time has
caught up; in a session's ranges, the session is given up and started again later);
namespace type conflicts; replies that break the protocol.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from crdtstore.crdt import check_drift
from crdtstore.errors import ClockDriftError, DecodeError, Error, StorageError
from crdtstore.sync.delivery import CausalDelivery
from crdtstore.sync.digests import vv_hash, vv_total
from crdtstore.sync.liveness import LivenessCheck
from crdtstore.sync.messages import (
    DeltaBatch,
    Digest,
    DigestSummary,
    Graft,
    Have,
    LogGap,
    Prune,
    RangeQuery,
    RangeReply,
    RepairReply,
    RepairRequest,
    VectorReply,
    VectorRequest,
    decode_message,
    encode_message,
)
from crdtstore.sync.outgoing import DIGEST_TOPIC, Frame, Outgoing, Publish, Send
from crdtstore.sync.peers import PeerDigests
from crdtstore.sync.publish import Publisher
from crdtstore.sync.reconcile import Progress, RangeReconciler, RangeServer
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.relay import BatchKey
from crdtstore.sync.relay_topics import DATA, Topic, parse_topic
from crdtstore.sync.relaying import RelayLinks
from crdtstore.sync.repair import RepairScheduler, RepairServer
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings
from crdtstore.sync.trim import LogTrimmer

__all__ = ["DIGEST_TOPIC", "Outgoing", "Progress", "Publish", "Send", "SyncEngine"]

RELAY_KINDS = (b"d", b"h")
"""The first bytes of relay topics (:mod:`.relay_topics`); a namespace's own topic may
start with them too, and :func:`parse_topic` tells them apart."""


class _Channel(Enum):
    PUBLISHED = "published"  # batches: only from a publisher, or inside a RepairReply
    DIRECT = "direct"  # a request or a reply, for a namespace this node holds
    EITHER = "either"  # digests: published, or sent to a peer that just joined


_QUIET_MESSAGES = (Digest, DigestSummary, VectorRequest)
"""What an idle neighbour sends every digest interval: a tick has work after one only if
it showed a gap, which ``RepairScheduler.pending`` tells; anything else may have changed
what a tick looks at (a context's cloud, a session), so the engine is ticked again soon."""


@dataclass(slots=True)
class _Received:
    """One frame as it came: from whom ("" if published), its bytes, when, the
    caller's progress hook for a long step it triggers, and for a published frame the
    publisher whose connection brought it and its relay topic (None if it has none)."""

    peer: str
    data: bytes
    now_ms: int
    progress: Progress | None
    publisher: str | None = None
    topic: Topic | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    channel: _Channel
    handler: Callable[[Any, _Received], list[Outgoing]]


class SyncEngine:
    """One node's replication protocol: messages, ticks and commits in; frames out.

    The parts, each owning its state (public for inspection and tests): ``publisher``,
    ``delivery``, ``repairs`` and ``repair_server``, ``ranges`` and ``range_server``,
    ``liveness``, ``trimmer``."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        settings: SyncSettings | None = None,
        topics: Iterable[str] | None = None,
        relay: bool = False,
    ) -> None:
        """``relay``: relay batches to and from neighbours (the overlay mode, where a
        node hears only its neighbours, and they only theirs): see ``relaying``, and
        :meth:`link`."""
        self.node_id = node_id
        self.relay = relay
        self.replica = replica
        self.settings = cfg = settings if settings is not None else SyncSettings()
        self.topics: frozenset[str] | None = None if topics is None else frozenset(topics)
        self.stats: Counter[str] = Counter()
        reject = self._reject = Rejections(node_id, self.stats, cfg.log_interval_ms)
        ids = itertools.count(2)  # request and session ids: one sequence, one exchange per id
        stats = self.stats
        self._peers = PeerDigests(node_id)
        self._full_digest_readers: set[str] = set()
        self.publisher = Publisher(node_id, replica, cfg, stats, reject, self.holds)
        self.ranges = RangeReconciler(node_id, replica, cfg, stats, reject, ids)
        self.range_server = RangeServer(replica, cfg, stats)
        self.delivery = CausalDelivery(replica, cfg, stats, reject, reconciling=self.ranges)
        self.repairs = RepairScheduler(node_id, replica, cfg, stats, ids)
        self.repair_server = RepairServer(replica, cfg, stats, reject)
        self.liveness = LivenessCheck(node_id, replica, cfg, stats)
        self.trimmer = LogTrimmer(replica, cfg, stats)
        self.relaying: RelayLinks | None = None
        if relay:
            held = {*replica.namespaces(), *(self.topics or ()), *cfg.reserved_namespaces}
            self.relaying = RelayLinks(
                node_id, self.holds, self.topics is None, sorted(held), ids, stats
            )
        self._next_digest = 0
        self._stirred = True  # a frame, commit or peer change since the last tick
        self._routes: dict[type, _Route] = {
            DeltaBatch: _Route(_Channel.PUBLISHED, self._on_batch),
            Digest: _Route(_Channel.EITHER, self._on_digest),
            DigestSummary: _Route(_Channel.EITHER, self._on_summary),
            VectorRequest: _Route(_Channel.DIRECT, self._on_vector_request),
            VectorReply: _Route(_Channel.DIRECT, self._on_vector_reply),
            RepairRequest: _Route(_Channel.DIRECT, self._on_repair_request),
            RepairReply: _Route(_Channel.DIRECT, self._on_repair_reply),
            LogGap: _Route(_Channel.DIRECT, self._on_log_gap),
            RangeQuery: _Route(_Channel.DIRECT, self._on_range_query),
            RangeReply: _Route(_Channel.DIRECT, self._on_range_reply),
            Have: _Route(_Channel.PUBLISHED, self._on_have),
            Prune: _Route(_Channel.DIRECT, self._on_prune),
            Graft: _Route(_Channel.DIRECT, self._on_graft),
        }

    # -- membership of the replication group -----------------------------------------------

    def add_peer(self, peer: str) -> None:
        self._stirred = True
        self._peers.add(peer)

    def remove_peer(self, peer: str) -> None:
        """Forget a peer: its digests no longer hold back trimming; its work is dropped."""
        self._stirred = True
        self._peers.remove(peer)
        self.repairs.forget_peer(peer)
        for ns in self.ranges.forget_peer(peer):
            self.delivery.drain(ns)

    def link(
        self, peer: str, version: int, holds: frozenset[str] | None, vouched: bool = True
    ) -> list[Outgoing]:
        """In the relay mode: ``peer`` is a neighbour (or a topic link) that speaks
        protocol ``version`` with this node and holds ``holds`` (None: every namespace);
        ``vouched``: its member record vouches for its connection (else only its own
        batches are taken from it). Again whenever any of it may have changed; what to
        subscribe to comes out."""
        if self.relaying is None:
            return []
        self._stirred = True
        return self.relaying.link(peer, version, holds, vouched)

    def unlink(self, peer: str) -> list[Outgoing]:
        """``peer`` is a neighbour no more: its subscriptions come off."""
        if self.relaying is None:
            return []
        return self.relaying.unlink(peer)

    def set_digest_form(self, peer: str, *, hashed: bool) -> None:
        """Whether ``peer`` reads hashed digests (it speaks protocol version 2). Digests
        are published to every subscriber at once, so the hashed form is published only
        while there are peers and every one connected reads it; a peer never declared
        does."""
        if hashed:
            self._full_digest_readers.discard(peer)
        else:
            self._full_digest_readers.add(peer)

    def forget_digest_form(self, peer: str) -> None:
        """``peer`` is no longer connected: its form no longer decides what is published."""
        self._full_digest_readers.discard(peer)

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
        if self.topics is None or self.relaying is not None:
            return [DIGEST_TOPIC]  # a relay subscribes per link (``link``)
        return [DIGEST_TOPIC, *sorted(self.topics | set(self.settings.reserved_namespaces))]

    def peer_lag(self) -> dict[str, int]:
        """Per known peer: how many seqs its last digest shows that we have not applied."""
        ahead = self._peers.lacking(self.replica.context)
        return {p: sum(by_peer.get(p, 0) for by_peer in ahead.values()) for p in self._peers}

    def peers_caught_up(self, namespace: str) -> bool:
        """Whether every peer's last digest shows all of this node's own seqs of
        ``namespace`` (used to know a graceful leave reached everyone before stopping)."""
        top = self.replica.context(namespace).max_seq(self.node_id)
        return all(self._peers.top(p, namespace, self.node_id) >= top for p in self._peers)

    def sessions(self) -> dict[str, str]:
        """Namespace -> peer of each reconciliation session running (for inspection)."""
        return self.ranges.peers()

    def behind(self) -> dict[str, dict[str, int]]:
        """Namespace -> ``since`` (ms it fell behind), ``missing`` (seqs peers' digests
        show that it lacks) and ``progress_at`` (ms it last gained a dot), for each
        namespace in which this node is behind a peer (for status and inspection)."""
        return self.liveness.behind()

    # -- inputs --------------------------------------------------------------------------------

    def on_local_commit(self, now_ms: int) -> list[Outgoing]:
        """Publish own batches the log holds beyond what was published already."""
        out: list[Outgoing] = []
        for frame in self.publisher.flush(now_ms):
            if self.relaying is None or frame.run is None:
                out.append(frame)
            else:
                first, last = frame.run
                out += self.relaying.own(frame.topic, first, last, frame.data, now_ms)
        if out:
            self._stirred = True
        return self._count_sent(out)

    def greet(self, peer: str) -> list[Outgoing]:
        """Our digest, sent directly to a peer that just joined: it learns what to fetch at
        once instead of at our next published digest (and before its SUB has caught up)."""
        if peer not in self._peers:
            return []
        return self._count_sent([Send(peer, encode_message(self._digest()))])

    def quiet_until(self) -> int | None:
        """Until when :meth:`on_tick` has nothing to do unless a frame or a commit comes
        first: the next digest's time. None while anything it paces by time is under way
        (gap evidence or repairs, range sessions, held batches) or something came since
        the last tick: the caller then ticks at its own interval, as it always did.

        So an idle node is ticked once per digest, not every few milliseconds: what a
        tick does in between (looking at every namespace's cloud, the timers above)
        changes only when one of those inputs arrives, and each of them ends the
        quiet."""
        if (
            self._stirred
            or self.repairs.pending()
            or self.ranges.peers()
            or self.delivery.buffer.holds_any()
        ):
            return None
        relay_due = None if self.relaying is None else self.relaying.next_deadline()
        return self._next_digest if relay_due is None else min(relay_due, self._next_digest)

    def on_tick(self, now_ms: int) -> list[Outgoing]:
        self._stirred = False
        out: list[Outgoing] = []
        if now_ms >= self._next_digest:
            self._next_digest = now_ms + self.settings.digest_interval_ms
            out.append(Publish(DIGEST_TOPIC, self._published_digest()))
            self.stats["digests_sent"] += 1
            try:
                self.trimmer.trim(self._peers)
            except StorageError as exc:  # trimming writes; the rest of the tick does not
                self._reject.local_failure(now_ms, "a log trim", exc)
            held = self.delivery.buffer
            held.expire(now_ms)
            ranges = self.ranges
            stuck = self.liveness.stuck(now_ms, self._peers, ranges, ranges.may_start, held.held)
            for ns, peer in stuck:
                out.extend(ranges.start(peer, ns, now_ms))
        self.repairs.observe_clouds(now_ms)
        self.repairs.expire(now_ms)
        resent, ended = self.ranges.tick(now_ms)
        for ns in ended:
            self.delivery.drain(ns)
        out.extend(resent)
        out.extend(
            self.repairs.schedule(now_ms, self._peers, self.ranges, self.delivery.buffer.held_runs)
        )
        if self.relaying is not None:
            out.extend(self.relaying.tick(now_ms, self._holds_batch))
        return self._count_sent(out)

    def _holds_batch(self, key: BatchKey) -> bool:
        vv = self.delivery.context(key.namespace).vv
        return vv.get(key.origin, 0) >= key.last

    def on_message(
        self,
        peer: str,
        data: bytes,
        now_ms: int,
        publisher: str | None = None,
        *,
        topic: bytes | None = None,
        progress: Progress | None = None,
    ) -> list[Outgoing]:
        """Handle one frame from the network (``peer`` is "" for published frames).

        ``publisher``: for a published frame, the node whose PUB it came from, when the
        transport knows it. In the full mesh, nodes publish only their own batches, so a
        published batch of another origin is forged and rejected (repairs, over
        ROUTER/DEALER, may carry any origin's batches from a log). In the relay mode a
        neighbour relays every origin's batches, on topics naming it (``topic``, the
        frame's topic as received): see :mod:`crdtstore.sync.relay` for the trust rule.

        ``progress``: called now and then during a long step this frame triggers (a
        reconciliation session's apply, which can hold the caller's thread for many
        seconds), so the caller can heartbeat meanwhile; it must touch neither the
        replica nor this engine.
        """
        msg = self._decode(peer, data, now_ms)
        if msg is None:
            return []
        return self._on_decoded(
            peer, msg, _Received(peer, data, now_ms, progress, publisher), topic
        )

    def _decode(self, peer: str, data: bytes, now_ms: int) -> Any:
        """The message of a frame, or None (counted and logged) if it does not decode."""
        self.stats["bytes_received"] += len(data)
        try:
            return decode_message(data)
        except DecodeError as exc:
            self._reject("decode_errors", now_ms, f"from {peer!r}: {exc}")
            return None

    def _on_decoded(
        self, peer: str, msg: Any, frame: _Received, topic: bytes | None
    ) -> list[Outgoing]:
        now_ms, publisher = frame.now_ms, frame.publisher
        if self.relaying is not None and topic is not None and topic[:1] in RELAY_KINDS:
            try:
                frame.topic = parse_topic(topic)
            except DecodeError as exc:
                self._reject("relay_rejected_topic", now_ms, f"from {publisher!r}: {exc}")
                return []
            if frame.topic.publisher != publisher:
                # A topic naming another publisher than the connection's: the trust rule.
                self._reject(
                    "relay_rejected_publisher", now_ms, f"{topic[:60]!r} via {publisher!r}"
                )
                return []
            if isinstance(msg, DeltaBatch) != (frame.topic.kind == DATA):
                self._reject(
                    "relay_rejected_topic", now_ms, f"{type(msg).__name__} on {topic[:60]!r}"
                )
                return []
        elif isinstance(msg, Have):
            self._reject("rejected_invalid", now_ms, f"have notice off its topic via {publisher!r}")
            return []
        elif (
            self.relaying is None
            and publisher
            and isinstance(msg, DeltaBatch)
            and msg.origin != publisher
        ):
            self._reject("rejected_forged_origin", now_ms, f"{msg.origin} via {publisher!r}")
            return []
        if self.delivery.has_group_batches() and not isinstance(msg, DeltaBatch):
            self.delivery.flush_group(now_ms)  # what follows sees the batches before it
        if not isinstance(msg, _QUIET_MESSAGES):
            self._stirred = True
        try:
            out = self._dispatch(msg, frame)
        except StorageError as exc:  # this node's disk, not the peer's message
            self._reject.local_failure(now_ms, f"{type(msg).__name__} from {peer!r}", exc)
            return []
        except Error as exc:  # an invariant a peer's message broke, surfaced by the replica
            self._reject("rejected_invalid", now_ms, f"{type(msg).__name__} from {peer!r}: {exc}")
            return []
        return self._count_sent(out)

    def on_messages(
        self,
        frames: Sequence[
            tuple[str, bytes, str | None] | tuple[str, bytes, str | None, bytes | None]
        ],
        now_ms: int,
        *,
        progress: Progress | None = None,
    ) -> list[Outgoing]:
        """``on_message`` of each ``(peer, data, publisher[, topic])``, except that the ready
        published batches among them are applied together, in one replica commit
        (``apply_batches``), before the other messages, which follow in arrival order: a
        receiver that fell behind catches up with one fsync per group instead of one per
        batch, so a backlog shrinks instead of growing. (In arrival order, a digest
        between two batches cut the group in two: what follows a batch must see it
        applied. Handled after all of them, a digest or a reply sees more of what its
        sender had, as if the batches had crossed the network faster; published frames
        and direct ones share no order on the wire anyway.) ``progress`` goes to each
        message's handling."""
        out: list[Outgoing] = []
        decoded = [
            (
                self._decode(f[0], f[1], now_ms),
                _Received(f[0], f[1], now_ms, progress, f[2]),
                f[3] if len(f) > 3 else None,
            )
            for f in frames
        ]
        self.delivery.open_group()
        try:
            for msg, frame, topic in decoded:
                if isinstance(msg, DeltaBatch):
                    out.extend(self._on_decoded(frame.peer, msg, frame, topic))
            for msg, frame, topic in decoded:
                if msg is not None and not isinstance(msg, DeltaBatch):
                    out.extend(self._on_decoded(frame.peer, msg, frame, topic))
        finally:
            self.delivery.close_group(now_ms)
        return out

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, msg: Any, frame: _Received) -> list[Outgoing]:
        peer, now_ms = frame.peer, frame.now_ms
        route = self._routes.get(type(msg))
        if route is None:  # a kind another protocol registered (membership's, say)
            self._reject("rejected_invalid", now_ms, f"unexpected {type(msg).__name__}")
            return []
        if route.channel is _Channel.PUBLISHED and peer:
            # An unsolicited direct batch would let any client inject the next seq of anyone.
            self._reject("rejected_invalid", now_ms, f"batch sent directly by {peer!r}")
            return []
        if route.channel is _Channel.DIRECT:
            if not peer:
                self._reject("rejected_invalid", now_ms, f"{type(msg).__name__} was published")
                return []
            if not self.holds(msg.namespace):
                self._reject("rejected_topic", now_ms, f"{type(msg).__name__} for {msg.namespace}")
                return []
        return route.handler(msg, frame)

    def _on_batch(self, msg: DeltaBatch, frame: _Received) -> list[Outgoing]:
        relaying, now_ms = self.relaying, frame.now_ms
        if relaying is None or frame.publisher is None:
            self._apply_batch(msg, frame.data, now_ms)
            return []

        def accept(batch: DeltaBatch, data: bytes) -> bool:
            return self._accept_batch(batch, data, now_ms)

        if frame.topic is not None:
            return relaying.on_tree_batch(frame.topic, msg, frame.data, now_ms, accept)
        return relaying.on_flood_batch(frame.publisher, msg, frame.data, now_ms, accept)

    def _on_have(self, msg: Have, frame: _Received) -> list[Outgoing]:
        if self.relaying is None or frame.topic is None:
            self._reject("rejected_invalid", frame.now_ms, "a have notice off a relay topic")
            return []
        return self.relaying.on_have(frame.topic, msg, frame.now_ms)

    def _on_prune(self, msg: Prune, frame: _Received) -> list[Outgoing]:
        if self.relaying is None:
            self._reject("rejected_invalid", frame.now_ms, f"prune from {frame.peer!r}")
            return []
        return self.relaying.on_prune(frame.peer, msg)

    def _on_graft(self, msg: Graft, frame: _Received) -> list[Outgoing]:
        if self.relaying is None:
            self._reject("rejected_invalid", frame.now_ms, f"graft from {frame.peer!r}")
            return []
        return self.relaying.on_graft(frame.peer, msg)

    def _on_repair_request(self, msg: RepairRequest, frame: _Received) -> list[Outgoing]:
        return self.repair_server.serve(frame.peer, msg)

    def _on_repair_reply(self, msg: RepairReply, frame: _Received) -> list[Outgoing]:
        peer, now_ms = frame.peer, frame.now_ms
        if self.relaying is not None and self.relaying.fetched(msg.request, peer):
            return self._on_fetched(msg, frame, self.relaying)
        rep = self.repairs.replied(msg.request, peer, msg.namespace)
        fresh = 0
        held_before = self.delivery.buffer.held(msg.namespace)
        for data in msg.batches:
            try:
                batch = decode_message(data)
            except DecodeError as exc:
                self._reject("decode_errors", now_ms, f"batch in repair from {peer!r}: {exc}")
                continue
            if not isinstance(batch, DeltaBatch) or batch.namespace != msg.namespace:
                self._reject("rejected_invalid", now_ms, f"repair from {peer!r} holds a stranger")
                continue
            fresh += self._apply_batch(batch, data, now_ms)
        # Batches held for what they depend on are progress too: asking again at once
        # for the rest is how those dependencies arrive (a pause here once cost seconds
        # per round when writers' batches depended on each other's).
        if (
            rep is not None
            and fresh == 0
            and self.delivery.buffer.held(msg.namespace) <= held_before
        ):
            self.repairs.fruitless(rep, now_ms)
        return []

    def _on_fetched(
        self, msg: RepairReply, frame: _Received, relaying: RelayLinks
    ) -> list[Outgoing]:
        """The answer to a fetch of the relay's: its batches are checked as a repair's
        and relayed on (marked as repaired)."""
        out: list[Outgoing] = []
        now_ms = frame.now_ms

        def accept(batch: DeltaBatch, data: bytes) -> bool:
            return self._accept_batch(batch, data, now_ms)

        for data in msg.batches:
            try:
                batch = decode_message(data)
            except DecodeError as exc:
                self._reject(
                    "decode_errors", now_ms, f"batch in a fetch from {frame.peer!r}: {exc}"
                )
                continue
            if not isinstance(batch, DeltaBatch) or batch.namespace != msg.namespace:
                self._reject(
                    "rejected_invalid", now_ms, f"fetch from {frame.peer!r} holds a stranger"
                )
                continue
            out += relaying.on_fetched(frame.peer, batch, data, now_ms, accept)
        return out

    def _on_log_gap(self, msg: LogGap, frame: _Received) -> list[Outgoing]:
        peer, now_ms = frame.peer, frame.now_ms
        if self.relaying is not None and self.relaying.fetched(msg.request, peer):
            return []  # the neighbour trimmed it: anti-entropy's case
        if not self.repairs.gap(msg.request, peer):
            return []
        if peer not in self._peers or not self.ranges.may_start(msg.namespace, now_ms):
            return []
        return self.ranges.start(peer, msg.namespace, now_ms)

    def _on_range_query(self, msg: RangeQuery, frame: _Received) -> list[Outgoing]:
        return self.range_server.serve(frame.peer, msg)

    def _on_range_reply(self, msg: RangeReply, frame: _Received) -> list[Outgoing]:
        out, ended = self.ranges.on_reply(frame.peer, msg, frame.now_ms, frame.progress)
        if ended:
            self.delivery.drain(msg.namespace)
        return out

    # -- digests -------------------------------------------------------------------------------

    def _digest(self) -> Digest:
        items = tuple(
            (ns, type_name, dict(self.replica.context(ns).vv))
            for ns, type_name in sorted(self.replica.namespaces().items())
            if self.holds(ns)
        )
        return Digest(self.node_id, items)

    def _summary(self) -> DigestSummary:
        items = []
        for ns, type_name in sorted(self.replica.namespaces().items()):
            if self.holds(ns):
                vv = self.replica.context(ns).vv
                items.append((ns, type_name, vv_total(vv), vv_hash(vv)))
        return DigestSummary(self.node_id, tuple(items))

    def _published_digest(self) -> bytes:
        # With no peer yet, whoever subscribed is not known to read hashes (a node of
        # v0.1.0 that joined through us subscribes before its hello reaches us).
        if self._full_digest_readers or not self._peers:
            return encode_message(self._digest())
        self.stats["digests_sent_hashed"] += 1
        return encode_message(self._summary())

    def _from_peer(self, sender: str) -> bool:
        """Whether a digest of ``sender`` is to be read (counted if so)."""
        if sender == self.node_id:
            return False
        if sender not in self._peers:
            self.stats["digests_from_unknown"] += 1
            return False
        self.stats["digests_received"] += 1
        return True

    def _on_digest(self, msg: Digest, frame: _Received) -> list[Outgoing]:
        now_ms = frame.now_ms
        if not self._from_peer(msg.sender):
            return []
        out: list[Outgoing] = []
        vvs: dict[str, dict[str, int]] = {}
        for ns, type_name, vv in msg.namespaces:
            if not self.holds(ns) or not self._ensure_namespace(ns, type_name, now_ms):
                continue
            vvs[ns] = vv
            out.extend(self._observe_vector(msg.sender, ns, vv, vv_total(vv), now_ms))
        self._peers.record(msg.sender, vvs)
        out.extend(
            self.repairs.schedule(now_ms, self._peers, self.ranges, self.delivery.buffer.held_runs)
        )
        return out

    def _on_summary(self, msg: DigestSummary, frame: _Received) -> list[Outgoing]:
        now_ms, sender = frame.now_ms, msg.sender
        if not self._from_peer(sender):
            return []
        out: list[Outgoing] = []
        previous = self._peers.reported(sender)
        vvs: dict[str, dict[str, int]] = {}
        hashes: dict[str, bytes] = {}
        for ns, type_name, total, digest in msg.namespaces:
            if not self.holds(ns) or not self._ensure_namespace(ns, type_name, now_ms):
                continue
            mine = self.replica.context(ns).vv
            if digest == vv_hash(mine):
                vvs[ns], hashes[ns] = dict(mine), digest  # it holds what we hold
            elif digest == self._peers.hash_of(sender, ns):
                vvs[ns], hashes[ns] = previous[ns], digest  # unchanged since we last knew
            else:
                # What we last knew of it stands, a lower bound, until its vector comes.
                vvs[ns] = previous.get(ns, {})
                out.append(Send(sender, encode_message(VectorRequest(ns))))
                self.stats["vectors_requested"] += 1
                out.extend(self._observe_vector(sender, ns, {}, total, now_ms))
                continue
            out.extend(self._observe_vector(sender, ns, vvs[ns], total, now_ms))
        self._peers.record(sender, vvs, hashes)
        out.extend(
            self.repairs.schedule(now_ms, self._peers, self.ranges, self.delivery.buffer.held_runs)
        )
        return out

    def _on_vector_request(self, msg: VectorRequest, frame: _Received) -> list[Outgoing]:
        if frame.peer not in self._peers:
            self.stats["vector_requests_from_unknown"] += 1
            return []
        type_name = self.replica.namespaces().get(msg.namespace)
        if type_name is None:
            return []  # its digest will no longer list it either
        vv = dict(self.replica.context(msg.namespace).vv)
        self.stats["vectors_sent"] += 1
        return [Send(frame.peer, encode_message(VectorReply(msg.namespace, type_name, vv)))]

    def _on_vector_reply(self, msg: VectorReply, frame: _Received) -> list[Outgoing]:
        peer, ns, now_ms = frame.peer, msg.namespace, frame.now_ms
        if peer not in self._peers or ns not in self._peers.reported(peer):
            self.stats["vectors_unasked"] += 1
            return []
        if not self._ensure_namespace(ns, msg.type_name, now_ms):
            return []
        self._peers.record_vector(peer, ns, msg.vv)
        self.stats["vectors_received"] += 1
        out = self._observe_vector(peer, ns, msg.vv, vv_total(msg.vv), now_ms)
        out.extend(
            self.repairs.schedule(now_ms, self._peers, self.ranges, self.delivery.buffer.held_runs)
        )
        return out

    def _observe_vector(
        self, sender: str, ns: str, vv: dict[str, int], total: int, now_ms: int
    ) -> list[Outgoing]:
        """What ``sender``'s vector of ``ns`` (total ``total``) shows: gaps to repair, or a
        namespace to bootstrap."""
        for origin, top in vv.items():
            if origin != self.node_id:
                self.repairs.observe(ns, origin, top, now_ms)
        if not self.replica.context(ns) and total > 0 and self.ranges.may_start(ns, now_ms):
            # Bootstrap: we hold nothing here; reconciling ranges costs O(state),
            # replaying the log would cost O(history).
            return self.ranges.start(sender, ns, now_ms)
        return []

    # -- batches ---------------------------------------------------------------------------------

    def _apply_batch(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """Check one batch, then deliver it (see crdtstore.sync.delivery); True if it was
        applied."""
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
        return self.delivery.deliver(batch, data, now_ms)

    def _accept_batch(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """``_apply_batch``, and whether the batch passed its checks: applied, held for
        what it depends on, or applied already (what a relay passes on)."""
        if batch.origin == self.node_id or not self.holds(batch.namespace):
            self._apply_batch(batch, data, now_ms)  # refused there, and counted
            return False
        if not self._timestamps_ok(batch, now_ms):
            return False
        if not self._ensure_namespace(batch.namespace, batch.type_name, now_ms):
            return False
        self.delivery.deliver(batch, data, now_ms)
        return True

    def _timestamps_ok(self, batch: DeltaBatch, now_ms: int) -> bool:
        """False (counted) if an LWW batch carries a timestamp too far in the future."""
        if not batch.newest:
            return True
        try:
            check_drift(batch.newest, now_ms, self.settings.max_clock_drift_ms)
        except ClockDriftError as exc:
            self.liveness.drift_refused(batch.origin, now_ms)
            self._reject("rejected_clock_drift", now_ms, str(exc))
            return False
        return True

    # -- small helpers ---------------------------------------------------------------------

    def _ensure_namespace(self, ns: str, type_name: str, now_ms: int) -> bool:
        try:
            self.replica.ensure_namespace(ns, type_name)
        except StorageError as exc:
            self._reject.local_failure(now_ms, f"namespace {ns!r}", exc)
            return False
        except Error as exc:  # TypeMismatch, or a type this build does not know
            self._reject("rejected_type_mismatch", now_ms, f"{ns}: {exc}")
            return False
        return True

    def _count_sent(self, out: list[Outgoing]) -> list[Outgoing]:
        for item in out:
            if isinstance(item, Frame):
                self.stats["bytes_sent"] += len(item.data)
                self.stats["messages_sent"] += 1
        return out
