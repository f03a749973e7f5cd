"""The whole node protocol on one simulated network: overlay, membership and sync together.

Each simulated node runs what a ``crdtstore serve`` node runs in the overlay mode, less
its sockets and disk: the sans-I/O
:class:`~crdtstore.membership.protocol.MembershipProtocol` (HyParView overlay, probing,
suspicion, dissemination; driven as :class:`~crdtstore.testing.netsim.NetSim` drives it,
which this extends) and a :class:`~crdtstore.sync.engine.SyncEngine` with ``relay=True``
over a :class:`~crdtstore.testing.memory.MemoryReplica`. All of it shares NetSim's
network (per-frame delay, loss, partitions) and its model of work (a slow node takes
``slow_factor`` times as long over every frame and timer, sync's included).

How the product's wiring (``crdtstore.replicator``, ``crdtstore.overlay_liveness``) maps
onto this simulation:

- A node's *links* are its active view (the protocol's ``NeighbourUp``/``NeighbourDown``)
  plus its topic links. A link is a DEALER and a SUB to that member: the node hears what
  the member publishes, on the topics it subscribes to (``SyncEngine.subscriptions``),
  and can send it direct messages. Sync frames travel on links only: a ``Publish`` of
  ``X`` reaches every live node that links ``X`` and subscribes to the topic; a ``Send``
  of ``X`` reaches its peer only if ``X`` links it (the transport sends on the
  connection it holds). So what converges here converges by relay and neighbour-only
  anti-entropy, as in the product.
- The sync engine's peers are the linked members: added (and greeted with a digest)
  when a link comes up, removed when it goes and when the member is found dead or gone.
- With topics, each node keeps ``TOPIC_LINKS`` links per held topic to random live
  holders of it, made two-way by the holder, and replaced when one dies (the
  replicator's ``_keep_topic_links`` and ``_pin_back``).

What is simplified, and why it does not change what is tested: member records are not
replicated through the ``__members`` namespace; the protocol learns members from its own
gossip (a join floods), and a member's topics come from a directory the simulation holds,
standing for its record. A topic link's answer (the holder linking back) takes effect at
once rather than after a hello's round trip, and only within a partition's group. A new
link hears publications at once (ZeroMQ's subscription takes a round trip).

Determinism: NetSim's one seeded ``random.Random`` makes every choice here too, and
nothing iterates a set: a run replays from its seed (see ``trace()``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crdtstore.crdt import DotMap, HybridClock, LWWMap, ORSet
from crdtstore.crdt.dots import Dot
from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.protocol import Command, NeighbourDown, NeighbourUp, ProtocolSettings
from crdtstore.network.links import TOPIC_LINKS
from crdtstore.sync.engine import DIGEST_TOPIC, Outgoing, Publish, Send, SyncEngine
from crdtstore.sync.messages import DeltaBatch
from crdtstore.sync.outgoing import PublishTopic, Subscribe
from crdtstore.sync.relaying import TREE
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica
from crdtstore.testing.netsim import NetSim, SimNode
from crdtstore.testing.simulator import START_MS, converged, message_kind

__all__ = ["Host", "NodeSim", "SyncFrame", "WriteTrace"]

_GONE = (MemberStatus.DEAD, MemberStatus.LEFT)
_DIGEST = DIGEST_TOPIC.encode() + b"\0"


@dataclass(frozen=True, slots=True)
class SyncFrame:
    """A sync engine's frame on a link: published on ``topic`` (as spelt on the wire),
    or direct if None."""

    data: bytes
    topic: bytes | None


@dataclass(slots=True)
class Host:
    """What a node keeps beside its membership protocol. The replica, clock and topics
    outlive a crash (they are its directory); the engine and links do not."""

    replica: MemoryReplica
    topics: frozenset[str] | None
    engine: SyncEngine
    clock: HybridClock = field(default_factory=HybridClock)
    neighbours: dict[str, None] = field(default_factory=dict)
    pinned: dict[str, None] = field(default_factory=dict)
    """Topic links (kept whatever the overlay does)."""
    next_sync_ms: float = 0.0
    next_links_ms: float = 0.0

    def linked(self, node_id: str) -> bool:
        return node_id in self.neighbours or node_id in self.pinned


@dataclass(slots=True)
class WriteTrace:
    """One write, followed until every holder that was live when it was made has it."""

    namespace: str
    dot: Dot
    at_ms: float
    waiting: dict[str, None]
    done_ms: float | None = None


class NodeSim(NetSim):
    """NetSim's membership network, with a sync engine and a replica on every node."""

    def __init__(
        self,
        seed: int,
        settings: ProtocolSettings | None = None,
        sync_settings: SyncSettings | None = None,
        *,
        delay_ms: tuple[float, float] = (2.0, 10.0),
        loss: float = 0.0,
        work_ms: float = 0.05,
        slow_factor: float = 10.0,
        decode: bool = True,
        sync_tick_ms: float = 50.0,
        links_interval_ms: float = 500.0,
        trace: bool = False,
    ) -> None:
        """``sync_tick_ms``: how often each engine ticks (the replicator's
        ``sync_tick_ms``); ``links_interval_ms``: how often a node with topics checks its
        topic links (the replicator does it each membership tick); ``trace``: keep a
        digest of every delivery, for :meth:`trace`."""
        super().__init__(seed, settings, delay_ms, loss, work_ms, slow_factor, decode)
        self.sync_settings = sync_settings or SyncSettings()
        self.sync_tick_ms = sync_tick_ms
        self.links_interval_ms = links_interval_ms
        self.hosts: dict[str, Host] = {}
        self.directory: dict[str, frozenset[str] | None] = {}
        """Each member's topics, as its record would say (None: every namespace)."""
        self._subscribers: dict[str, dict[str, None]] = {}
        """Member -> the nodes that link it (whose SUBs hear its PUB)."""
        self._link_subscriptions: dict[tuple[str, str], set[bytes]] = {}
        """(subscriber, publisher) -> prefixes the subscriber's relay asked of that link."""
        self.sync_sent: Counter[str] = Counter()
        """Sync message kind -> frames put on links (a publication counts per copy)."""
        self.sync_received: Counter[str] = Counter()
        self.sync_received_bytes: Counter[str] = Counter()
        self.unlinked_sends = 0
        """Direct sync messages dropped because their sender no longer links the peer."""
        self.writes: list[WriteTrace] = []
        self._waiting: list[WriteTrace] = []
        self._trace = hashlib.sha256() if trace else None

    # -- scenario --------------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        seeds: Iterable[str] = (),
        slow: bool = False,
        incarnation: int = 1,
        clock_skew_ms: int = 0,
        *,
        topics: Iterable[str] | None = None,
    ) -> SimNode:
        """Start ``node_id`` holding ``topics`` (None: every namespace). Adding it again
        is a new life (see :meth:`restart`), whose topics are those it had."""
        if node_id not in self.directory:
            self.directory[node_id] = None if topics is None else frozenset(topics)
        return super().add_node(node_id, seeds, slow, incarnation, clock_skew_ms)

    def restart(self, node_id: str) -> SimNode:
        """Bring a crashed (or departed) node back as a new life over its kept replica,
        joining through a random live node."""
        old = self.nodes[node_id]
        if old.up:
            raise RuntimeError(f"node {node_id} is up")
        live = [n.node_id for n in self.live()]
        seeds = [self.rng.choice(live)] if live else []
        return self.add_node(
            node_id, seeds, old.slow, old.protocol.incarnation + 1, old.clock_skew_ms
        )

    def crash(self, node_id: str) -> None:
        super().crash(node_id)
        self._stop_waiting(node_id)

    def leave(self, node_id: str) -> None:
        super().leave(node_id)
        self._stop_waiting(node_id)

    def put(self, node_id: str, namespace: str, key: Any, value: Any) -> DeltaBatch:
        """An LWW-map write at ``node_id`` (which must be up), published at once."""
        host = self._host_up(node_id)
        host.clock, ts = host.clock.tick(self.engine_ms(self.now))
        return self._write(
            node_id,
            namespace,
            LWWMap.type_name,
            lambda s: _as(s, LWWMap).put(node_id, key, value, ts),
        )

    def add(self, node_id: str, namespace: str, element: Any) -> DeltaBatch:
        """An OR-Set add at ``node_id`` (which must be up), published at once."""
        self._host_up(node_id)
        return self._write(
            node_id, namespace, ORSet.type_name, lambda s: _as(s, ORSet).add(node_id, element)
        )

    # -- measurements ----------------------------------------------------------------------

    def engine_ms(self, at: float) -> int:
        """Simulated time as engines and clocks see it (a realistic epoch)."""
        return START_MS + int(at)

    def holders(self, namespace: str) -> list[str]:
        return [n.node_id for n in self.live() if self.hosts[n.node_id].engine.holds(namespace)]

    def converged(self) -> bool:
        """Every live holder of each namespace has the same state and context."""
        return converged([(h.engine, h.replica) for h in self._live_hosts()])

    def disagreement(self) -> str | None:
        """Why membership is not agreed, or None: every live node must hold the same
        (status, incarnation) of every member, itself alive at its own incarnation and
        every stopped node dead or left."""
        live = self.live()
        if not live:
            return None
        views = [
            (n.node_id, {m: (s, i) for m, (s, i, _) in n.protocol.members().items()}) for n in live
        ]
        first_id, first = views[0]
        for node_id, view in views[1:]:
            if view != first:
                members = sorted(first.keys() | view.keys())
                differ = [m for m in members if first.get(m) != view.get(m)]
                return f"{first_id} and {node_id} differ on {differ[:5]}"
        for node_id, node in self.nodes.items():
            held = first.get(node_id)
            if node.up and held != (MemberStatus.ALIVE, node.protocol.incarnation):
                return f"live {node_id} held as {held}"
            if not node.up and held is not None and held[0] not in _GONE:
                return f"stopped {node_id} held as {held}"
        return None

    def settled(self) -> bool:
        """Membership agreed and every namespace converged."""
        return self.disagreement() is None and self.converged()

    def write_latencies(self) -> list[float]:
        """Per finished write, ms from the write until its last holder had it."""
        return [w.done_ms - w.at_ms for w in self.writes if w.done_ms is not None]

    def links_of(self, node_id: str) -> list[str]:
        host = self.hosts[node_id]
        return [*host.neighbours, *(p for p in host.pinned if p not in host.neighbours)]

    def trace(self) -> str:
        """A digest of every delivery so far (with ``trace=True``): two runs with the
        same seed and scenario give the same one."""
        if self._trace is None:
            raise RuntimeError("this simulation was made without trace=True")
        return self._trace.hexdigest()

    # -- what a node runs (NetSim's hooks) -------------------------------------------------

    def _started(self, node: SimNode) -> None:
        node_id = node.node_id
        old = self.hosts.get(node_id)
        if old is not None:
            for other in [*old.neighbours, *old.pinned]:
                self._subscribers.get(other, {}).pop(node_id, None)
                self._link_subscriptions.pop((node_id, other), None)
        topics = self.directory[node_id]
        replica = MemoryReplica(node_id) if old is None else old.replica
        engine = SyncEngine(node_id, replica, self.sync_settings, topics=topics, relay=True)
        host = Host(replica, topics, engine, HybridClock() if old is None else old.clock)
        host.next_sync_ms = host.next_links_ms = self.now
        self.hosts[node_id] = host
        # Commits made before a crash may never have been published.
        self._emit(node_id, engine.on_local_commit(self.engine_ms(self.now)))

    def _deadline(self, node: SimNode) -> float:
        host = self.hosts[node.node_id]
        deadline = min(super()._deadline(node), host.next_sync_ms)
        return deadline if host.topics is None else min(deadline, host.next_links_ms)

    def _on_tick(self, node: SimNode, at: float) -> None:
        node_id, host = node.node_id, self.hosts[node.node_id]
        if node.clock(at) >= node.protocol.next_deadline():
            super()._on_tick(node, at)
        if at >= host.next_sync_ms:
            host.next_sync_ms = at + self.sync_tick_ms
            self._emit(node_id, host.engine.on_tick(self.engine_ms(at)))
        if host.topics is not None and at >= host.next_links_ms:
            host.next_links_ms = at + self.links_interval_ms
            self._keep_topic_links(node)

    def _on_frame(self, node: SimNode, sender: str, msg: object, at: float) -> None:
        if not isinstance(msg, SyncFrame):
            super()._on_frame(node, sender, msg, at)
            return
        node_id = node.node_id
        kind = message_kind(msg.data)
        self.sync_received[kind] += 1
        self.sync_received_bytes[kind] += len(msg.data)
        if self._trace is not None:
            self._trace.update(f"{at:.6f} {sender}>{node_id} ".encode() + msg.data)
        host = self.hosts[node_id]
        frame: tuple[str, bytes, str | None, bytes | None]
        if msg.topic is None:
            frame = (sender, msg.data, None, None)
        else:
            frame = ("", msg.data, sender, msg.topic)
        self._emit(node_id, host.engine.on_messages([frame], self.engine_ms(at)))
        if self._waiting:
            self._check_writes(node_id, at)

    def _run_commands(self, node: SimNode, commands: Sequence[Command]) -> None:
        super()._run_commands(node, commands)
        if node.node_id not in self.hosts:
            return  # NetSim.leave's commands of a node not yet hosted
        for command in commands:
            if isinstance(command, NeighbourUp):
                self._link(node.node_id, command.contact.node_id, pinned=False)
            elif isinstance(command, NeighbourDown):
                self._unlink(node.node_id, command.node_id, pinned=False)
            elif isinstance(command, StatusChange):
                self._status_change(node.node_id, command)

    # -- links and engine peers (the replicator's part) ------------------------------------

    def _link(self, node_id: str, other: str, *, pinned: bool) -> None:
        host = self.hosts[node_id]
        was_linked = host.linked(other)
        (host.pinned if pinned else host.neighbours)[other] = None
        if was_linked:
            return
        self._subscribers.setdefault(other, {})[node_id] = None
        engine = host.engine
        if other not in engine.peers:
            engine.add_peer(other)
            engine.set_digest_form(other, hashed=True)
        # The hello exchange of a new link ends with a digest sent directly.
        self._emit(node_id, engine.greet(other))
        self._emit(node_id, engine.link(other, TREE, self.directory.get(other)))

    def _unlink(self, node_id: str, other: str, *, pinned: bool) -> None:
        host = self.hosts[node_id]
        (host.pinned if pinned else host.neighbours).pop(other, None)
        if host.linked(other):
            return
        self._subscribers.get(other, {}).pop(node_id, None)
        host.engine.remove_peer(other)
        host.engine.forget_digest_form(other)
        self._emit(node_id, host.engine.unlink(other))

    def _status_change(self, node_id: str, change: StatusChange) -> None:
        host, other = self.hosts[node_id], change.node_id
        if change.new is MemberStatus.ALIVE and host.linked(other):
            if other not in host.engine.peers:
                host.engine.add_peer(other)
        elif change.new in _GONE:
            # A dead peer must not hold back log trimming forever.
            host.engine.remove_peer(other)
            if other in host.pinned:
                self._unlink(node_id, other, pinned=True)

    def _keep_topic_links(self, node: SimNode) -> None:
        """``TOPIC_LINKS`` links per held topic to live holders of it (see the module)."""
        node_id, host, proto = node.node_id, self.hosts[node.node_id], node.protocol

        def live(m: str) -> bool:
            return proto.status(m) in (MemberStatus.ALIVE, MemberStatus.SUSPECT)

        for other in [p for p in host.pinned if not live(p)]:
            self._unlink(node_id, other, pinned=True)
        assert host.topics is not None
        for topic in sorted(host.topics):
            linked = [m for m in self.links_of(node_id) if self._holds(m, topic)]
            if len(linked) >= TOPIC_LINKS:
                continue
            spare = [
                m
                for m in self.directory
                if m != node_id and not host.linked(m) and self._holds(m, topic) and live(m)
            ]
            for other in self.rng.sample(spare, min(TOPIC_LINKS - len(linked), len(spare))):
                self._link(node_id, other, pinned=True)
                peer = self.nodes[other]
                if peer.up and not peer.paused and self._same_side(node_id, other):
                    self._link(other, node_id, pinned=True)

    def _holds(self, member: str, topic: str) -> bool:
        topics = self.directory.get(member)
        return topics is None or topic in topics

    def _same_side(self, a: str, b: str) -> bool:
        return self._groups is None or self._groups.get(a, -1) == self._groups.get(b, -2)

    # -- frames ----------------------------------------------------------------------------

    def _emit(self, src: str, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            if isinstance(out, Publish | PublishTopic):
                topic = out.topic if isinstance(out, PublishTopic) else out.topic.encode() + b"\0"
                for dst in self._subscribers.get(src, {}):
                    if self._subscribed(dst, src, topic):
                        self._put(src, dst, SyncFrame(out.data, topic))
            elif isinstance(out, Send):
                if self.hosts[src].linked(out.peer):
                    self._put(src, out.peer, SyncFrame(out.data, None))
                else:
                    self.unlinked_sends += 1
            else:
                # A subscription travels ahead of what it lets through, on the link's own
                # connection; taken at once here (see the module's note).
                held = self._link_subscriptions.setdefault((src, out.peer), set())
                if isinstance(out, Subscribe):
                    held.update(out.topics)
                else:
                    held.difference_update(out.topics)

    def _subscribed(self, node_id: str, publisher: str, topic: bytes) -> bool:
        """Whether ``node_id``'s SUB to ``publisher`` lets ``topic`` through: its global
        subscriptions (digests) or one its relay made on that link, matched by prefix as
        ZeroMQ matches."""
        node = self.nodes[node_id]
        if not node.up:
            return False
        if topic == _DIGEST:
            return True
        prefixes = self._link_subscriptions.get((node_id, publisher), ())
        return any(topic.startswith(p) for p in prefixes)

    def _put(self, src: str, dst: str, frame: SyncFrame) -> None:
        # A published frame carries its topic (and ZeroMQ's separator); a direct one its
        # channel byte: the bytes a node would receive.
        size = len(frame.data) + (1 if frame.topic is None else len(frame.topic))
        node = self.nodes[src]
        node.sent_msgs += 1
        node.sent_bytes += size
        self.sync_sent[message_kind(frame.data)] += 1
        self._transmit(src, dst, size, frame)

    # -- write tracking ----------------------------------------------------------------------

    def _write(
        self,
        node_id: str,
        namespace: str,
        type_name: str,
        fn: Callable[[DotMap[Any]], DotMap[Any]],
    ) -> DeltaBatch:
        host = self.hosts[node_id]
        batch = host.replica.mutate(namespace, type_name, fn)
        waiting = {h: None for h in self.holders(namespace) if h != node_id}
        trace = WriteTrace(namespace, Dot(node_id, batch.first), self.now, waiting)
        self.writes.append(trace)
        if waiting:
            self._waiting.append(trace)
        else:
            trace.done_ms = self.now
        self._emit(node_id, host.engine.on_local_commit(self.engine_ms(self.now)))
        return batch

    def _check_writes(self, node_id: str, at: float) -> None:
        replica = self.hosts[node_id].replica
        for trace in self._waiting:
            if (
                node_id in trace.waiting
                and trace.namespace in replica.namespaces()
                and trace.dot in replica.context(trace.namespace)
            ):
                del trace.waiting[node_id]
                if not trace.waiting:
                    trace.done_ms = at
        self._waiting = [t for t in self._waiting if t.done_ms is None]

    def _stop_waiting(self, node_id: str) -> None:
        """A stopped node is no longer a holder a write must reach."""
        for trace in self._waiting:
            trace.waiting.pop(node_id, None)
            if not trace.waiting:
                trace.done_ms = self.now
        self._waiting = [t for t in self._waiting if t.done_ms is None]

    def _host_up(self, node_id: str) -> Host:
        if not self.nodes[node_id].up:
            raise RuntimeError(f"node {node_id} is down")
        return self.hosts[node_id]

    def _live_hosts(self) -> list[Host]:
        return [self.hosts[n.node_id] for n in self.live()]


_T = TypeVar("_T")


def _as(state: object, cls: type[_T]) -> _T:
    if not isinstance(state, cls):
        raise TypeError(f"namespace holds a {type(state).__name__}, not a {cls.__name__}")
    return state
