"""A deterministic in-memory network driving N sync engines over any replicas.

Each node's replica comes from a factory (``replicas``): a
:class:`~crdtstore.testing.memory.MemoryReplica` by default, or an LMDB one in a
temporary directory (:class:`~crdtstore.testing.lmdb_replica.SimLMDBReplica`), so the
same schedules exercise the replica that production runs.

Everything random comes from one seeded ``random.Random`` and time is simulated, so a
run is a pure function of (seed, operations): a failing schedule replays exactly. The
network can drop, duplicate, reorder and delay messages, partition nodes into groups,
and crash-restart a node (its engine, all volatile state, is recreated; its replica is
kept, as an LMDB directory would be). A replica reads time only from the simulated clock
its factory is handed.

Invariant: a message is delivered only to a node that is up and, at delivery time, in
the same partition group as its sender; published frames go to every other node
subscribed to the topic, direct ones to the named peer, and ``peer`` is "" for published
frames exactly as the ZeroMQ replicator passes it.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import msgpack

from crdtstore.crdt import CausalContext, DotMap, HybridClock, LWWMap, ORSet
from crdtstore.sync.engine import DIGEST_TOPIC, Outgoing, Publish, Send, SyncEngine
from crdtstore.sync.messages import DeltaBatch
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica

START_MS = 1_700_000_000_000  # a realistic epoch, so hybrid timestamps look like real ones


@dataclass(frozen=True, slots=True)
class Faults:
    """What the network does to each message (each copy decided independently)."""

    drop: float = 0.0
    """Probability a message is lost."""
    duplicate: float = 0.0
    """Probability a message is delivered twice."""
    reorder: float = 0.0
    """Probability a message is held back by up to ``reorder_ms`` extra."""
    delay_ms: tuple[int, int] = (1, 5)
    """Range of the normal one-way delay."""
    reorder_ms: int = 200


NO_FAULTS = Faults()


class SimReplica(Replica, Protocol):
    """A replica the simulator can write through and read back."""

    def mutate(
        self, namespace: str, type_name: str, fn: Callable[[DotMap[Any]], DotMap[Any]]
    ) -> DeltaBatch:
        """One local mutation: ``fn(state)`` returns its delta, consuming this node's next
        dot; it is applied and logged as an own batch, which is returned."""
        ...

    def value(self, namespace: str) -> DotMap[Any]:
        """A snapshot of the namespace's state and context."""
        ...


ReplicaFactory = Callable[[str, Callable[[], int]], SimReplica]
"""``(node id, the node's simulated wall clock in ms) -> its replica``."""


def memory_replicas(node_id: str, now_ms: Callable[[], int]) -> SimReplica:
    return MemoryReplica(node_id)


@dataclass(slots=True)
class SimNode:
    node_id: str
    replica: SimReplica
    engine: SyncEngine
    topics: frozenset[str] | None
    clock: HybridClock = field(default_factory=HybridClock)
    clock_offset_ms: int = 0
    up: bool = True
    commit_pending: bool = False
    incarnation: int = 0
    left: bool = False


class Simulator:
    """N nodes, one simulated clock, one seeded faulty network."""

    def __init__(
        self,
        nodes: int | Sequence[str],
        seed: int = 0,
        settings: SyncSettings | None = None,
        faults: Faults = NO_FAULTS,
        *,
        tick_ms: int = 10,
        topics: Mapping[str, Iterable[str] | None] | None = None,
        record: bool = False,
        flush_ms: int | None = None,
        replicas: ReplicaFactory = memory_replicas,
    ) -> None:
        ids = [f"n{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        self.settings = settings if settings is not None else SyncSettings()
        self.faults = faults
        self.tick_ms = tick_ms
        self.flush_ms = tick_ms if flush_ms is None else flush_ms
        """How often a node publishes its pending commits (its commit coalescing window)."""
        self.rng = random.Random(seed)
        self.now = START_MS
        self._next_tick = START_MS
        self._queue: list[tuple[int, int, str, str, bytes, bool]] = []
        self._seq = 0
        self.groups: list[frozenset[str]] | None = None  # partition; None = all connected
        self._ids = ids
        self.nodes: dict[str, SimNode] = {}
        for node_id in ids:
            wanted = None if topics is None else topics.get(node_id)
            held = None if wanted is None else frozenset(wanted)
            replica = replicas(node_id, partial(self.local_ms, node_id))
            self.nodes[node_id] = SimNode(
                node_id, replica, self._engine(node_id, replica, held), held
            )
        self.messages: Counter[str] = Counter()  # kind -> messages put on the wire
        self.bytes: Counter[str] = Counter()  # kind -> bytes put on the wire
        self.link_bytes: Counter[tuple[str, str]] = Counter()
        self.received_bytes: Counter[str] = Counter()  # node -> bytes delivered to it
        self.dropped = 0
        self.wire: list[tuple[str, str, bytes]] | None = [] if record else None
        """With ``record``: every (src, dst, frame) put on the wire, in order."""

    # -- writes -----------------------------------------------------------------------------

    def write(
        self, node: str, ns: str, type_name: str, fn: Callable[[DotMap[Any]], DotMap[Any]]
    ) -> DeltaBatch:
        """One local mutation at ``node`` (which must be up); published at its next tick."""
        sim_node = self.nodes[node]
        if not sim_node.up:
            raise RuntimeError(f"node {node} is down")
        batch = sim_node.replica.mutate(ns, type_name, fn)
        sim_node.commit_pending = True
        return batch

    def add(self, node: str, ns: str, element: Any) -> DeltaBatch:
        return self.write(node, ns, ORSet.type_name, lambda s: _orset(s).add(node, element))

    def remove(self, node: str, ns: str, element: Any) -> DeltaBatch:
        return self.write(node, ns, ORSet.type_name, lambda s: _orset(s).remove(node, element))

    def put(self, node: str, ns: str, key: Any, value: Any) -> DeltaBatch:
        ts = self.timestamp(node)
        return self.write(node, ns, LWWMap.type_name, lambda s: _lww(s).put(node, key, value, ts))

    def delete(self, node: str, ns: str, key: Any) -> DeltaBatch:
        return self.write(node, ns, LWWMap.type_name, lambda s: _lww(s).delete(node, key))

    def timestamp(self, node: str) -> int:
        """A fresh hybrid timestamp from ``node``'s clock (which may be skewed)."""
        sim_node = self.nodes[node]
        sim_node.clock, ts = sim_node.clock.tick(self.local_ms(node))
        return ts

    def local_ms(self, node: str) -> int:
        sim_node = self.nodes.get(node)
        return self.now + (0 if sim_node is None else sim_node.clock_offset_ms)

    # -- faults -----------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes talk only within their group (others form one more)."""
        named = [frozenset(g) for g in groups]
        rest = frozenset(self.nodes) - frozenset().union(*named)
        self.groups = [*named, rest] if rest else named

    def heal(self) -> None:
        self.groups = None

    def crash(self, node: str) -> None:
        self.nodes[node].up = False

    def restart(self, node: str) -> None:
        """Bring a node back with a fresh engine over its kept replica (peers that left
        are not its peers)."""
        sim_node = self.nodes[node]
        sim_node.incarnation += 1
        sim_node.engine = self._engine(node, sim_node.replica, sim_node.topics)
        for other, peer in self.nodes.items():
            if peer.left:
                sim_node.engine.remove_peer(other)
        sim_node.up = True
        sim_node.commit_pending = True  # commits made before the crash may be unpublished

    def leave(self, node: str) -> None:
        """A graceful leave: the node stops and every other node forgets it as a peer
        (its digests no longer hold their logs back), as membership does on ``left``."""
        self.nodes[node].up = False
        self.nodes[node].left = True
        for other, sim_node in self.nodes.items():
            if other != node:
                sim_node.engine.remove_peer(node)

    def rejoin(self, node: str) -> None:
        """A node that left comes back: a fresh engine over its kept replica, and every
        other node takes it as a peer again."""
        self.restart(node)
        self.nodes[node].left = False
        for other, sim_node in self.nodes.items():
            if other != node:
                sim_node.engine.add_peer(node)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    # -- running ----------------------------------------------------------------------------

    def run(self, ms: int) -> None:
        """Advance simulated time by ``ms``, delivering messages and ticking nodes."""
        end = self.now + ms
        while True:
            next_msg = self._queue[0][0] if self._queue else end + 1
            at = min(next_msg, self._next_tick)
            if at > end:
                break
            self.now = at
            if next_msg <= self._next_tick:
                # Everything due now reaches its node together, as a replicator takes the
                # deliveries already queued: the engine's on_messages groups the batches.
                due: dict[str, list[tuple[str, bytes, bool]]] = {}
                while self._queue and self._queue[0][0] == at:
                    _, _, src, dst, data, published = heapq.heappop(self._queue)
                    due.setdefault(dst, []).append((src, data, published))
                for dst, messages in due.items():
                    self._deliver(dst, messages)
            else:
                self._next_tick += self.tick_ms
                for sim_node in self.nodes.values():
                    if sim_node.up:
                        self._tick(sim_node)
        self.now = end

    def run_until_quiescent(self, max_ms: int = 60_000) -> bool:
        """Faults off, heal, restart crashed nodes and rejoin those that left; run until
        every replica holding a namespace has equal state and context and nothing is in
        flight. False on timeout."""
        self.faults = NO_FAULTS
        self.heal()
        for node_id, sim_node in self.nodes.items():
            if sim_node.left:
                self.rejoin(node_id)
            elif not sim_node.up:
                self.restart(node_id)
        deadline = self.now + max_ms
        while self.now < deadline:
            self.run(self.tick_ms)
            if not self._queue and self.converged():
                return True
        return False

    def converged(self) -> bool:
        return converged([(n.engine, n.replica) for n in self.nodes.values()])

    # -- inspection -------------------------------------------------------------------------

    def namespaces(self) -> set[str]:
        return {ns for n in self.nodes.values() for ns in n.replica.namespaces()}

    def values(self, ns: str) -> dict[str, DotMap[Any]]:
        return {
            node_id: n.replica.value(ns)
            for node_id, n in self.nodes.items()
            if ns in n.replica.namespaces()
        }

    def context(self, node: str, ns: str) -> CausalContext:
        return self.nodes[node].replica.context(ns)

    def replica(self, node: str) -> SimReplica:
        return self.nodes[node].replica

    def engine(self, node: str) -> SyncEngine:
        return self.nodes[node].engine

    def in_flight(self) -> int:
        return len(self._queue)

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def reset_counters(self) -> None:
        self.messages.clear()
        self.bytes.clear()
        self.link_bytes.clear()
        self.received_bytes.clear()
        self.dropped = 0

    def inject(self, node: str, data: bytes, peer: str = "") -> None:
        """Hand raw bytes to ``node``'s engine now, as if received from ``peer``."""
        sim_node = self.nodes[node]
        self._emit(node, sim_node.engine.on_message(peer, data, self.local_ms(node)))

    # -- internals ----------------------------------------------------------------------------

    def _engine(self, node_id: str, replica: SimReplica, held: frozenset[str] | None) -> SyncEngine:
        engine = SyncEngine(node_id, replica, self.settings, topics=held)
        for other in self._ids:
            engine.add_peer(other)
        return engine

    def _tick(self, sim_node: SimNode) -> None:
        engine, now = sim_node.engine, self.local_ms(sim_node.node_id)
        if sim_node.commit_pending and (self.now - START_MS) % self.flush_ms < self.tick_ms:
            sim_node.commit_pending = False
            self._emit(sim_node.node_id, engine.on_local_commit(now))
        self._emit(sim_node.node_id, engine.on_tick(now))

    def _connected(self, a: str, b: str) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def _emit(self, src: str, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            if isinstance(out, Publish):
                for dst, node in self.nodes.items():
                    if dst != src and (out.topic == DIGEST_TOPIC or node.engine.holds(out.topic)):
                        self._put_on_wire(src, dst, out.data, True)
            elif isinstance(out, Send) and out.peer in self.nodes and out.peer != src:
                self._put_on_wire(src, out.peer, out.data, False)

    def _put_on_wire(self, src: str, dst: str, data: bytes, published: bool) -> None:
        kind = message_kind(data)
        if self.wire is not None:
            self.wire.append((src, dst, data))
        self.messages[kind] += 1
        self.bytes[kind] += len(data)
        self.link_bytes[(src, dst)] += len(data)
        faults, rng = self.faults, self.rng
        if not self._connected(src, dst) or (faults.drop and rng.random() < faults.drop):
            self.dropped += 1
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        for _ in range(copies):
            delay = rng.randint(*faults.delay_ms)
            if faults.reorder and rng.random() < faults.reorder:
                delay += rng.randint(0, faults.reorder_ms)
            self._seq += 1
            heapq.heappush(self._queue, (self.now + delay, self._seq, src, dst, data, published))

    def _deliver(self, dst: str, messages: list[tuple[str, bytes, bool]]) -> None:
        node = self.nodes[dst]
        frames: list[tuple[str, bytes, str | None]] = []
        for src, data, published in messages:
            if not node.up or not self._connected(src, dst):
                self.dropped += 1
                continue
            self.received_bytes[dst] += len(data)
            frames.append(("" if published else src, data, None))
        if frames:
            self._emit(dst, node.engine.on_messages(frames, self.local_ms(dst)))


def converged(nodes: Sequence[tuple[SyncEngine, SimReplica]]) -> bool:
    """Whether, for every namespace any of ``nodes`` has, all of them that hold it have
    equal state and context."""
    for ns in sorted({ns for _, replica in nodes for ns in replica.namespaces()}):
        holders = [replica for engine, replica in nodes if engine.holds(ns)]
        contexts = {r.context(ns) for r in holders}
        if len(contexts) > 1:
            return False
        values = [r.value(ns) for r in holders if ns in r.namespaces()]
        if len(values) != len(holders) or any(v != values[0] for v in values[1:]):
            return False
    return True


def message_kind(data: bytes) -> str:
    """The message kind, read from the envelope's head without decoding the body."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data[:64])
    try:
        unpacker.read_array_header()
        unpacker.unpack()
        kind = unpacker.unpack()
    except Exception:
        return "garbage"
    return kind if isinstance(kind, str) else "garbage"


def _orset(state: DotMap[Any]) -> ORSet:
    assert isinstance(state, ORSet)
    return state


def _lww(state: DotMap[Any]) -> LWWMap:
    assert isinstance(state, LWWMap)
    return state


__all__ = [
    "NO_FAULTS",
    "Faults",
    "ReplicaFactory",
    "SimNode",
    "SimReplica",
    "Simulator",
    "converged",
    "message_kind",
]
