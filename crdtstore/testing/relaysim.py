"""A deterministic simulation of relayed deltas (:mod:`crdtstore.sync.relay`) on an overlay.

The overlay is taken from :class:`~crdtstore.testing.netsim.NetSim` once it settled
(:func:`converged_overlay`: each node's HyParView active view; a link one side lists is
used both ways, :func:`symmetric`). A namespace not every node holds adds the ring links
of :func:`~crdtstore.sync.relay_topics.topic_links` among its holders. On it each node
runs a :class:`~crdtstore.sync.relay.Relay`, and the network behaves as ZeroMQ's does:

- a node's SUB socket is connected to the PUB of every node it links to; a subscription
  goes to *every* PUB it is connected to (subscriptions are per socket), takes one link
  delay to reach it, is never lost and keeps its order (it travels over TCP); a PUB
  filters by prefix, on its side, as ZeroMQ does over TCP;
- a publication reaches each subscriber whose subscriptions match its topic, each copy
  with its own delay (``delay_ms``) and its own chance ``loss`` of being dropped (a PUB's
  high-water mark, a reconnect); direct messages (prune, graft, fetch and its answer)
  have the same delay and loss; every channel between two nodes keeps its order;
- bytes received are counted per node and per kind: a data frame is its topic plus
  ZMTP's two-byte frame headers, and one copy of a batch (counted apart, so one run
  gives the ratio to any batch size); have notices, prunes, grafts and fetch requests
  are encoded with the real codec; subscriptions count their topic and flag byte.

Nothing else runs (no membership traffic, no digests): what is measured is the relay.
A crash (:meth:`RelaySim.crash`) tells the victim's neighbours at once, as the
membership protocol would, and leaves the overlay unrepaired.
One seeded ``random.Random`` drives delays, loss and the workload, and nothing iterates
a set, so a run replays whatever ``PYTHONHASHSEED`` is.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from crdtstore.sync.messages import Graft, Have, Prune, RepairRequest, encode_message
from crdtstore.sync.relay import (
    BatchKey,
    Command,
    Deliver,
    Fetch,
    PublishBatch,
    PublishHave,
    Relay,
    RelaySettings,
    SendTo,
    Subscribe,
    Unsubscribe,
)
from crdtstore.sync.relay_topics import parse_topic, topic_links
from crdtstore.testing.netsim import NetSim

FRAME = 2
"""ZMTP's header of a short frame (flags, size)."""
REPLY_OVERHEAD = 24
"""A fetch answer's envelope around the batch (kind, request id, namespace)."""


def converged_overlay(
    n: int, seed: int, settle_ms: float = 2_000, max_ms: float = 20_000, loss: float = 0.0
) -> dict[str, tuple[str, ...]]:
    """Each node's active view once ``n`` nodes joined (each through a random earlier
    one), ran the membership protocol ``settle_ms`` and their overlay is connected.
    :class:`OverlaySplit` if it is not connected by ``max_ms`` of simulated time.

    No loss by default while the overlay forms: with loss, a node whose Join was lost
    but which others joined through keeps neighbours, stops retrying, and its group
    stays an island that knows only itself (seen at 200 nodes with 1% loss)."""
    rng = random.Random(seed)
    sim = NetSim(seed, loss=loss)
    sim.record_observations = False
    ids = [f"n{i}" for i in range(n)]
    sim.add_node(ids[0])
    for i in range(1, n):
        sim.add_node(ids[i], seeds=[ids[rng.randrange(i)]])
    at = settle_ms
    while True:
        sim.run_until(at)
        views = {
            nid: tuple(sorted(node.protocol.overlay.active)) for nid, node in sim.nodes.items()
        }
        apart = sorted(set(views) - reachable(symmetric(views), ids[0]))
        if not apart:
            return views
        if at >= max_ms:
            raise OverlaySplit(
                f"overlay of {n} (seed {seed}) still split at {at:.0f} ms: {apart[:10]} apart"
            )
        at += 1_000


class OverlaySplit(RuntimeError):
    """The membership overlay did not connect every node: nothing could reach them."""


def reachable(links: Mapping[str, Sequence[str]], start: str) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for other in links[stack.pop()]:
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def symmetric(overlay: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each node's neighbours either way: HyParView links are symmetric by design, and
    a one-sided entry (a handshake under way) is a connection both ends use."""
    both: dict[str, set[str]] = {n: set(v) for n, v in overlay.items()}
    for node, view in overlay.items():
        for other in view:
            both.setdefault(other, set()).add(node)
    return {n: sorted(v) for n, v in both.items()}


class _Filter:
    """A PUB's subscriptions from one SUB: counted prefixes, matched as ZeroMQ does."""

    __slots__ = ("counts", "lengths")

    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()
        self.lengths: Counter[int] = Counter()

    def change(self, topic: bytes, delta: int) -> bool:
        """Apply one (un)subscription; False if it unsubscribed what was not there."""
        if delta < 0 and self.counts[topic] <= 0:
            return False
        self.counts[topic] += delta
        self.lengths[len(topic)] += delta
        if not self.counts[topic]:
            del self.counts[topic]
        if not self.lengths[len(topic)]:
            del self.lengths[len(topic)]
        return True

    def matches(self, topic: bytes) -> bool:
        counts = self.counts
        return any(topic[:k] in counts for k in self.lengths)


@dataclass(frozen=True, slots=True)
class _FetchAnswer:
    key: BatchKey


@dataclass(frozen=True, slots=True)
class _Subscription:
    subscriber: str
    topics: tuple[bytes, ...]
    delta: int


@dataclass(frozen=True, slots=True)
class _Publication:
    publisher: str
    topic: bytes
    body: BatchKey | Have


@dataclass(frozen=True, slots=True)
class _Direct:
    sender: str
    msg: Prune | Graft | RepairRequest | _FetchAnswer


@dataclass(frozen=True, slots=True)
class _Own:
    namespace: str


_Event = _Subscription | _Publication | _Direct | _Own | None


@dataclass
class RelayNode:
    node_id: str
    relay: Relay
    publishers: tuple[str, ...]
    """The PUBs its SUB socket is connected to."""
    received: Counter[str] = field(default_factory=Counter)
    """Bytes received per kind, batches' own bytes aside (they are ``copies``)."""
    copies: int = 0
    """Copies of batches received (published or fetched)."""
    heard: Counter[str] = field(default_factory=Counter)
    """Publications received per namespace (data and have notices)."""
    delivered: dict[BatchKey, float] = field(default_factory=dict)
    tick_at: float = -1.0


class RelaySim:
    def __init__(
        self,
        overlay: Mapping[str, Sequence[str]],
        holders: Mapping[str, frozenset[str]],
        seed: int,
        settings: RelaySettings | None = None,
        delay_ms: tuple[float, float] = (2.0, 10.0),
        loss: float = 0.01,
        chords: int = 1,
    ) -> None:
        self.rng = random.Random(seed)
        self.settings = settings or RelaySettings()
        self.delay_ms = delay_ms
        self.loss = loss
        self.now = 0.0
        self.stats: Counter[str] = Counter()
        self.published: dict[BatchKey, float] = {}
        self.down: set[str] = set()
        self._seqs: Counter[tuple[str, str]] = Counter()
        self._heap: list[tuple[float, int, str, _Event]] = []
        self._order = 0
        self._fifo: dict[tuple[str, str, str], float] = {}
        self._filters: dict[str, dict[str, _Filter]] = {n: {} for n in overlay}
        self.holders = {
            ns: sorted(n for n in overlay if ns in holders[n])
            for ns in sorted({ns for topics in holders.values() for ns in topics})
        }
        links = self._links(symmetric(overlay), holders, chords)
        self.nodes = {
            nid: RelayNode(nid, Relay(nid, holders[nid], self.settings), tuple(sorted(links[nid])))
            for nid in overlay
        }
        for nid, node in self.nodes.items():
            for neighbour, namespaces in sorted(links[nid].items()):
                self._run(node, node.relay.neighbour_up(neighbour, frozenset(namespaces)))

    def _links(
        self,
        overlay: Mapping[str, Sequence[str]],
        holders: Mapping[str, frozenset[str]],
        chords: int,
    ) -> dict[str, dict[str, set[str]]]:
        """Per node, each node it subscribes to and for which namespaces."""
        everyone = len(overlay)
        out: dict[str, dict[str, set[str]]] = {n: {} for n in overlay}
        for ns, held_by in self.holders.items():
            holding = set(held_by)
            for node in held_by:
                near: Collection[str] = [n for n in overlay[node] if n in holding]
                if len(held_by) < everyone:
                    near = sorted({*near, *topic_links(ns, node, held_by, chords)})
                for neighbour in near:
                    out[node].setdefault(neighbour, set()).add(ns)
        return out

    # -- scenario --------------------------------------------------------------------------

    def publish(self, origin: str, namespace: str) -> BatchKey:
        """``origin`` commits one batch of ``namespace`` now."""
        self._seqs[(namespace, origin)] += 1
        seq = self._seqs[(namespace, origin)]
        key = BatchKey(namespace, origin, seq, seq)
        node = self.nodes[origin]
        self.published[key] = self.now
        node.delivered[key] = self.now
        self._run(node, node.relay.publish_own(key, int(self.now)))
        self._schedule_tick(node)
        return key

    def crash(self, node_id: str) -> None:
        """``node_id`` stops for good, and its neighbours hear so (as the membership
        protocol would tell them): they drop its link, their SUB its connection. The
        overlay is not repaired (the test picks a node it can lose)."""
        self.down.add(node_id)
        self._filters[node_id].clear()
        for node in self.nodes.values():
            if node_id in node.publishers:
                node.publishers = tuple(p for p in node.publishers if p != node_id)
                self._filters[node.node_id].pop(node_id, None)
                self._run(node, node.relay.neighbour_down(node_id))

    def publish_at(self, at_ms: float, origin: str, namespace: str) -> None:
        self._push(at_ms, origin, _Own(namespace))

    def run_until(self, t_ms: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_ms:
            at, _, node_id, event = heapq.heappop(heap)
            self.now = at
            node = self.nodes[node_id]
            if node_id in self.down:
                continue
            if event is None:  # a tick
                if at != node.tick_at:
                    continue  # superseded
                node.tick_at = -1.0
                self._run(node, node.relay.tick(int(at)))
            elif isinstance(event, _Own):
                self.publish(node_id, event.namespace)
            else:
                self._receive(node, event)
            self._schedule_tick(node)
        self.now = max(self.now, t_ms)

    def run_quiet(self, limit_ms: float) -> bool:
        """Run until nothing is left to happen (True) or ``limit_ms`` passes (False)."""
        self.run_until(limit_ms)
        return not self._heap

    # -- measurements ----------------------------------------------------------------------

    def completion_ms(self, key: BatchKey) -> float | None:
        """Time from ``key``'s publication until every holder of its namespace had it."""
        last = 0.0
        for holder in self.holders[key.namespace]:
            if holder in self.down:
                continue
            at = self.nodes[holder].delivered.get(key)
            if at is None:
                return None
            last = max(last, at)
        return last - self.published[key]

    def received(self, namespace: str) -> Counter[str]:
        """What the holders of ``namespace`` received, summed: bytes per kind (batches'
        own bytes aside) and, under "copies", how many batch copies."""
        total: Counter[str] = Counter()
        for holder in self.holders[namespace]:
            node = self.nodes[holder]
            total.update(node.received)
            total["copies"] += node.copies
        return total

    def relay_stats(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for node in self.nodes.values():
            total.update(node.relay.stats)
        return total

    # -- internals -------------------------------------------------------------------------

    def _receive(self, node: RelayNode, event: _Subscription | _Publication | _Direct) -> None:
        relay, now = node.relay, int(self.now)
        if isinstance(event, _Subscription):
            flt = self._filters[node.node_id].setdefault(event.subscriber, _Filter())
            for topic in event.topics:
                node.received["subscribe"] += len(topic) + 1 + FRAME
                if not flt.change(topic, event.delta):
                    self.stats["unsubscribed_unknown"] += 1
        elif isinstance(event, _Publication):
            self._publication(node, event, now)
        else:
            sender, msg = event.sender, event.msg
            if isinstance(msg, _FetchAnswer):
                node.received["fetched"] += REPLY_OVERHEAD + FRAME
                node.copies += 1
                self._run(node, relay.on_fetched(sender, msg.key, now))
                return
            node.received["control"] += len(encode_message(msg)) + FRAME
            if isinstance(msg, Prune):
                self._run(node, relay.on_prune(sender, msg))
            elif isinstance(msg, Graft):
                self._run(node, relay.on_graft(sender, msg))
            else:
                for seq in range(msg.first, msg.last + 1):
                    key = BatchKey(msg.namespace, msg.origin, seq, seq)
                    if key in node.delivered:
                        self._send(node.node_id, sender, "direct", _FetchAnswer(key))

    def _publication(self, node: RelayNode, event: _Publication, now: int) -> None:
        topic = parse_topic(event.topic)
        if topic.publisher != event.publisher:  # what the connection's key vouches for
            self.stats["topic_names_another"] += 1
            return
        node.heard[topic.namespace] += 1
        body = event.body
        if isinstance(body, BatchKey):
            node.received["data"] += len(event.topic) + 2 * FRAME
            node.copies += 1
            self._run(node, node.relay.on_batch(topic, body, now))
        else:
            node.received["have"] += len(event.topic) + len(encode_message(body)) + 2 * FRAME
            self._run(node, node.relay.on_have(topic, body, now))

    def _run(self, node: RelayNode, commands: list[Command]) -> None:
        me = node.node_id
        for cmd in commands:
            if isinstance(cmd, Deliver):
                node.delivered.setdefault(cmd.key, self.now)
            elif isinstance(cmd, PublishBatch):
                self._publish(me, cmd.topic, cmd.key)
            elif isinstance(cmd, PublishHave):
                self._publish(me, cmd.topic, cmd.have)
            elif isinstance(cmd, (Subscribe, Unsubscribe)):
                delta = 1 if isinstance(cmd, Subscribe) else -1
                for publisher in node.publishers:  # one SUB socket: it tells every PUB
                    at = self._arrival(me, publisher, "sub")
                    self._push(at, publisher, _Subscription(me, cmd.topics, delta))
            elif isinstance(cmd, SendTo):
                self._send(me, cmd.neighbour, "direct", cmd.msg)
            elif isinstance(cmd, Fetch):
                req = RepairRequest(0, cmd.namespace, cmd.origin, cmd.first, cmd.last)
                self._send(me, cmd.neighbour, "direct", req)

    def _publish(self, me: str, topic: bytes, obj: BatchKey | Have) -> None:
        for subscriber, flt in self._filters[me].items():
            if flt.matches(topic):
                if self.loss and self.rng.random() < self.loss:
                    self.stats["lost"] += 1
                    continue
                at = self._arrival(me, subscriber, "pub")
                self._push(at, subscriber, _Publication(me, topic, obj))

    def _send(
        self, me: str, to: str, channel: str, msg: Prune | Graft | RepairRequest | _FetchAnswer
    ) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.stats["lost"] += 1
            return
        self._push(self._arrival(me, to, channel), to, _Direct(me, msg))

    def _arrival(self, src: str, dst: str, channel: str) -> float:
        """When a frame sent now arrives, keeping each channel's order (TCP)."""
        low, high = self.delay_ms
        at = self.now + self.rng.uniform(low, high)
        chan = (src, dst, channel)
        at = max(at, self._fifo.get(chan, 0.0) + 1e-6)
        self._fifo[chan] = at
        return at

    def _schedule_tick(self, node: RelayNode) -> None:
        deadline = node.relay.next_deadline()
        if deadline is None:
            return
        at = max(float(deadline), self.now)
        if node.tick_at < 0 or at < node.tick_at:
            node.tick_at = at
            self._push(at, node.node_id, None)

    def _push(self, at: float, node_id: str, event: _Event) -> None:
        self._order += 1
        heapq.heappush(self._heap, (at, self._order, node_id, event))
