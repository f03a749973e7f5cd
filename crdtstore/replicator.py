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

Discovery: a node joins through its seeds by the protocol's join; the protocol's thread
connects to the neighbours it picks, and each link starts with a ``Hello`` both ways
(protocol versions, clocks, a digest). Everything else about members (addresses, topics,
keys, incarnation) is the replicated ``__members`` namespace, which every node holds and
repairs like any other, and which this thread tells the protocol of. A hello carries its
sender's record too: a member that restarts (or rejoins after a leave) is known at its
new life from its first hello, before its new record arrives, and a member whose record
this node refuses (stamped by a clock too far ahead) is still listed.

There is one membership mode. A node of an earlier release's full mesh (protocol versions
1 and 2) shares no version with this one and is refused at its hello, with a logged
reason naming both modes (:mod:`crdtstore.membership.versions`).

Clocks: hellos, probes and their acks carry the sender's clock reading; the replicator keeps
each member's offset (:mod:`crdtstore.membership.clocks`), lists it, tells members whose
clock is beyond ``max_clock_drift_ms`` of this node's, and logs both ends at error level.
Its one clock is a parameter (the node's), so a test can run a node whose clock is off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from crdtstore.addresses import check_bind, split_tcp
from crdtstore.errors import ClosedError, DecodeError, Error
from crdtstore.membership import MEMBERS_NAMESPACE, MemberRecord, MemberStatus, StatusChange
from crdtstore.membership.clocks import ClockJudgement, ClockOffsets
from crdtstore.membership.messages import Hello
from crdtstore.membership.observed import observed_members
from crdtstore.membership.protocol import SEED_PREFIX, ClockReading, NeighbourUp, ProtocolSettings
from crdtstore.membership.seeds import SeedWatch
from crdtstore.membership.versions import (
    HASHED_DIGESTS,
    RELAY_TREE,
    PeerVersions,
    Refusal,
)
from crdtstore.membership.view import Member, parse_records
from crdtstore.overlay_liveness import CHANNEL_OVERLAY, OverlayLiveness
from crdtstore.status_query import CHANNEL_QUERY, encode_status_reply, is_status_request
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.sync.engine import Publish, Send, SyncEngine
from crdtstore.sync.messages import decode_message, encode_message
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
CHANNEL_MEMBERS = b"M"
DRAIN_MAX = 64
"""Deliveries the replicator takes at once when several have arrived: the batches among
them are applied in one commit, so a node that fell behind is not held back by a
commit (an fsync) per batch."""
_MEMBER_FIELDS = tuple(f.name for f in dataclasses.fields(Member))
"""A status row is these fields, shallow: ``dataclasses.asdict`` copies each value deeply,
the larger part of building a status of many members (every field is a scalar or a
tuple of strings)."""
TOPIC_LINKS = 2
"""With topics: links kept per held topic to other holders of it."""
STATUS_FILE = "status.json"
"""Written into the node directory every ``status_interval_ms`` by the role holder."""


def topic_bytes(name: str) -> bytes:
    return name.encode() + b"\x00"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def derive_pub_address(router: str) -> str:
    """The default PUB endpoint beside a ROUTER endpoint: same host, a port the OS picks.

    Peers learn the PUB address from the handshake and the member record, so nothing
    relies on a port convention (``router + 1`` would collide with a neighbour's ROUTER
    on consecutive ports, as in ``tcp://127.0.0.1:7101`` / ``:7102``).
    """
    host, _ = split_tcp(check_bind(router), "bind address")
    return f"tcp://{host}:*"


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
        self._clock = clock
        self._replica = replica
        self._write_own_record = write_own_record
        self._delete_record = delete_record
        self._read_records = read_records
        self._seeds = list(seeds)
        self._settings = settings
        self._topics = topics
        self._curve = curve
        self._on_status = on_status
        self._status_path = status_path
        self._extra_stats = extra_stats
        self.stats: Counter[str] = Counter()
        self.transport = Transport(
            self.node_id.encode(),
            router_bind=bind,
            pub_bind=pub_bind,
            settings=transport_settings,
            curve=curve,
            express_channels=frozenset({CHANNEL_OVERLAY}),
            faults=faults,
        )
        self.engine = SyncEngine(self.node_id, replica, sync_settings, topics=topics, relay=True)
        self._member_view = member_view
        self.clocks = ClockOffsets(settings.max_clock_drift_ms)
        # The overlay's thread observes clocks in probes; this one in hellos and ticks.
        self._clocks_lock = threading.Lock()
        self.liveness = OverlayLiveness(
            node_id=self.node_id,
            transport=self.transport,
            settings=ProtocolSettings(
                probe_interval_ms=settings.membership.heartbeat_interval_ms,
                suspect_after_ms=settings.membership.suspect_after_ms,
                dead_after_ms=settings.membership.dead_after_ms,
                join_interval_ms=settings.membership.hello_interval_ms,
                prune_after_ms=settings.membership.prune_after_ms,
            ),
            seeds=list(seeds),
            view_interval_ms=settings.membership.member_view_interval_ms,
            view=member_view,
            clock=clock,
            seed_watch=SeedWatch(
                patience_ms=3 * settings.membership.hello_interval_ms,
                warn_every_ms=sync_settings.log_interval_ms,
            ),
            on_news=self.transport.wake,
            on_clock=self._probed_clock,
            seed_hello=self._seed_hello,
        )
        self._records: dict[str, MemberRecord] = {}
        self._records_read_at: int | None = None  # the directory's last commit then
        # Records hellos brought, of lives newer than the replicated record (or with none).
        self._introduced: dict[str, MemberRecord] = {}
        self._log_interval_ms = sync_settings.log_interval_ms
        self._versions = PeerVersions(sync_settings.log_interval_ms)
        self._clock_logged: dict[str, int] = {}
        self._clocks_disagree: set[str] = set()
        # What members() shows of clocks, as of the last membership tick (other threads
        # read it; the offsets themselves are the replicator thread's).
        self._clock_view: tuple[ClockJudgement, dict[str, int], dict[str, int]] = (
            ClockJudgement(0, {}, frozenset()),
            {},
            {},
        )
        self._connected: dict[str, tuple[str, str]] = {}
        self._engine_peers: set[str] = set()
        # The relay's links as last told to the engine (see _relink), and whether
        # something they depend on changed since.
        self._relinked: dict[str, tuple[int, frozenset[str] | None, bool]] = {}
        self._relink_due = False
        self._own: MemberRecord | None = None
        self._commit_pending = threading.Event()
        self._leaving = threading.Event()
        self._leave_confirmed = threading.Event()
        self._leave_timeout_s = 3 * sync_settings.digest_interval_ms / 1000
        # The life (incarnation, left) of each record told the protocol.
        self._learned: dict[str, tuple[int, bool]] = {}
        self._rng = random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards what members() reads from other threads
        self.loop_beat = time.monotonic()
        """When the thread last went round its loop: a stalled loop is an unhealthy node."""
        self.last_status: dict[str, Any] | None = None
        """The newest :meth:`status`, made by this thread every ``status_interval_ms``:
        what other threads read, since the engine's state is this thread's alone."""
        self._encoded_status: tuple[dict[str, Any], bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, incarnation: int) -> None:
        self.transport.start()
        router, pub = self.transport.bound_router, self.transport.bound_pub
        assert router is not None and pub is not None
        self._own = MemberRecord(
            node_id=self.node_id,
            router=router,
            pub=pub,
            topics=None if self._topics is None else tuple(sorted(self._topics)),
            public_key=None if self._curve is None else self._curve.public.decode(),
            incarnation=incarnation,
            started_at_ms=self._clock(),
        )
        self._write_own_record(self._own)
        for topic in self._subscriptions():
            self.transport.subscribe(topic)
        self.liveness.start_overlay(self._own)
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-replicator-{self.node_id}", daemon=True
        )
        self._thread.start()

    def close(self, leave: bool = False) -> None:
        """Stop the thread, then the transport. Idempotent; never hangs."""
        if leave and self._own is not None and not self._stop.is_set():
            self.liveness.prepare_leave()
            self._own = _replace(self._own, left=True)
            self._write_own_record(self._own)
            self._leaving.set()
            self.notify_commit()
            # Bounded: peers confirm through their digests (one digest interval, plus
            # repair if the publication was lost). Peers that never confirm still see
            # this node go dead, and get the record by anti-entropy if it ever returns.
            self._leave_confirmed.wait(timeout=self._leave_timeout_s)
            self.liveness.leave()
        self._stop.set()
        self.transport.wake()  # the thread waits for its next deadline: end that wait
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.liveness.close()
        self.transport.close()
        if self._member_view is not None:
            self._member_view.close()

    def _leave_reached_peers(self) -> bool:
        """Whether this node's record as left is known to a peer that will pass it on:
        every sync peer's digest shows it, and there is such a peer unless no other
        member is alive. With no sync peer yet (a leave right after joining), "every
        peer" held at once, the node closed, and its leave was lost with the frames
        still queued: the others saw it dead, never left (seen: 1 leave in 6)."""
        if not self.engine.peers_caught_up(MEMBERS_NAMESPACE):
            return False
        if self.engine.peers:
            return True
        live = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        return not any(
            self.liveness.status(n) in live for n in self.liveness.known() if n != self.node_id
        )

    def notify_commit(self) -> None:
        """Called after any local commit: publish the new own deltas soon."""
        self._commit_pending.set()
        wake = getattr(self.transport, "wake", None)
        if wake is not None:
            wake()

    @property
    def router_address(self) -> str | None:
        return self.transport.bound_router

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
                    self._relink_due = True  # records and their vouching may have changed
                if self._relink_due:
                    self._relink()
                if self._leaving.is_set() and self._leave_reached_peers():
                    self._leave_confirmed.set()
            except ClosedError:
                return  # the node is closing under us; close() stops this thread next
            except Exception:  # one bad message or bug must not kill the node's replication
                self.stats["replicator_errors"] += 1
                log.exception("replicator: error handling an event (counted, continuing)")
            # Apart from the steps above: one failing every time (a full disk fails every
            # write) must not stop the operator's view of the node.
            if now >= next_status:
                next_status = now + self._settings.status_interval_ms
                self._refresh_status(now)

    def _tick_due(self, next_tick: int) -> int:
        """When the engine is next ticked: every ``sync_tick_ms`` while it has timed work
        under way, at its next digest while it is quiet."""
        quiet = self.engine.quiet_until()
        return next_tick if quiet is None else max(next_tick, quiet)

    def _refresh_status(self, now: int) -> None:
        """The status snapshot for metrics and queries, and ``status.json``."""
        try:
            self.last_status = self.status(now)
        except ClosedError:
            return  # the node is closing
        except Exception:  # reading a counter must not kill the thread that writes them
            self.stats["status_write_errors"] += 1
            log.exception("cannot build the node's status (counted)")
            return
        if self._status_path is not None:
            self._write_status(self.last_status)

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Live state for operators (``crdt-inspect DIR status``): members, lag, clocks,
        counters."""
        members = self.members()
        return {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "written_at_ms": self._clock() if now is None else now,
            "router": self.transport.bound_router,
            "pub": self.transport.bound_pub,
            "members": [{name: getattr(m, name) for name in _MEMBER_FIELDS} for m in members],
            "clock": self._clock_status(members),
            "peer_lag": self.engine.peer_lag(),
            "sessions": self.engine.sessions(),
            "behind": self.engine.behind(),
            "protocol_versions": self._versions.agreements(),
            "local_health": self.liveness.local_health,
            "sync": dict(self.engine.stats),
            "transport": self.transport.stats(),
            "replicator": dict(self.stats),
            "liveness": dict(self.liveness.stats),
            "overlay": self._overlay_status(),
            "storage": {} if self._extra_stats is None else dict(self._extra_stats()),
        }

    def _overlay_status(self) -> dict[str, Any]:
        return {
            "neighbours": self.liveness.neighbours(),
            "connections": self.liveness.connections(),
            # The links trusted to relay any origin's batches (see relay_sources).
            "member_links": sorted(self.liveness.relay_sources()),
            "protocol": self.liveness.protocol_stats(),
        }

    def _write_status(self, status: dict[str, Any]) -> None:
        assert self._status_path is not None
        tmp = f"{self._status_path}.{os.getpid()}.tmp"
        try:
            # dumps, not dump: only dumps uses the C encoder (dump encodes in Python, a
            # large share of a status write with many members).
            text = json.dumps(status, sort_keys=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self._status_path)  # readers never see a half-written file
        except OSError as exc:
            # Operators lose the live view, replication goes on: count, log the first one.
            # (crdt-inspect tells a full file system from a stopped node.) A partial
            # temporary file would hold space a full disk lacks.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.stats["status_write_errors"] += 1
            if self.stats["status_write_errors"] == 1:
                log.error("cannot write %s: %s (counted; replication continues)", tmp, exc)

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
            if self._versions.refused(peer) and channel != CHANNEL_MEMBERS:
                self.stats["refused_version_frames"] += 1  # only a new hello may change that
            elif channel == CHANNEL_SYNC:
                frames.append((peer, body, None, None))
            elif channel == CHANNEL_MEMBERS:
                self._engine_frames(frames, now)
                self._on_membership_message(peer, body, now)
            elif channel == CHANNEL_QUERY:
                self._on_query(peer, body, now)
            else:
                self.stats["rejected_channel"] += 1
        self._engine_frames(frames, now)

    def _on_query(self, peer: str, body: bytes, now: int) -> None:
        """An operator's status query (:mod:`crdtstore.status_query`), answered from the
        newest status, encoded once per status interval however many ask."""
        # A sender named like a node (recorded, introduced or connected) is refused: the
        # answer would go to that node, on the connection to it.
        named_like_a_node = (
            peer == self.node_id
            or peer in self._records
            or peer in self._introduced
            or peer in self._connected
        )
        if named_like_a_node or not is_status_request(body):
            self.stats["rejected_query"] += 1
            return
        status = self.last_status
        if status is None:
            status = self.last_status = self.status(now)
        if self._encoded_status is None or self._encoded_status[0] is not status:
            self._encoded_status = (status, encode_status_reply(status))
        self.stats["status_queries"] += 1
        self.transport.send(peer.encode(), self._encoded_status[1])

    def _engine_frames(
        self, frames: list[tuple[str, bytes, str | None, bytes | None]], now: int
    ) -> None:
        """Hand the frames collected so far to the engine together, and empty the list."""
        if frames:
            outgoing = self.engine.on_messages(frames, now)
            frames.clear()
            self._emit(outgoing)

    # -- membership ------------------------------------------------------------------------

    def _subscriptions(self) -> list[bytes]:
        # Batches and have notices come per link (SyncEngine.link); digests from all.
        return [topic_bytes(name) for name in self.engine.subscriptions()]

    def _on_membership_message(self, peer: str | None, body: bytes, now: int) -> None:
        try:
            msg = decode_message(body)
        except DecodeError as exc:
            self.stats["rejected_membership"] += 1
            log.debug("membership: undecodable message from %r: %s", peer, exc)
            return
        if isinstance(msg, Hello) and peer:
            if msg.node_id == self.node_id:
                return
            if peer != msg.node_id and not peer.startswith(SEED_PREFIX):
                self.stats["rejected_hello_identity"] += 1
                return
            record = msg.record()
            held = self._records.get(msg.node_id)
            if (
                record is not None
                and held is not None
                and held.left
                and held.incarnation >= record.incarnation
            ):
                # Sent by a life that has left since (a hello may overtake the leave):
                # only a new life, at a higher incarnation, comes back.
                self.stats["hellos_after_leave"] += 1
                return
            agreed = self._versions.heard(msg.node_id, msg.incarnation, msg.versions, now)
            if isinstance(agreed, Refusal):
                self._refuse(agreed)
                if agreed.other_mode and not msg.reply and self._own is not None:
                    # Our hello back, once per hello of theirs (never to a reply, or two
                    # refusing nodes would answer each other for ever): a node of the
                    # earlier release's full mesh then logs why, too, instead of waiting
                    # on in silence.
                    hello = self._hello(reply=True)
                    self.transport.send(peer.encode(), CHANNEL_MEMBERS + encode_message(hello))
                return
            if msg.versions is None and self._versions.listed(msg.node_id):
                return  # its copy for older nodes, of the hello with versions acted on
            self._set_digest_form(msg.node_id)
            self._relink_due = True  # the version agreed with it may have changed
            if not msg.reply:
                self._pin_back(msg.record())
            offset = None
            if msg.clock_ms is not None:
                offset = msg.clock_ms - now
                with self._clocks_lock:
                    self.clocks.observe(msg.node_id, msg.clock_ms, now)
            if msg.reply:
                with self._clocks_lock:
                    self.clocks.told(msg.node_id, msg.offset_ms)
            if record is not None:
                # Not "heard" for the failure detector: the protocol's probes are.
                self._introduce(record)
            if not msg.reply and self._own is not None:
                self._send_hello(msg.node_id, reply=True, offset_ms=offset)
                self._emit(self.engine.greet(msg.node_id))
        else:
            self.stats["rejected_membership"] += 1

    def _refuse(self, refusal: Refusal) -> None:
        """A member with no protocol version in common: no connection, nothing it sends
        is acted on, until a hello of it says otherwise."""
        self.stats["refused_versions"] += 1
        if refusal.other_mode:
            self.stats["refused_membership_mode"] += 1
        if refusal.log_now:
            log.warning(
                "%s (%d refused hellos so far)", refusal.reason(), self.stats["refused_versions"]
            )
        self._disconnect(refusal.node_id)

    def _membership_tick(self, now: int) -> None:
        self._refresh_records(now)
        self._check_clocks(now)

    def _refresh_records(self, now: int) -> None:
        """Records tell the protocol of members (it connects to its neighbours itself); a
        member dead or gone longer than ``prune_after_ms`` loses its record."""
        overlay = self.liveness
        records = self._load_records()
        for node_id, record in records.items():
            if node_id == self.node_id:
                continue
            # A leave keeps its incarnation: told too, as gossip of it may have been lost.
            life = (record.incarnation, record.left)
            if life != self._learned.get(node_id):
                self._learned[node_id] = life
                overlay.learn(record, now)
            status = overlay.status(node_id)
            if status in (MemberStatus.DEAD, MemberStatus.LEFT) or record.left:
                since = overlay.last_heard_ms(node_id) or record.started_at_ms
                if now - since > self._settings.membership.prune_after_ms:
                    self._delete_record(node_id)
                    self._learned.pop(node_id, None)
                    self.stats["members_pruned"] += 1
        self._keep_topic_links(records, overlay)

    def _keep_topic_links(self, records: dict[str, MemberRecord], overlay: OverlayLiveness) -> None:
        """With topics, keep ``TOPIC_LINKS`` links per held topic to members that hold it.

        The overlay is one graph of all members, and a node relays only what it holds:
        the holders of a topic could sit apart, behind nodes that drop its batches. A few
        links per topic to random holders (pinned: kept whatever the overlay does, and
        made two-way by the holder's answer to our hello, see ``_pin_back``) join every
        topic's holders into a random graph of their own, connected with high
        probability; a holder that dies is replaced at the next refresh."""
        if self._topics is None:
            return
        pinned = overlay.pinned()
        live = {
            n: r
            for n, r in records.items()
            if n != self.node_id
            and not r.left
            and overlay.status(n) in (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        }
        for node_id in pinned - live.keys():
            overlay.unpin(node_id)
            if not overlay.is_neighbour(node_id):
                self._connected.pop(node_id, None)
                self._engine_remove(node_id)
        pinned &= live.keys()
        for topic in sorted(self._topics):
            holders = [n for n, r in live.items() if r.topics is None or topic in r.topics]
            linked = [n for n in holders if n in pinned or overlay.is_neighbour(n)]
            if len(linked) >= TOPIC_LINKS:
                continue
            spare = [n for n in holders if n not in linked]
            for node_id in self._rng.sample(spare, min(TOPIC_LINKS - len(linked), len(spare))):
                self._pin(live[node_id], overlay)
                pinned.add(node_id)

    def _pin(self, record: MemberRecord, overlay: OverlayLiveness) -> None:
        overlay.pin(record)
        self._connected[record.node_id] = (record.router, record.pub)
        self._engine_add(record.node_id)
        self.stats["topic_links"] += 1
        if self._own is not None:
            self._send_hello(record.node_id, reply=False)

    def _pin_back(self, record: MemberRecord | None) -> None:
        """A hello from a member that is neither neighbour nor pinned, holding a topic
        we hold: it pinned us; link back, so each of us hears the other's publications."""
        overlay = self.liveness
        if record is None:
            return
        node_id = record.node_id
        if node_id in self._connected or overlay.is_neighbour(node_id):
            return
        held = self._records.get(node_id)
        if held is None or held.left or held.incarnation < record.incarnation:
            # Only its replicated record vouches for it, and only that record's addresses
            # and key are linked to: a hello is the sender's word, and any client may send
            # one in a member's name, while what a link publishes is taken as relayed
            # batches of any origin. (A new life is linked back once its record arrives.)
            self.stats["pin_back_refused"] += 1
            return
        mine, theirs = self._topics, held.topics
        if mine is not None and theirs is not None and not set(mine) & set(theirs):
            return
        self._pin(held, overlay)

    def _take_liveness(self) -> None:
        """Act on what the overlay's thread decided since the last call."""
        for event in self.liveness.take_neighbour_events():
            if isinstance(event, NeighbourUp):
                contact = event.contact
                self._connected[contact.node_id] = (contact.router, contact.pub)
                self._engine_add(contact.node_id)
                if self._own is not None:
                    # Clocks, versions and a digest: a link starts with hellos both ways.
                    self._send_hello(contact.node_id, reply=False)
            elif event.node_id not in self.liveness.pinned():
                self._connected.pop(event.node_id, None)
                self._engine_remove(event.node_id)
        self._status_changes(self.liveness.take_changes())
        refuted = self.liveness.take_refutation()
        if refuted is not None and self._own is not None and refuted > self._own.incarnation:
            # Our probe answers carry the new incarnation already; the record follows.
            self._own = _replace(self._own, incarnation=refuted)
            self._write_own_record(self._own)
            self._commit_pending.set()
            self.stats["refutations"] += 1

    def _probed_clock(self, reading: ClockReading) -> None:
        """On the overlay's thread: a member's clock reading from a probe or an ack (any
        member probed or probing, not only neighbours, whose hellos bring theirs)."""
        with self._clocks_lock:
            if reading.sent_ms is None:
                self.clocks.observe(reading.node_id, reading.clock_ms, reading.received_ms)
            else:
                self.clocks.observe_round_trip(
                    reading.node_id, reading.clock_ms, reading.sent_ms, reading.received_ms
                )

    def _load_records(self) -> dict[str, MemberRecord]:
        """The replicated member records, kept for ``members()``; this node's own, if an
        older life of it wrote a higher incarnation (clock of restarts), is raised above."""
        commit = self._replica.last_commit()
        if commit == self._records_read_at:
            return self._records  # nothing was written since they were read
        records, rejected = parse_records(self._read_records())
        self.stats["rejected_member_record"] += rejected
        with self._lock:
            self._records = records
        self._records_read_at = commit
        own = records.get(self.node_id)
        if own is not None and self._own is not None and own.incarnation > self._own.incarnation:
            incarnation = self.liveness.raise_incarnation(own.incarnation + 1)
            self._own = _replace(self._own, incarnation=incarnation)
            self._write_own_record(self._own)
        return records

    def _introduce(self, record: MemberRecord) -> None:
        """Keep the record a hello brought while the replicated one is older, or absent
        (it may never be applied here: stamped by a clock too far ahead)."""
        held = self._records.get(record.node_id)
        known = self._introduced.get(record.node_id)
        if (held is None or held.incarnation < record.incarnation) and (
            known is None or known.incarnation <= record.incarnation
        ):
            with self._lock:
                self._introduced[record.node_id] = record

    # -- clocks ----------------------------------------------------------------------------

    def _live_peers(self) -> list[str]:
        return [
            n
            for n in self.liveness.known()
            if self.liveness.status(n) in (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        ]

    def _check_clocks(self, now: int) -> None:
        """Log each live member whose clock is beyond the limit of this node's, by this
        node's estimate or by what the member says (error level, at most once per log
        interval per member); refresh what members() shows of clocks."""
        live = self._live_peers()
        known = self.liveness.known()
        with self._clocks_lock:
            judgement = self.clocks.judge(self.node_id, live)
            told = {n: o for n, o in self.clocks.told_by().items() if n in live}
            beyond = self.clocks.beyond_limit(live)
            offsets = {n: o for n in known if (o := self.clocks.offset(n)) is not None}
        disagree = {n: -o for n, o in told.items()}
        disagree.update(beyond)  # our own estimate first
        for node_id in sorted(self._clocks_disagree - disagree.keys()):
            log.info("clock: member %s is within max_clock_drift_ms again", node_id)
        for node_id, offset in sorted(disagree.items()):
            if node_id not in self._clocks_disagree:
                self.stats["clock_disagreements"] += 1
            last = self._clock_logged.get(node_id)
            if last is None or now - last >= self._log_interval_ms:
                self._clock_logged[node_id] = now
                log.error("%s", clock_alarm(node_id, offset, self.clocks.max_drift_ms, judgement))
        self._clocks_disagree = set(disagree)
        with self._lock:
            self._clock_view = judgement, offsets, told

    def _clock_status(self, members: list[Member]) -> dict[str, Any]:
        with self._lock:
            judgement, _, told = self._clock_view
        return {
            "max_clock_drift_ms": self.clocks.max_drift_ms,
            "skew_ms": judgement.skew_ms.get(self.node_id, 0),
            "off": sorted(judgement.off),
            "told": told,
            "beyond_limit": {
                m.node_id: m.clock_offset_ms
                for m in members
                if m.clock_offset_ms is not None and self.clocks.beyond(m.clock_offset_ms)
            },
        }

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
                self._engine_add(change.node_id)
            elif change.new in (MemberStatus.DEAD, MemberStatus.LEFT):
                # A dead peer must not hold back log trimming forever.
                self._engine_remove(change.node_id)
            if self._on_status is not None:
                try:
                    self._on_status(change)
                except Exception:  # a hook's failure must not stop acting on the others
                    self.stats["member_watch_errors"] += 1
                    log.exception("member status hook %r failed (counted)", self._on_status)

    def _set_digest_form(self, node_id: str) -> None:
        """Tell the engine which digests ``node_id`` reads; one not heard yet (a record led
        here) gets the form every version reads."""
        agreed = self._versions.agreed(node_id)
        self.engine.set_digest_form(node_id, hashed=(agreed or 0) >= HASHED_DIGESTS)

    def _hello(self, *, reply: bool, offset_ms: int | None = None) -> Hello:
        own = self._own
        assert own is not None  # callers check: a node without a record has no addresses
        return Hello(
            own.node_id,
            own.router,
            own.pub,
            own.public_key,
            reply,
            incarnation=own.incarnation,
            topics=own.topics,
            started_at_ms=own.started_at_ms,
            clock_ms=self._clock(),
            offset_ms=offset_ms,
            versions=self._versions.spoken,
        )

    def _send_hello(self, node_id: str, *, reply: bool, offset_ms: int | None = None) -> None:
        """Our record, to ``node_id`` (``reply``: an answer to its Hello, with its clock's
        offset from ours as that hello showed it). Always the form with the version list:
        the form without it is for v0.1.0 nodes, which speak version 1 alone and are
        refused here anyway."""
        hello = self._hello(reply=reply, offset_ms=offset_ms)
        self.transport.send(node_id.encode(), CHANNEL_MEMBERS + encode_message(hello))

    def _seed_hello(self) -> bytes | None:
        """On the overlay's thread: our hello for a seed that has not answered our joins
        (a seed of an earlier release's full mesh drops them unread, but refuses a hello
        with a reason, and answers with its own, so that both nodes log why)."""
        if self._own is None:
            return None
        return CHANNEL_MEMBERS + encode_message(self._hello(reply=False))

    def _disconnect(self, node_id: str) -> None:
        # The overlay's thread owns the connections: ending the link there keeps its books
        # right (a neighbour it still counted would never be connected again).
        self._connected.pop(node_id, None)
        self.liveness.unpin(node_id)
        self._engine_remove(node_id)
        self.engine.forget_digest_form(node_id)

    def _engine_add(self, node_id: str) -> None:
        if node_id not in self._engine_peers and node_id in self._connected:
            self._engine_peers.add(node_id)
            self.engine.add_peer(node_id)
        self._relink_due = True

    def _engine_remove(self, node_id: str) -> None:
        if node_id in self._engine_peers:
            self._engine_peers.discard(node_id)
            self.engine.remove_peer(node_id)
        self._relink_due = True

    def _relink(self) -> None:
        """Tell the engine's relay which links carry relayed batches: every connected
        member whose hello agreed a version, with that version, the namespaces its
        record holds, and whether the record vouches for the connection
        (``relay_sources``: then it relays every origin's batches; a joiner whose record
        has not arrived yet is held to its own origin)."""
        self._relink_due = False
        sources = self.liveness.relay_sources()
        wanted: dict[str, tuple[int, frozenset[str] | None, bool]] = {}
        for node_id in self._engine_peers:
            if self._versions.refused(node_id):
                continue
            # Before its hello is heard, its own batches in the newest form: a write it
            # makes at once is not missed while the hellos cross (its subscription
            # travels with the connection's handshake).
            heard = self._versions.agreed(node_id)
            agreed = heard or RELAY_TREE
            record = self._records.get(node_id) or self._introduced.get(node_id)
            vouched = heard is not None and node_id in sources and node_id in self._records
            topics = None if record is None else record.topics
            wanted[node_id] = (agreed, None if topics is None else frozenset(topics), vouched)
        for node_id in sorted(self._relinked.keys() - wanted.keys()):
            del self._relinked[node_id]
            self._emit(self.engine.unlink(node_id))
        for node_id, form in sorted(wanted.items()):
            if self._relinked.get(node_id) != form:
                self._relinked[node_id] = form
                self._emit(self.engine.link(node_id, *form))

    def members(self) -> list[Member]:
        with self._lock:
            records = dict(self._records)
            introduced = dict(self._introduced)
            judgement, offsets, _ = self._clock_view
        observations = self.liveness.observations()
        for node_id, record in introduced.items():
            # Shown once that life is heard (by the protocol), as a record is once read.
            held = records.get(node_id)
            seen = observations.get(node_id)
            heard = 0 if seen is None else seen.incarnation
            if (
                held is None or held.incarnation < record.incarnation
            ) and heard >= record.incarnation:
                records[node_id] = record
        for node_id, contact in self.liveness.contacts().items():
            seen = observations.get(node_id)
            if seen is not None and node_id not in records:
                # Known to the overlay only: a non-neighbour (no hello) whose record has
                # not arrived, or is refused here (stamped by a clock too far ahead),
                # listed with its status and clock as a neighbour is from its hello; a
                # member killed before its record spread is seen dead. Its topics are not
                # known here (None). The protocol prunes it as the replicator prunes
                # records (prune_after_ms).
                records[node_id] = MemberRecord(
                    node_id=node_id,
                    router=contact.router,
                    pub=contact.pub,
                    topics=None,
                    public_key=contact.public_key,
                    incarnation=contact.incarnation,
                    started_at_ms=seen.since_ms,
                )
        if self._own is not None:
            records[self.node_id] = self._own
        rows = observed_members(self.node_id, records, observations, self._clock(), stale=False)
        return [
            dataclasses.replace(
                m,
                clock_offset_ms=0 if m.is_self else offsets.get(m.node_id),
                clock_off=m.node_id in judgement.off,
            )
            for m in rows
        ]


def clock_alarm(node_id: str, offset: int, limit: int, judgement: ClockJudgement) -> str:
    """What to tell the operator of a member whose clock is ``offset`` ms from ours."""
    if offset > 0:
        head = f"member {node_id}'s clock is {offset} ms ahead of this node's"
        effect = f"this node defers {node_id}'s writes until its own clock reaches their stamps"
    else:
        head = f"this node's clock is {-offset} ms ahead of member {node_id}'s"
        effect = f"{node_id} defers this node's writes until its clock reaches their stamps"
    count = len(judgement.skew_ms)
    if judgement.off and len(judgement.off) < count:
        off = ", ".join(sorted(judgement.off))
        verdict = f"by the median of {count} clocks, the one off is {off}"
    else:
        verdict = f"{count} clocks cannot tell which one is wrong"
    return (
        f"clock: {head}, beyond max_clock_drift_ms={limit}: {effect}; {verdict} "
        "(crdt-inspect DIR status)"
    )


def _replace(record: MemberRecord, **changes: Any) -> MemberRecord:
    from dataclasses import replace

    return replace(record, **changes)
