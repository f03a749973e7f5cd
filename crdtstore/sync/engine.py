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
2. Digest (:mod:`~crdtstore.sync.digest_exchange`). Every ``digest_interval_ms`` the
   node publishes, on :data:`DIGEST_TOPIC`, a digest whose size depends on namespaces
   only, never on origins or state; peers' digests show what to repair.
3. Repair (:mod:`~crdtstore.sync.repair`). Seqs a digest or our cloud shows missing, for
   longer than ``repair_grace_ms``, are pulled from a peer's delta log.
4. Range reconciliation (:mod:`~crdtstore.sync.reconcile`), on ``LogGap``, when we hold
   nothing of a namespace a peer has data in, or when the liveness check
   (:mod:`~crdtstore.sync.liveness`) finds a namespace behind with no progress.
5. Log trimming (:mod:`~crdtstore.sync.trim`), at each digest.
6. Relaying (:mod:`~crdtstore.sync.relay_inbox` and :mod:`~crdtstore.sync.relaying`), in
   the overlay mode: batches relayed along the overlay, checked against the trust rule.

Rejected, and counted in ``stats`` (never raised; :mod:`~crdtstore.sync.rejections`):
undecodable bytes; message types that are not the sync protocol's; batches that fail the
checks every received batch passes (:mod:`~crdtstore.sync.intake`: own origin, a
namespace outside ``topics``, a clock too far ahead, a type conflict), that a publisher
sent in another's name, or that a peer sent directly; replies that break the protocol.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from crdtstore.errors import DecodeError, Error, StorageError
from crdtstore.sync.delivery import CausalDelivery
from crdtstore.sync.digest_exchange import DigestExchange
from crdtstore.sync.intake import BatchIntake
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
from crdtstore.sync.received import Received
from crdtstore.sync.reconcile import Progress, RangeReconciler, RangeServer
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.relay import BatchKey
from crdtstore.sync.relay_inbox import RelayInbox
from crdtstore.sync.relaying import RelayLinks
from crdtstore.sync.repair import RepairScheduler, RepairServer
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings
from crdtstore.sync.trim import LogTrimmer

__all__ = ["DIGEST_TOPIC", "Outgoing", "Progress", "Publish", "Send", "SyncEngine"]


class _Channel(Enum):
    PUBLISHED = "published"  # batches: only from a publisher, or inside a RepairReply
    DIRECT = "direct"  # a request or a reply, for a namespace this node holds
    EITHER = "either"  # digests: published, or sent to a peer that just joined


_QUIET_MESSAGES = (Digest, DigestSummary, VectorRequest)
"""What an idle neighbour sends every digest interval: a tick has work after one only if
it showed a gap, which ``RepairScheduler.pending`` tells; anything else may have changed
what a tick looks at (a context's cloud, a session), so the engine is ticked again soon."""


@dataclass(frozen=True, slots=True)
class _Route:
    channel: _Channel
    handler: Callable[[Any, Received], list[Outgoing]]


class SyncEngine:
    """One node's replication protocol: messages, ticks and commits in; frames out.

    The parts, each owning its state (public for inspection and tests): ``publisher``,
    ``delivery``, ``repairs`` and ``repair_server``, ``ranges`` and ``range_server``,
    ``liveness``, ``trimmer``, ``intake``, ``digests``, ``relaying`` and ``relay_inbox``."""

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
        self.publisher = Publisher(node_id, replica, cfg, stats, reject, self.holds)
        self.ranges = RangeReconciler(node_id, replica, cfg, stats, reject, ids)
        self.range_server = RangeServer(replica, cfg, stats)
        self.delivery = CausalDelivery(replica, cfg, stats, reject, reconciling=self.ranges)
        self.repairs = RepairScheduler(node_id, replica, cfg, stats, ids)
        self.repair_server = RepairServer(replica, cfg, stats, reject)
        self.liveness = LivenessCheck(node_id, replica, cfg, stats)
        self.trimmer = LogTrimmer(replica, cfg, stats)
        self.intake = BatchIntake(
            node_id,
            replica,
            cfg.max_clock_drift_ms,
            self.holds,
            self.delivery,
            self.liveness,
            reject,
        )
        self.digests = DigestExchange(
            node_id,
            replica,
            self.holds,
            self._peers,
            self.intake,
            self.repairs,
            self.ranges,
            self.delivery,
            stats,
        )
        self.relaying: RelayLinks | None = None
        if relay:
            held = {*replica.namespaces(), *(self.topics or ()), *cfg.reserved_namespaces}
            self.relaying = RelayLinks(
                node_id, self.holds, self.topics is None, sorted(held), ids, stats
            )
        self.relay_inbox = RelayInbox(self.relaying, self.intake, reject)
        self._next_digest = 0
        self._stirred = True  # a frame, commit or peer change since the last tick
        self._routes: dict[type, _Route] = {
            DeltaBatch: _Route(_Channel.PUBLISHED, self.relay_inbox.on_batch),
            Digest: _Route(_Channel.EITHER, self.digests.on_digest),
            DigestSummary: _Route(_Channel.EITHER, self.digests.on_summary),
            VectorRequest: _Route(_Channel.DIRECT, self.digests.on_vector_request),
            VectorReply: _Route(_Channel.DIRECT, self.digests.on_vector_reply),
            RepairRequest: _Route(_Channel.DIRECT, self._on_repair_request),
            RepairReply: _Route(_Channel.DIRECT, self._on_repair_reply),
            LogGap: _Route(_Channel.DIRECT, self._on_log_gap),
            RangeQuery: _Route(_Channel.DIRECT, self._on_range_query),
            RangeReply: _Route(_Channel.DIRECT, self._on_range_reply),
            Have: _Route(_Channel.PUBLISHED, self.relay_inbox.on_have),
            Prune: _Route(_Channel.DIRECT, self.relay_inbox.on_prune),
            Graft: _Route(_Channel.DIRECT, self.relay_inbox.on_graft),
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
        self.digests.set_form(peer, hashed=hashed)

    def forget_digest_form(self, peer: str) -> None:
        """``peer`` is no longer connected: its form no longer decides what is published."""
        self.digests.forget_form(peer)

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
        return self._count_sent([Send(peer, encode_message(self.digests.digest()))])

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
            out.append(Publish(DIGEST_TOPIC, self.digests.published()))
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
        return self._on_decoded(peer, msg, Received(peer, data, now_ms, progress, publisher), topic)

    def _decode(self, peer: str, data: bytes, now_ms: int) -> Any:
        """The message of a frame, or None (counted and logged) if it does not decode."""
        self.stats["bytes_received"] += len(data)
        try:
            return decode_message(data)
        except DecodeError as exc:
            self._reject("decode_errors", now_ms, f"from {peer!r}: {exc}")
            return None

    def _on_decoded(
        self, peer: str, msg: Any, frame: Received, topic: bytes | None
    ) -> list[Outgoing]:
        now_ms = frame.now_ms
        if not self.relay_inbox.admit(msg, frame, topic):
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
        early: Callable[[list[Outgoing]], None] | None = None,
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
        message's handling.

        ``early``: given what the batches call for (their relays) as soon as they are
        checked, before the group's commit: a relay waits for no fsync of this node's,
        so a batch crosses each hop of the tree at the network's pace, not the disk's
        (the batch is durable at its origin; this node's copy is its own business)."""
        out: list[Outgoing] = []
        decoded = [
            (
                self._decode(f[0], f[1], now_ms),
                Received(f[0], f[1], now_ms, progress, f[2]),
                f[3] if len(f) > 3 else None,
            )
            for f in frames
        ]
        self.delivery.open_group()
        try:
            for msg, frame, topic in decoded:
                if isinstance(msg, DeltaBatch):
                    out.extend(self._on_decoded(frame.peer, msg, frame, topic))
            if early is not None and out:
                early(out)
                out = []
            for msg, frame, topic in decoded:
                if msg is not None and not isinstance(msg, DeltaBatch):
                    out.extend(self._on_decoded(frame.peer, msg, frame, topic))
        finally:
            self.delivery.close_group(now_ms)
        return out

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, msg: Any, frame: Received) -> list[Outgoing]:
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

    def _on_repair_request(self, msg: RepairRequest, frame: Received) -> list[Outgoing]:
        return self.repair_server.serve(frame.peer, msg)

    def _on_repair_reply(self, msg: RepairReply, frame: Received) -> list[Outgoing]:
        peer, now_ms = frame.peer, frame.now_ms
        if self.relay_inbox.is_fetch(msg, peer):
            return self.relay_inbox.on_fetched(msg, frame)
        rep = self.repairs.replied(msg.request, peer, msg.namespace)
        fresh = 0
        held_before = self.delivery.buffer.held(msg.namespace)
        for batch, data in self.intake.batches_of(msg, peer, now_ms, "repair"):
            fresh += self.intake.apply(batch, data, now_ms)
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

    def _on_log_gap(self, msg: LogGap, frame: Received) -> list[Outgoing]:
        peer, now_ms = frame.peer, frame.now_ms
        if self.relay_inbox.is_fetch(msg, peer):
            return []  # the neighbour trimmed it: anti-entropy's case
        if not self.repairs.gap(msg.request, peer):
            return []
        if peer not in self._peers or not self.ranges.may_start(msg.namespace, now_ms):
            return []
        return self.ranges.start(peer, msg.namespace, now_ms)

    def _on_range_query(self, msg: RangeQuery, frame: Received) -> list[Outgoing]:
        return self.range_server.serve(frame.peer, msg)

    def _on_range_reply(self, msg: RangeReply, frame: Received) -> list[Outgoing]:
        out, ended = self.ranges.on_reply(frame.peer, msg, frame.now_ms, frame.progress)
        if ended:
            self.delivery.drain(msg.namespace)
        return out

    def _count_sent(self, out: list[Outgoing]) -> list[Outgoing]:
        for item in out:
            if isinstance(item, Frame):
                self.stats["bytes_sent"] += len(item.data)
                self.stats["messages_sent"] += 1
        return out
