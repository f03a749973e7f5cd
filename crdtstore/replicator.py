"""The replicator: one node's sync engine and membership, run over the transport.

Theory of operation. The sync engine (``crdtstore.sync``) decides what to send and when;
the failure detector (``crdtstore.membership``) decides who is alive; the transport moves
frames. This module is the only place they meet. The replicator's thread owns the engine
(not thread-safe) and is the single consumer of the transport's deliveries; heartbeats
travel apart, on the transport's express pipe, to the detector's own thread
(:mod:`crdtstore.liveness`), so no apply work here delays them, and this thread acts on
the status changes that thread reports. Application threads reach the replicator only
through ``notify_commit``, which sets a flag the thread reads, so a write never waits for
the network.

Framing: direct messages carry a one-byte channel (``S`` sync engine, ``M`` membership)
so each goes to its owner without decoding twice. Published topics end in a NUL byte,
because ZeroMQ's SUB filter matches prefixes: without it a node subscribed to namespace
``a`` would also receive ``ab``.

Discovery: a node introduces itself to its seeds with a ``Hello``; a seed answers with its
own and both connect to each other. Everything else about members (addresses, topics,
keys, incarnation) is the replicated ``__members`` namespace, which every node holds and
repairs like any other, so a node learns of members it was never introduced to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import zmq.auth

from crdtstore.addresses import check_bind, split_tcp
from crdtstore.errors import ClosedError, DecodeError, Error
from crdtstore.liveness import Liveness
from crdtstore.membership import MEMBERS_NAMESPACE, MemberRecord, MemberStatus, StatusChange
from crdtstore.membership.messages import Hello
from crdtstore.membership.observed import observed_members
from crdtstore.membership.seeds import SeedWatch
from crdtstore.membership.view import Member, parse_records
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.sync.engine import Publish, Send, SyncEngine
from crdtstore.sync.messages import decode_message, encode_message
from crdtstore.sync.settings import SyncSettings
from transport import CurveKeys, Delivery, Transport, TransportSettings, load_keys

if TYPE_CHECKING:
    from crdtstore.node import Node
    from crdtstore.settings import NodeSettings

log = logging.getLogger(__name__)

CHANNEL_SYNC = b"S"
CHANNEL_MEMBERS = b"M"
HEARTBEAT_TOPIC = "\x00heartbeat"
DRAIN_MAX = 64
"""Deliveries the replicator takes at once when several have arrived: the batches among
them are applied in one commit, so a node that fell behind is not held back by a
commit (an fsync) per batch."""
SEED_PREFIX = b"\x00seed:"
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
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise Error(f"seed {seed!r}: cannot read its public key {path!r}: {exc}") from exc
    return addr, public


def start_replicator(node: Node, bind: str, seeds: Sequence[str]) -> Replicator:
    """Build the node's replicator from its settings and start it (binds, or raises)."""
    settings = node.settings
    sync_fields = {f.name for f in dataclasses.fields(SyncSettings)}
    transport_fields = {f.name for f in dataclasses.fields(TransportSettings)}
    sync_settings = SyncSettings(
        max_clock_drift_ms=settings.max_clock_drift_ms,
        **{k: v for k, v in settings.extra.items() if k in sync_fields},
    )
    transport_settings = TransportSettings(
        drop_publish_fraction=settings.drop_publish_fraction,
        **{k: v for k, v in settings.extra.items() if k in transport_fields},
    )
    curve = None
    if settings.secret_key is not None and settings.keys_dir is not None:
        curve = load_keys(settings.secret_key, settings.keys_dir)
    parsed = [parse_seed(seed, settings.keys_dir) for seed in seeds]
    if curve is not None and any(key is None for _, key in parsed):
        raise Error("with CURVE keys configured every seed must be given as KEYNAME@ADDR")
    previous = node._member_values().get(node.node_id)
    incarnation = 1
    if isinstance(previous, dict) and isinstance(previous.get("incarnation"), int):
        incarnation = previous["incarnation"] + 1  # a restart outranks the old self
    member_view = MemberViewStore.open_for_writing(node.path, node.stats)
    try:
        replicator = Replicator(
            replica=node.replica,
            write_own_record=lambda r: node._write_member(r.node_id, r.to_value()),
            delete_record=node._delete_member,
            read_records=node._member_values,
            bind=bind,
            pub_bind=settings.pub_bind or derive_pub_address(bind),
            seeds=parsed,
            settings=settings,
            sync_settings=sync_settings,
            transport_settings=transport_settings,
            curve=curve,
            topics=node.topics,
            status_path=os.path.join(node.path, STATUS_FILE),
            extra_stats=lambda: dict(node.stats),
            member_view=member_view,
        )
    except BaseException:
        member_view.close()
        raise
    try:
        replicator.start(incarnation)
    except BaseException:
        replicator.close()
        raise
    return replicator


class Replicator:
    """Owns the transport, the sync engine and the liveness (failure detector) of one node."""

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
    ) -> None:
        self.node_id: str = replica.node_id
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
            express_topics=frozenset({topic_bytes(HEARTBEAT_TOPIC)}),
        )
        self.engine = SyncEngine(self.node_id, replica, sync_settings, topics=topics)
        self._member_view = member_view
        self.liveness = Liveness(
            node_id=self.node_id,
            transport=self.transport,
            heartbeat_topic=topic_bytes(HEARTBEAT_TOPIC),
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            suspect_after_ms=settings.suspect_after_ms,
            dead_after_ms=settings.dead_after_ms,
            view_interval_ms=settings.member_view_interval_ms,
            view=member_view,
            clock=now_ms,
            poll_ms=settings.poll_ms,
        )
        self._records: dict[str, MemberRecord] = {}
        self._connected: dict[str, tuple[str, str]] = {}
        self._engine_peers: set[str] = set()
        self._own: MemberRecord | None = None
        self._commit_pending = threading.Event()
        self._leaving = threading.Event()
        self._leave_confirmed = threading.Event()
        self._leave_timeout_s = 3 * sync_settings.digest_interval_ms / 1000
        self._seed_aliases: set[bytes] = set()
        # A seed silent for three greetings is unreachable (counted, logged now and then).
        self._seed_watch = SeedWatch(
            patience_ms=3 * settings.hello_interval_ms,
            warn_every_ms=sync_settings.log_interval_ms,
        )
        self._record_addrs: dict[str, tuple[str, str]] = {}
        self._partitioned: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards what members() reads from other threads

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
            started_at_ms=now_ms(),
        )
        self._write_own_record(self._own)
        for topic in self._subscriptions():
            self.transport.subscribe(topic)
        self.liveness.start(incarnation, router)
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-replicator-{self.node_id}", daemon=True
        )
        self._thread.start()

    def close(self, leave: bool = False) -> None:
        """Stop the thread, then the transport. Idempotent; never hangs."""
        if leave and self._own is not None and not self._stop.is_set():
            self._own = _replace(self._own, left=True)
            self._write_own_record(self._own)
            self._leaving.set()
            self.notify_commit()
            # Bounded: peers confirm through their digests (one digest interval, plus
            # repair if the publication was lost). Peers that never confirm still see
            # this node go dead, and get the record by anti-entropy if it ever returns.
            self._leave_confirmed.wait(timeout=self._leave_timeout_s)
        self._stop.set()
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

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        interval = self._settings.sync_tick_ms
        next_tick = 0
        next_membership = 0
        next_hello = 0
        next_status = 0
        next_publish = 0
        publish_every = self._settings.publish_interval_ms
        while not self._stop.is_set():
            now = now_ms()
            due = min(next_tick, next_membership)
            if self._commit_pending.is_set():
                due = min(due, next_publish)
            wait_ms = max(0, due - now)
            delivery = self.transport.recv(timeout=min(wait_ms, self._settings.poll_ms) / 1000)
            now = now_ms()
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
                if now >= next_tick:
                    next_tick = now + interval
                    # Other processes sharing the directory commit without notifying us.
                    self._emit(self.engine.on_local_commit(now))
                    self._emit(self.engine.on_tick(now))
                self._take_liveness()
                if now >= next_membership:
                    next_membership = now + self._settings.heartbeat_interval_ms
                    self._membership_tick(now)
                if now >= next_status and self._status_path is not None:
                    next_status = now + self._settings.status_interval_ms
                    self._write_status(now)
                if self._leaving.is_set() and self.engine.peers_caught_up(MEMBERS_NAMESPACE):
                    self._leave_confirmed.set()
                if now >= next_hello:
                    next_hello = now + self._settings.hello_interval_ms
                    self._greet_seeds(now)
            except ClosedError:
                return  # the node is closing under us; close() stops this thread next
            except Exception:  # one bad message or bug must not kill the node's replication
                self.stats["replicator_errors"] += 1
                log.exception("replicator: error handling an event (counted, continuing)")

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Live state for operators (``crdt-inspect DIR status``): members, lag, counters."""
        return {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "written_at_ms": now_ms() if now is None else now,
            "router": self.transport.bound_router,
            "pub": self.transport.bound_pub,
            "members": [dataclasses.asdict(m) for m in self.members()],
            "peer_lag": self.engine.peer_lag(),
            "sessions": self.engine.sessions(),
            "local_health": self.liveness.local_health,
            "sync": dict(self.engine.stats),
            "transport": self.transport.stats(),
            "replicator": dict(self.stats),
            "liveness": dict(self.liveness.stats),
            "storage": {} if self._extra_stats is None else dict(self._extra_stats()),
        }

    def _write_status(self, now: int) -> None:
        assert self._status_path is not None
        tmp = f"{self._status_path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.status(now), fh, sort_keys=True)
            os.replace(tmp, self._status_path)  # readers never see a half-written file
        except OSError as exc:
            # Operators lose the live view, replication goes on: count, log the first one.
            self.stats["status_write_errors"] += 1
            if self.stats["status_write_errors"] == 1:
                log.error("cannot write %s: %s (counted; replication continues)", tmp, exc)

    def _emit(self, outgoing: Sequence[Publish | Send]) -> None:
        for out in outgoing:
            if isinstance(out, Publish):
                self.transport.publish(topic_bytes(out.topic), out.data)
            else:
                self.transport.send(out.peer.encode(), CHANNEL_SYNC + out.data)

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
        frames: list[tuple[str, bytes, str | None]] = []
        for delivery in deliveries:
            if delivery.kind == "publish":
                topic = delivery.topic or b""
                if not topic.endswith(b"\x00"):
                    self.stats["rejected_topic"] += 1
                elif topic[:-1].decode("utf-8", "replace") == HEARTBEAT_TOPIC:
                    self.liveness.on_delivery(delivery, now)  # the express pipe carries them
                else:
                    source = (delivery.peer or b"").decode("utf-8", "replace")
                    frames.append(("", delivery.payload, source))
                continue
            peer = (delivery.peer or b"").decode("utf-8", "replace")
            channel, body = delivery.payload[:1], delivery.payload[1:]
            if channel == CHANNEL_SYNC:
                frames.append((peer, body, None))
            elif channel == CHANNEL_MEMBERS:
                self._engine_frames(frames, now)
                self._on_membership_message(peer, body, now)
            else:
                self.stats["rejected_channel"] += 1
        self._engine_frames(frames, now)

    def _engine_frames(self, frames: list[tuple[str, bytes, str | None]], now: int) -> None:
        """Hand the frames collected so far to the engine together, and empty the list."""
        if frames:
            outgoing = self.engine.on_messages(frames, now)
            frames.clear()
            self._emit(outgoing)

    # -- membership ------------------------------------------------------------------------

    def _subscriptions(self) -> list[bytes]:
        if self._topics is None:
            return [b""]  # every topic: this node replicates every namespace
        names = {HEARTBEAT_TOPIC, MEMBERS_NAMESPACE, *self.engine.subscriptions(), *self._topics}
        return [topic_bytes(name) for name in sorted(names)]

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
            if peer != msg.node_id and not peer.startswith(SEED_PREFIX.decode()):
                self.stats["rejected_hello_identity"] += 1
                return
            if peer.startswith(SEED_PREFIX.decode()):
                self._seed_watch.answered(peer.removeprefix(SEED_PREFIX.decode()))
            self._connect(msg.node_id, msg.router, msg.pub, msg.public_key)
            if not msg.reply and self._own is not None:
                self._send_hello(msg.node_id, reply=True)
                self._emit(self.engine.greet(msg.node_id))
        else:
            self.stats["rejected_membership"] += 1

    def _greet_seeds(self, now: int) -> None:
        """Say hello to every seed until some member other than this node is connected."""
        if self._own is None:
            return
        if any(n != self.node_id for n in self._connected):
            for alias in self._seed_aliases:
                self.transport.disconnect_peer(alias)  # the member connection replaces it
            self._seed_aliases.clear()
            return
        hello = Hello(
            self._own.node_id, self._own.router, self._own.pub, self._own.public_key, reply=False
        )
        for addr, key in self._seeds:
            if addr == self._own.router:
                continue
            alias = SEED_PREFIX + addr.encode()
            silent_ms = self._seed_watch.greeted(addr, now)
            if silent_ms is not None:
                self.stats["seed_unanswered"] += 1
                if self._seed_watch.should_warn(addr, now):
                    log.warning(
                        "seed %s has not answered for %.0f s (not running, or not reachable "
                        "from here?); still trying",
                        addr,
                        silent_ms / 1000,
                    )
            if alias not in self._seed_aliases:
                self.transport.connect_peer(alias, addr, None, key)
                self._seed_aliases.add(alias)
            self.transport.send(alias, CHANNEL_MEMBERS + encode_message(hello))

    def _apply_partition_file(self) -> None:
        path = self._settings.partition_file
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                wanted = {line.strip() for line in fh if line.strip()}
        except FileNotFoundError:
            wanted = set()
        for node_id in wanted - self._partitioned:
            self.transport.set_drop_rule(node_id.encode(), True)
        for node_id in self._partitioned - wanted:
            self.transport.set_drop_rule(node_id.encode(), False)
        if wanted != self._partitioned:
            log.warning("test partition: dropping all traffic with %s", sorted(wanted) or "-")
        self._partitioned = wanted

    def _membership_tick(self, now: int) -> None:
        self._apply_partition_file()
        self._refresh_records(now)

    def _take_liveness(self) -> None:
        """Act on what the liveness thread decided since the last call."""
        self._status_changes(self.liveness.take_changes())
        refuted = self.liveness.take_refutation()
        if refuted is not None and self._own is not None and refuted > self._own.incarnation:
            # Our heartbeats carry the new incarnation already; the record follows.
            self._own = _replace(self._own, incarnation=refuted)
            self._write_own_record(self._own)
            self._commit_pending.set()
            self.stats["refutations"] += 1

    def _refresh_records(self, now: int) -> None:
        records, rejected = parse_records(self._read_records())
        self.stats["rejected_member_record"] += rejected
        with self._lock:
            self._records = records
        for node_id, record in records.items():
            if node_id == self.node_id:
                if self._own is not None and record.incarnation > self._own.incarnation:
                    # An older life of this node wrote a higher one (clock of restarts).
                    incarnation = self.liveness.raise_incarnation(record.incarnation + 1)
                    self._own = _replace(self._own, incarnation=incarnation)
                    self._write_own_record(self._own)
                continue
            self._status_changes(self.liveness.add(node_id, record.incarnation, now, record.left))
            if record.left or self.liveness.status(node_id) is MemberStatus.DEAD:
                # A dead member keeps its connections (ZeroMQ retries them with back-off):
                # after a partition heals, its heartbeats are how we learn it refuted.
                if record.left:
                    self._disconnect(node_id)
                since = self.liveness.last_heard_ms(node_id) or record.started_at_ms
                if now - since > self._settings.prune_after_ms:
                    # Metadata of a member gone for good; its own later write survives this.
                    self._disconnect(node_id)
                    self._delete_record(node_id)
                    self.liveness.forget(node_id)
                    self.stats["members_pruned"] += 1
            elif self._record_addrs.get(node_id) != (record.router, record.pub):
                # Only a changed record moves the connection: a Hello from a restarted
                # member is newer than its old record, which may still be all we hold.
                self._record_addrs[node_id] = (record.router, record.pub)
                self._connect(node_id, record.router, record.pub, record.public_key, greet=True)

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

    def _connect(
        self, node_id: str, router: str, pub: str, key: str | None, greet: bool = False
    ) -> None:
        if self._connected.get(node_id) == (router, pub):
            return
        self.transport.connect_peer(
            node_id.encode(), router, pub, None if key is None else key.encode()
        )
        self._connected[node_id] = (router, pub)
        self._engine_add(node_id)
        if greet and self._own is not None:
            # A restarted node has a new PUB port its peers cannot learn from the record
            # they hold (they would need our PUB to receive the new one): tell them.
            self._send_hello(node_id, reply=False)

    def _send_hello(self, node_id: str, *, reply: bool) -> None:
        """Our addresses and key, to ``node_id`` (``reply``: an answer to its Hello)."""
        own = self._own
        assert own is not None  # callers check: a node without a record has no addresses
        hello = Hello(own.node_id, own.router, own.pub, own.public_key, reply=reply)
        self.transport.send(node_id.encode(), CHANNEL_MEMBERS + encode_message(hello))

    def _disconnect(self, node_id: str) -> None:
        self._record_addrs.pop(node_id, None)
        if self._connected.pop(node_id, None) is not None:
            self.transport.disconnect_peer(node_id.encode())
        self._engine_remove(node_id)

    def _engine_add(self, node_id: str) -> None:
        if node_id not in self._engine_peers and node_id in self._connected:
            self._engine_peers.add(node_id)
            self.engine.add_peer(node_id)

    def _engine_remove(self, node_id: str) -> None:
        if node_id in self._engine_peers:
            self._engine_peers.discard(node_id)
            self.engine.remove_peer(node_id)

    def members(self) -> list[Member]:
        with self._lock:
            records = dict(self._records)
        if self._own is not None:
            records[self.node_id] = self._own
        observations = self.liveness.observations()
        return observed_members(self.node_id, records, observations, now_ms(), stale=False)


def _replace(record: MemberRecord, **changes: Any) -> MemberRecord:
    from dataclasses import replace

    return replace(record, **changes)
