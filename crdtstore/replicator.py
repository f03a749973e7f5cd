"""The replicator: one node's sync engine and membership, run over the transport.

Theory of operation. The sync engine (``crdtstore.sync``) decides what to send and when;
the membership protocol (``crdtstore.membership.protocol``: HyParView neighbours, SWIM
probing) decides who is alive and who is linked; the transport moves frames. This module
is the only place they meet. The replicator's thread owns the engine (not thread-safe) and
is the single consumer of the transport's deliveries; the protocol's messages travel
apart, on the transport's express pipe, to the protocol's own thread
(:mod:`crdtstore.overlay_liveness`), so no apply work here delays them, and this thread
acts on the status changes and links that thread reports. Application threads reach the
replicator only through ``notify_commit``, which sets a flag the thread reads, so a write
never waits for the network.

Framing: direct messages carry a one-byte channel (``S`` sync engine, ``M`` membership)
so each goes to its owner without decoding twice. Published topics end in a NUL byte,
because ZeroMQ's SUB filter matches prefixes: without it a node subscribed to namespace
``a`` would also receive ``ab``.

The parts this thread moves work between own their state, one concern each
(:mod:`crdtstore.network`): member records (:mod:`~crdtstore.network.records`), links
and what the engine is told of them (:mod:`~crdtstore.network.links`), the hello
exchange (:mod:`~crdtstore.network.hellos`), members' clocks
(:mod:`~crdtstore.network.clock_watch`), the status (:mod:`~crdtstore.network.status`)
and the leave (:mod:`~crdtstore.network.leave`). This module holds the loop: it waits for
frames and deadlines, hands each to its owner, and sends what comes out.

Invariants: the engine and the parts are touched on this thread only (except what a
part's header says other threads read); one delivery is handled before the next; what
a step emits is sent before the next step runs. Its one clock is a parameter (the
node's), so a test can run a node whose clock is off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from crdtstore.errors import ClosedError, Error
from crdtstore.membership import MemberRecord, MemberStatus, StatusChange
from crdtstore.membership.protocol import NeighbourUp, ProtocolSettings
from crdtstore.membership.seeds import SeedWatch
from crdtstore.membership.versions import PeerVersions
from crdtstore.membership.view import Member
from crdtstore.network.clock_watch import ClockWatch
from crdtstore.network.hellos import CHANNEL_MEMBERS, HelloExchange
from crdtstore.network.leave import Leave
from crdtstore.network.links import PeerLinks
from crdtstore.network.records import MemberRecords, OwnRecord
from crdtstore.network.status import StatusReport
from crdtstore.overlay_liveness import CHANNEL_OVERLAY, OverlayLiveness
from crdtstore.status_query import CHANNEL_QUERY
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.sync.engine import Publish, Send, SyncEngine
from crdtstore.sync.outgoing import Outgoing, PublishTopic, Subscribe
from crdtstore.sync.settings import SyncSettings
from transport import (
    CurveKeys,
    Delivery,
    Transport,
    TransportFaults,
    TransportSettings,
    load_public_key,
)

if TYPE_CHECKING:
    from crdtstore.settings import NodeSettings

log = logging.getLogger(__name__)

CHANNEL_SYNC = b"S"
DRAIN_MAX = 64
"""Deliveries the replicator takes at once when several have arrived: the batches among
them are applied in one commit, so a node that fell behind is not held back by a
commit (an fsync) per batch."""


def topic_bytes(name: str) -> bytes:
    return name.encode() + b"\x00"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_seed(seed: str, keys_dir: str | None) -> tuple[str, bytes | None]:
    """``ADDR`` or, with CURVE, ``KEYNAME@ADDR`` (``KEYNAME.key`` in ``keys_dir``)."""
    name, at, addr = seed.rpartition("@")
    if not at:
        return seed, None
    if keys_dir is None:
        raise Error(f"seed {seed!r} names a key but no keys_dir is configured")
    path = os.path.join(keys_dir, f"{name}.key")
    try:
        public = load_public_key(path)
    except (OSError, ValueError) as exc:
        raise Error(f"seed {seed!r}: cannot read its public key {path!r}: {exc}") from exc
    return addr, public


class Replicator:
    """Owns the transport, the sync engine and the membership protocol's thread of one node."""

    def __init__(
        self,
        *,
        replica: Any,
        write_own_record: Callable[[MemberRecord], None],
        delete_record: Callable[[str], None],
        read_records: Callable[[], dict[str, Any]],
        bind: str,
        pub_bind: str,
        seeds: Sequence[tuple[str, bytes | None]],
        settings: NodeSettings,
        sync_settings: SyncSettings,
        transport_settings: TransportSettings,
        curve: CurveKeys | None,
        topics: frozenset[str] | None,
        status_path: str | None = None,
        extra_stats: Callable[[], dict[str, int]] | None = None,
        on_status: Callable[[StatusChange], None] | None = None,
        member_view: MemberViewStore | None = None,
        clock: Callable[[], int] = now_ms,
        faults: TransportFaults | None = None,
    ) -> None:
        self.node_id: str = replica.node_id
        node_id = self.node_id
        self._clock = clock
        self._replica = replica
        self._settings = settings
        self._topics = topics
        self._curve = curve
        self._on_status = on_status
        self.stats: Counter[str] = Counter()
        stats = self.stats
        self.transport = Transport(
            node_id.encode(),
            router_bind=bind,
            pub_bind=pub_bind,
            settings=transport_settings,
            curve=curve,
            express_channels=frozenset({CHANNEL_OVERLAY}),
            faults=faults,
        )
        self.engine = engine = SyncEngine(
            node_id, replica, sync_settings, topics=topics, relay=True
        )
        self._member_view = member_view
        membership = settings.membership
        self.clock_watch = ClockWatch(
            node_id, settings.max_clock_drift_ms, sync_settings.log_interval_ms, stats
        )
        self.liveness = liveness = OverlayLiveness(
            node_id=node_id,
            transport=self.transport,
            settings=ProtocolSettings(
                probe_interval_ms=membership.heartbeat_interval_ms,
                suspect_after_ms=membership.suspect_after_ms,
                dead_after_ms=membership.dead_after_ms,
                join_interval_ms=membership.hello_interval_ms,
                prune_after_ms=membership.prune_after_ms,
            ),
            seeds=list(seeds),
            view_interval_ms=membership.member_view_interval_ms,
            view=member_view,
            clock=clock,
            seed_watch=SeedWatch(
                patience_ms=3 * membership.hello_interval_ms,
                warn_every_ms=sync_settings.log_interval_ms,
            ),
            on_news=self.transport.wake,
            on_clock=self.clock_watch.probed,
            seed_hello=self._seed_hello,
        )
        self.own = OwnRecord(write_own_record)
        self.records = MemberRecords(
            node_id=node_id,
            replica=replica,
            read_records=read_records,
            delete_record=delete_record,
            own=self.own,
            liveness=liveness,
            prune_after_ms=membership.prune_after_ms,
            stats=stats,
        )
        versions = PeerVersions(sync_settings.log_interval_ms)
        self.links = PeerLinks(
            node_id=node_id,
            topics=topics,
            engine=engine,
            liveness=liveness,
            records=self.records,
            versions=versions,
            emit=self._emit,
            greet=self._greet,
            stats=stats,
        )
        self.hellos = HelloExchange(
            node_id=node_id,
            own=self.own,
            versions=versions,
            records=self.records,
            links=self.links,
            clocks=self.clock_watch,
            engine=engine,
            send=self.transport.send,
            emit=self._emit,
            clock=clock,
            stats=stats,
        )
        self.report = StatusReport(
            node_id=node_id,
            transport=self.transport,
            engine=engine,
            liveness=liveness,
            versions=versions,
            clocks=self.clock_watch,
            members=self.members,
            names_a_node=lambda peer: self.records.names(peer) or self.links.connected(peer),
            path=status_path,
            extra_stats=extra_stats,
            clock=clock,
            stats=stats,
        )
        self._leave = Leave(
            node_id=node_id,
            own=self.own,
            engine=engine,
            liveness=liveness,
            publish_soon=self.notify_commit,
            timeout_s=3 * sync_settings.digest_interval_ms / 1000,
        )
        self._commit_pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_beat = time.monotonic()
        """When the thread last went round its loop: a stalled loop is an unhealthy node."""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, incarnation: int) -> None:
        self.transport.start()
        router, pub = self.transport.bound_router, self.transport.bound_pub
        assert router is not None and pub is not None
        own = MemberRecord(
            node_id=self.node_id,
            router=router,
            pub=pub,
            topics=None if self._topics is None else tuple(sorted(self._topics)),
            public_key=None if self._curve is None else self._curve.public.decode(),
            incarnation=incarnation,
            started_at_ms=self._clock(),
        )
        self.own.set(own)
        for topic in self._subscriptions():
            self.transport.subscribe(topic)
        self.liveness.start_overlay(own)
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-replicator-{self.node_id}", daemon=True
        )
        self._thread.start()

    def close(self, leave: bool = False) -> None:
        """Stop the thread, then the transport. Idempotent; never hangs."""
        if leave and self.own.record is not None and not self._stop.is_set():
            self._leave.run()  # bounded: see crdtstore.network.leave
        self._stop.set()
        self.transport.wake()  # the thread waits for its next deadline: end that wait
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.liveness.close()
        self.transport.close()
        if self._member_view is not None:
            self._member_view.close()

    def notify_commit(self) -> None:
        """Called after any local commit: publish the new own deltas soon."""
        self._commit_pending.set()
        wake = getattr(self.transport, "wake", None)
        if wake is not None:
            wake()

    @property
    def router_address(self) -> str | None:
        return self.transport.bound_router

    @property
    def last_status(self) -> dict[str, Any] | None:
        """The newest :meth:`status`, made by this thread every ``status_interval_ms``:
        what other threads read, since the engine's state is this thread's alone."""
        return self.report.last_status

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Live state for operators (``crdt-inspect DIR status``): members, lag, clocks,
        counters."""
        return self.report.status(now)

    def members(self) -> list[Member]:
        """Every member as this node shows it; from any thread."""
        return self.records.members(self.clock_watch.view(), self._clock())

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        """The loop waits for a delivery, a wake (a commit here, news from the overlay's
        thread, close) or its next deadline, whichever is first; it never wakes just to
        look around. Its deadlines: a look at the directory for other processes' commits
        (one read of LMDB's last transaction id), the engine's tick (while it has timed
        work; at its next digest otherwise), the membership tick, the status, and a
        held-back publication."""
        tick_every = self._settings.sync_tick_ms
        look_every = self._settings.poll_ms
        next_tick = 0
        next_look = 0
        next_membership = 0
        next_status = 0
        next_publish = 0
        publish_every = self._settings.publish_interval_ms
        looked_at: int | None = None  # the directory's last commit, as of the last look
        while not self._stop.is_set():
            self.loop_beat = time.monotonic()
            now = self._clock()
            due = min(self._tick_due(next_tick), next_look, next_membership, next_status)
            if self._commit_pending.is_set():
                due = min(due, next_publish)
            delivery = self.transport.recv(timeout=max(0, due - now) / 1000)
            if self._stop.is_set():
                return
            now = self._clock()
            try:
                if delivery is not None:
                    self._on_deliveries(self._queued(delivery), now)
                if self._commit_pending.is_set() and now >= next_publish:
                    # Commits made since the last publication leave together, one frame
                    # per namespace: under load, peers get fewer and larger batches (each
                    # one a durable commit there) for at most publish_interval_ms of delay.
                    self._commit_pending.clear()
                    next_publish = now + publish_every
                    self._emit(self.engine.on_local_commit(now))
                if now >= next_look:
                    next_look = now + look_every
                    # Other processes sharing the directory commit without notifying us;
                    # read first, so a commit made meanwhile is seen at the next look.
                    commit = self._replica.last_commit()
                    if commit != looked_at or self._replica.drops_retry_due():
                        looked_at = commit
                        # Drops of namespaces received since the last look (storage.drops);
                        # one that met a full store is tried again at each look, as a
                        # failed try commits nothing that a later look would see.
                        self._replica.apply_drops()
                        self._emit(self.engine.on_local_commit(now))
                if now >= self._tick_due(next_tick):
                    next_tick = now + tick_every
                    self._emit(self.engine.on_tick(now))
                self._take_liveness()
                if now >= next_membership:
                    next_membership = now + self._settings.membership.heartbeat_interval_ms
                    self._membership_tick(now)
                    self.links.relink_due = True  # records and their vouching may have changed
                if self.links.relink_due:
                    self.links.relink()
                self._leave.check()
            except ClosedError:
                return  # the node is closing under us; close() stops this thread next
            except Exception:  # one bad message or bug must not kill the node's replication
                self.stats["replicator_errors"] += 1
                log.exception("replicator: error handling an event (counted, continuing)")
            # Apart from the steps above: one failing every time (a full disk fails every
            # write) must not stop the operator's view of the node.
            if now >= next_status:
                next_status = now + self._settings.status_interval_ms
                self.report.refresh(now)

    def _tick_due(self, next_tick: int) -> int:
        """When the engine is next ticked: every ``sync_tick_ms`` while it has timed work
        under way, at its next digest while it is quiet."""
        quiet = self.engine.quiet_until()
        return next_tick if quiet is None else max(next_tick, quiet)

    def _emit(self, outgoing: Sequence[Outgoing]) -> None:
        for out in outgoing:
            if isinstance(out, Publish):
                self.transport.publish(topic_bytes(out.topic), out.data)
            elif isinstance(out, PublishTopic):
                self.transport.publish(out.topic, out.data)
            elif isinstance(out, Send):
                self.transport.send(out.peer.encode(), CHANNEL_SYNC + out.data)
            elif isinstance(out, Subscribe):
                self.transport.subscribe_peer(out.peer.encode(), out.topics)
            else:
                self.transport.unsubscribe_peer(out.peer.encode(), out.topics)

    def _queued(self, first: Delivery) -> list[Delivery]:
        """``first`` and what else has already arrived, up to ``DRAIN_MAX``."""
        out = [first]
        while len(out) < DRAIN_MAX:
            more = self.transport.recv(timeout=0)
            if more is None:
                break
            out.append(more)
        return out

    def _on_deliveries(self, deliveries: list[Delivery], now: int) -> None:
        """In arrival order; the engine's frames between two membership messages go
        together (``on_messages`` applies the batches among them in one commit). What
        each part answers is sent before the next part is handled."""
        frames: list[tuple[str, bytes, str | None, bytes | None]] = []
        for delivery in deliveries:
            if delivery.kind == "publish":
                topic = delivery.topic or b""
                source = (delivery.peer or b"").decode("utf-8", "replace")
                # The engine's relay judges the topic and the link it came on (see
                # crdtstore.sync.relay's trust rule): only links it made are heard.
                frames.append(("", delivery.payload, source, topic))
                continue
            peer = (delivery.peer or b"").decode("utf-8", "replace")
            channel, body = delivery.payload[:1], delivery.payload[1:]
            if self.hellos.versions.refused(peer) and channel != CHANNEL_MEMBERS:
                self.stats["refused_version_frames"] += 1  # only a new hello may change that
            elif channel == CHANNEL_SYNC:
                frames.append((peer, body, None, None))
            elif channel == CHANNEL_MEMBERS:
                self._engine_frames(frames, now)
                self.hellos.on_message(peer, body, now)
            elif channel == CHANNEL_QUERY:
                self.report.on_query(peer, body, now)
            else:
                self.stats["rejected_channel"] += 1
        self._engine_frames(frames, now)

    def _engine_frames(
        self, frames: list[tuple[str, bytes, str | None, bytes | None]], now: int
    ) -> None:
        """Hand the frames collected so far to the engine together, and empty the list."""
        if frames:
            outgoing = self.engine.on_messages(frames, now, early=self._emit)
            frames.clear()
            self._emit(outgoing)

    # -- membership ------------------------------------------------------------------------

    def _subscriptions(self) -> list[bytes]:
        # Batches and have notices come per link (SyncEngine.link); digests from all.
        return [topic_bytes(name) for name in self.engine.subscriptions()]

    def _membership_tick(self, now: int) -> None:
        self.links.keep_topic_links(self.records.refresh(now))
        live = [
            n
            for n in self.liveness.known()
            if self.liveness.status(n) in (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        ]
        self.clock_watch.check(now, live, self.liveness.known())

    def _take_liveness(self) -> None:
        """Act on what the overlay's thread decided since the last call."""
        for event in self.liveness.take_neighbour_events():
            if isinstance(event, NeighbourUp):
                self.links.neighbour_up(event.contact)
            else:
                self.links.neighbour_down(event.node_id)
        self._status_changes(self.liveness.take_changes())
        refuted = self.liveness.take_refutation()
        own = self.own.record
        if refuted is not None and own is not None and refuted > own.incarnation:
            # Our probe answers carry the new incarnation already; the record follows.
            self.own.change(incarnation=refuted)
            self._commit_pending.set()
            self.stats["refutations"] += 1

    def _status_changes(self, changes: list[StatusChange]) -> None:
        for change in changes:
            log.info(
                "member %s: %s -> %s (incarnation %d)",
                change.node_id,
                change.old.value if change.old else "-",
                change.new.value,
                change.incarnation,
            )
            self.stats[f"members_became_{change.new.value}"] += 1
            if change.new is MemberStatus.ALIVE:
                self.links.add_to_engine(change.node_id)
            elif change.new in (MemberStatus.DEAD, MemberStatus.LEFT):
                # A dead peer must not hold back log trimming forever.
                self.links.remove_from_engine(change.node_id)
            if self._on_status is not None:
                try:
                    self._on_status(change)
                except Exception:  # a hook's failure must not stop acting on the others
                    self.stats["member_watch_errors"] += 1
                    log.exception("member status hook %r failed (counted)", self._on_status)

    def _greet(self, node_id: str) -> None:
        self.hellos.greet(node_id)

    def _seed_hello(self) -> bytes | None:
        """On the overlay's thread (which starts after the parts are built)."""
        return self.hellos.for_seed()
