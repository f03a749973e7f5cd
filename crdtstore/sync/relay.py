"""Deltas relayed over the overlay: Plumtree on ZeroMQ PUB/SUB, sans-I/O.

Rule 1: this machine decides what a node subscribes to, republishes, announces and
fetches for relaying, and nothing else: batches it hands on (:class:`Deliver`) are
checked and applied by the sync engine as before. Rule 2: no I/O, no clock, no
randomness: events come in with ``now_ms``, commands (dataclasses) come out.

Theory of operation
-------------------
A node hears published batches from its neighbours only (overlay neighbours, plus for a
namespace not every member holds the links that join its holders: the replicator's topic
links in the product, the ring of :func:`~crdtstore.sync.relay_topics.topic_links` in
``relaysim``), and republishes on its own PUB every batch it learns the first time, its
own included. Which neighbours are links, and in which form, is decided by the engine's
side (:mod:`~crdtstore.sync.relaying`). Each (namespace, origin, first..last)
is relayed once: :class:`~crdtstore.sync.seen.SeenRuns` remembers what was seen per
(namespace, origin) in bounded memory.

Plumtree (Leitao, Pereira, Rodrigues, SRDS 2007) keeps this from flooding: a link to a
neighbour ``X`` is *eager* for a namespace (subscribed to ``X``'s data topic, less the
batches ``X`` got from this node: see :mod:`~crdtstore.sync.relay_topics`) or *lazy* (not
subscribed to it). Every link, eager or lazy, hears ``X``'s "have" notices: the runs
``X`` learned, gathered over ``have_interval_ms``. New links start eager.

Pruning. A batch that arrives twice came over two paths from its origin, which together
hold a cycle of eager links. Plumtree makes the link of the second copy lazy. Here a
link is made lazy (unsubscribe, and a :class:`~crdtstore.sync.messages.Prune` so that
``X`` unsubscribes from this node's side too) only if it is the *heaviest* link of both
paths, by a weight both ends compute (:func:`~crdtstore.sync.relay_topics.edge_weight`;
each data topic carries the heaviest weight of its batch's path so far). With many
origins publishing at once, Plumtree's rule prunes two links of one cycle at once and
cuts the tree: in the simulation at 200 nodes and 100 batches/s it never settled,
fetching and grafting without end. The heaviest link of a cycle belongs to no minimum
spanning tree of the overlay, so pruning by this rule, however many at once, never
removes a link of that tree: the eager links stay connected, and settle into it (each
node then receives each batch once). Batches that came off a repair (below) carry no
path, and their duplicates prune nothing.

Repair and grafting. A have notice for a batch still missing after ``graft_timeout_ms``
is fetched from a neighbour that announced it (the engine's repair request, which its
log answers), a tree neighbour first, then the next announcer, ``fetch_attempts`` times
in all. If no tree neighbour announced it, the loss was further up the tree and the node
below it will fetch and relay it: the fetch waits one more ``graft_timeout_ms`` (else a
loss high in the tree made its whole subtree fetch). A fetched batch is relayed on,
marked as repaired. The link is made eager again (a graft, and a
:class:`~crdtstore.sync.messages.Graft` so the other side subscribes too) only when the
tree has a hole here: no eager link left, or over half of the namespace's last
``graft_sample`` batches fetched (a neighbour left and took the tree's only path), at
most once per ``graft_window_ms``. Plumtree grafts on every miss; PUB/SUB drops a frame
now and then (1% in the simulation), and grafting on each churned the tree.

The timeout adapts to the tree's own pace. A batch that comes by the tree after a have
notice announced it was late by that much (so was one whose tree copy follows its
fetch), one in time by nothing; the node keeps a moving average of it (an eighth of
each sample) and waits at least twice it (at most ``max_graft_timeout_ms``). An average,
not the largest: at 1,000 simulated nodes with 5% of them slowed, keeping the largest
held every timeout near its ceiling and put write p99 at 2.9 s (goal 1 s); the average
with a ceiling of 1 s, 1.1 s; with 500 ms, 0.94 s. Between real
processes a fixed ``graft_timeout_ms`` was too short now and then under load (1,000-update
batches, fsyncs, two cores for three nodes): the fetch was needless, its repaired copy
met the tree's as a duplicate that prunes nothing, and a run of them grafted links that
had to be pruned again (in a 3-node cluster, 60 duplicates in 100 batches).

Eager links hear have notices too, which Plumtree's lazy push does not: PUB/SUB loses
frames on eager links as well (high-water marks, reconnects), and a node whose links are
all tree links would otherwise learn of a lost batch only from the engine's digests.

Trust rule (replacing "a published batch must come from its origin"): a published batch
or have notice is taken only from a current neighbour for that namespace, and only on a
topic naming that neighbour as publisher, where the caller has checked that the
connection it came on is that neighbour's (with keys configured, the PUB's CURVE server
key is the one in the neighbour's member record, and the ZAP allow-list admits only
members). The batch is then checked as strictly as ever by the engine (decoding limits,
namespace held, never this node's own origin, clock drift, causal delivery). This is not
weaker than the old rule with keys configured: a member could already hand any origin's
batches to anyone through a repair reply (logs relay other origins' batches), so the
boundary always was "members, not strangers", and it still is: a stranger has no key a
node subscribes to, and a topic naming another publisher than the connection's is
refused. Without keys, neither rule is authentication.

Scoping: a node subscribes only to the namespaces it holds and never relays others; it
receives no bytes of namespaces it does not hold (see ``relay_topics`` for how their
holders stay connected).

Why one module of ~520 lines: :class:`Relay` is one state machine (eager and lazy links,
announcements, missing batches and their fetch timers) whose transitions read and change
the same few tables together; the commands it emits are small frozen classes above it.
Its sub-protocol's other halves are apart: topics (:mod:`.relay_topics`), the engine's
links (:mod:`.relaying`), what the engine receives (:mod:`.relay_inbox`).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from crdtstore.sync.messages import MAX_HAVE_RUNS, Graft, Have, Prune
from crdtstore.sync.outgoing import Subscribe as Subscribe
from crdtstore.sync.outgoing import Unsubscribe as Unsubscribe
from crdtstore.sync.relay_topics import (
    DATA,
    HAVE,
    OWN,
    Topic,
    data_subscriptions,
    data_topic,
    edge_weight,
    have_topic,
    hop_mark,
)
from crdtstore.sync.seen import SeenRuns


@dataclass(frozen=True, slots=True)
class RelaySettings:
    have_interval_ms: int = 25
    """Have notices learned within this long leave together, one frame per namespace."""
    graft_timeout_ms: int = 150
    """How long a batch a neighbour announced may stay missing before it is fetched
    (and between fetches from successive announcers), at least. Longer than a tree path
    usually takes: a fetch the tree would have made unneeded costs a duplicate. Twice the
    tree's recent lateness, if longer (see the module's note)."""
    max_graft_timeout_ms: int = 500
    """The adapted timeout's ceiling: a batch truly lost is fetched within about twice
    this, sooner than anti-entropy's digests would bring it."""
    graft_sample: int = 16
    """A link is grafted when over half of a namespace's last this-many batches had to
    be fetched (and at least a quarter of them were seen): the tree has a hole."""
    """Batches of a namespace fetched in a row (none brought by the tree in between)
    that make the announcer's link eager again: the tree has a hole, not a stray loss."""
    graft_window_ms: int = 2_000
    """At most one graft per namespace this often (unless no eager link is left): the
    nodes along a hole all see it, and each grafting makes cycles to prune again."""
    fetch_attempts: int = 4
    """Fetches of one missing batch, from its announcers in turn, before it is left to
    anti-entropy (a fetch or its answer can be lost too)."""
    max_seen_runs: int = 32
    """Out-of-order runs remembered per (namespace, origin) (see :mod:`.seen`)."""
    max_missing: int = 4_096
    """Announced and missing runs tracked at once; more are left to anti-entropy."""
    max_paths_remembered: int = 4_096
    """Batches whose path is remembered, for their duplicates to be judged by; an
    older batch's duplicate prunes nothing."""


@dataclass(frozen=True, slots=True)
class BatchKey:
    namespace: str
    origin: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand this batch (as received from ``neighbour``) to the sync engine."""

    neighbour: str
    key: BatchKey


@dataclass(frozen=True, slots=True)
class PublishBatch:
    topic: bytes
    key: BatchKey


@dataclass(frozen=True, slots=True)
class PublishHave:
    topic: bytes
    have: Have


@dataclass(frozen=True, slots=True)
class SendTo:
    neighbour: str
    msg: Prune | Graft


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask ``neighbour`` for its logged batches of ``origin`` in ``first..last`` (the
    engine's ``RepairRequest``); give what comes back to :meth:`Relay.on_fetched`."""

    neighbour: str
    namespace: str
    origin: str
    first: int
    last: int


Command = Deliver | PublishBatch | PublishHave | Subscribe | Unsubscribe | SendTo | Fetch


@dataclass(slots=True)
class _Missing:
    deadline: int
    since: int
    """When it was first announced."""
    announcers: list[str] = field(default_factory=list)
    tried: int = 0
    fetched: bool = False
    waited: bool = False


class Relay:
    def __init__(self, node_id: str, topics: frozenset[str], settings: RelaySettings) -> None:
        """``topics``: the namespaces relayed from the start; :meth:`hold` adds more."""
        self.node_id = node_id
        self.topics: set[str] = set(topics)
        self.settings = settings
        self.stats: Counter[str] = Counter()
        self._mark = hop_mark(node_id)
        self._links: dict[str, dict[str, bool]] = {ns: {} for ns in sorted(topics)}
        """Per namespace, each linked neighbour and whether its link is eager."""
        self._seen: dict[tuple[str, str], SeenRuns] = {}
        self._missing: dict[BatchKey, _Missing] = {}
        self._recent: dict[str, deque[bool]] = {}
        """Per namespace, how its last batches came: fetched (True) or by the tree."""
        """Per namespace, batches fetched since the tree last brought one."""
        self._grafted: dict[str, int] = {}
        """When this node last grafted a link of each namespace."""
        """When each (namespace, lazy neighbour) last supplied a missing batch."""
        self._paths: dict[BatchKey, tuple[int, str]] = {}
        """Per batch that came by the tree, oldest first: the heaviest link on its path
        and the neighbour it came from (what a duplicate is compared with)."""
        self._haves: dict[str, dict[str, list[list[int]]]] = {}
        self._have_due: int | None = None
        self._lag_ms = 0
        """The tree's lateness behind the have notices: a moving average, a batch in
        time counting as 0 (one late batch in a stream moves it an eighth of the way)."""
        self._now = 0
        """The latest time an event carried: when a link comes up (which carries none)."""
        self._linked_at: dict[str, int] = {}
        """Per namespace, when its newest link came up: a batch announced before that
        link's subscription took effect was missed by the link's youth, not the tree's
        pace, and its lateness is not taken for the tree's."""
        self._fetched: dict[BatchKey, int] = {}
        """Batches fetched lately -> when first announced: the tree's copy that follows
        tells how late the tree was (the fetch was needless)."""

    # -- queries ---------------------------------------------------------------------------

    def eager(self, namespace: str) -> list[str]:
        return [n for n, e in self._links.get(namespace, {}).items() if e]

    def lazy(self, namespace: str) -> list[str]:
        return [n for n, e in self._links.get(namespace, {}).items() if not e]

    def seen(self, key: BatchKey) -> bool:
        runs = self._seen.get((key.namespace, key.origin))
        return runs is not None and runs.covers(key.first, key.last)

    def due(self, now_ms: int) -> list[BatchKey]:
        """The missing batches whose fetch :meth:`tick` at ``now_ms`` would consider."""
        return [key for key, m in self._missing.items() if now_ms >= m.deadline]

    def next_deadline(self) -> int | None:
        times = [m.deadline for m in self._missing.values()]
        if self._have_due is not None:
            times.append(self._have_due)
        return min(times) if times else None

    # -- links -----------------------------------------------------------------------------

    def neighbour_up(self, neighbour: str, namespaces: frozenset[str]) -> list[Command]:
        """``neighbour`` carries ``namespaces`` (those both hold) from now on: eager."""
        out: list[Command] = []
        for ns in sorted(namespaces & self.topics):
            links = self._links[ns]
            if neighbour in links or neighbour == self.node_id:
                continue
            links[neighbour] = True
            self._linked_at[ns] = self._now
            topics = (have_topic(neighbour, ns), *data_subscriptions(neighbour, ns, self.node_id))
            out.append(Subscribe(neighbour, topics))
        return out

    def hold(self, namespace: str, neighbours: list[str]) -> list[Command]:
        """Relay ``namespace`` from now on (a node holding every namespace met a new
        one), linked eagerly to ``neighbours`` (those that hold it too)."""
        if namespace in self.topics:
            return []
        self.topics.add(namespace)
        self._links[namespace] = {}
        out: list[Command] = []
        for neighbour in neighbours:
            out += self.neighbour_up(neighbour, frozenset({namespace}))
        return out

    def neighbour_down(self, neighbour: str) -> list[Command]:
        out: list[Command] = []
        for ns, links in self._links.items():
            eager = links.pop(neighbour, None)
            if eager is None:
                continue
            topics: tuple[bytes, ...] = (have_topic(neighbour, ns),)
            if eager:
                topics += data_subscriptions(neighbour, ns, self.node_id)
            out.append(Unsubscribe(neighbour, topics))
        return out

    # -- batches ---------------------------------------------------------------------------

    def publish_own(self, key: BatchKey, now_ms: int) -> list[Command]:
        """This node committed ``key``: publish it (and announce it)."""
        self._mark_seen(key)
        self._announce(key, now_ms)
        return [PublishBatch(data_topic(self.node_id, key.namespace, OWN), key)]

    def on_batch(self, topic: Topic, key: BatchKey, now_ms: int) -> list[Command]:
        """A batch published by ``topic.publisher`` (the caller checked that the frame
        came on that neighbour's connection)."""
        self._now = max(self._now, now_ms)
        neighbour, ns = topic.publisher, key.namespace
        eager = self._check(topic, ns, DATA)
        if eager is None:
            return []
        if topic.hop == self._mark:
            self.stats["relay_echoes"] += 1  # only with a hop-mark collision or a stale filter
            return []
        if self.seen(key):
            self.stats["relay_duplicates"] += 1
            since = self._fetched.pop(key, None)
            if since is not None and not topic.repaired:
                self._late(ns, since, now_ms)
            first = self._paths.get(key)
            if topic.repaired or first is None:
                self.stats["relay_duplicates_of_repairs"] += 1
                return []
            return self._prune_heaviest(ns, first, (self._path(topic), neighbour))
        if eager:
            self._arrivals(ns).append(False)
        missing = self._missing.pop(key, None)
        if missing is not None:
            self._late(ns, missing.since, now_ms)
        else:
            self._lag_ms -= self._lag_ms // 8  # in time: a lateness of 0
        if topic.repaired:
            return self._learn(neighbour, key, now_ms, None)
        return self._learn(neighbour, key, now_ms, self._path(topic))

    def on_fetched(self, neighbour: str, key: BatchKey, now_ms: int) -> list[Command]:
        """A batch a :class:`Fetch` brought (over the request's connection)."""
        if key.namespace not in self.topics:
            self.stats["relay_rejected_not_held"] += 1
            return []
        if self.seen(key):
            self.stats["relay_fetched_duplicates"] += 1
            return []
        return self._learn(neighbour, key, now_ms, None)

    def learned(self, key: BatchKey) -> None:
        """The engine applied ``key`` by another path (anti-entropy), or, at start, holds
        it (``first`` 1, ``last`` the version vector's entry): do not fetch it."""
        if key.namespace in self.topics:
            self._mark_seen(key)

    def on_have(self, topic: Topic, have: Have, now_ms: int) -> list[Command]:
        self._now = max(self._now, now_ms)
        if self._check(topic, have.namespace, HAVE) is None:
            return []
        ns = have.namespace
        for origin, first, last in have.runs:
            if origin == self.node_id:
                continue
            key = BatchKey(ns, origin, first, last)
            if self.seen(key):
                continue
            missing = self._missing.get(key)
            if missing is None:
                if len(self._missing) >= self.settings.max_missing:
                    self.stats["relay_missing_overflow"] += 1
                    continue
                missing = _Missing(now_ms + self._timeout(), now_ms)
                self._missing[key] = missing
            if topic.publisher not in missing.announcers:
                missing.announcers.append(topic.publisher)
        return []

    def on_prune(self, neighbour: str, msg: Prune) -> list[Command]:
        links = self._links.get(msg.namespace, {})
        if not links.get(neighbour, False):
            return []
        links[neighbour] = False
        self.stats["relay_prunes_received"] += 1
        return [Unsubscribe(neighbour, data_subscriptions(neighbour, msg.namespace, self.node_id))]

    def on_graft(self, neighbour: str, msg: Graft) -> list[Command]:
        links = self._links.get(msg.namespace, {})
        if neighbour not in links or links[neighbour]:
            return []
        links[neighbour] = True
        self.stats["relay_grafts_received"] += 1
        return [Subscribe(neighbour, data_subscriptions(neighbour, msg.namespace, self.node_id))]

    # -- time ------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Command]:
        self._now = max(self._now, now_ms)
        out: list[Command] = []
        if self._have_due is not None and now_ms >= self._have_due:
            out += self._flush_haves()
        for key, missing in list(self._missing.items()):
            if self.seen(key):
                del self._missing[key]
            elif now_ms >= missing.deadline:
                out += self._fetch(key, missing, now_ms)
        return out

    # -- internals -------------------------------------------------------------------------

    def _check(self, topic: Topic, ns: str, kind: bytes) -> bool | None:
        """Whether the link ``topic`` came over is eager; None (counted) if the frame is
        not to be taken: see the trust rule in the module's note."""
        if topic.kind != kind or topic.namespace != ns:
            self.stats["relay_rejected_topic"] += 1
            return None
        links = self._links.get(ns)
        if links is None:
            self.stats["relay_rejected_not_held"] += 1
            return None
        eager = links.get(topic.publisher)
        if eager is None:
            self.stats["relay_rejected_not_neighbour"] += 1
        return eager

    def _late(self, ns: str, since: int, now_ms: int) -> None:
        """A batch announced at ``since`` came by the tree at ``now_ms``."""
        if since >= self._linked_at.get(ns, 0) + self.settings.graft_timeout_ms:
            self._lag_ms += (now_ms - since - self._lag_ms) // 8

    def _timeout(self) -> int:
        """How long an announced batch may stay missing (see the module's note)."""
        cfg = self.settings
        return max(cfg.graft_timeout_ms, min(cfg.max_graft_timeout_ms, 2 * self._lag_ms))

    def graft_timeout_ms(self) -> int:
        """The timeout as adapted now (for status)."""
        return self._timeout()

    def _arrivals(self, ns: str) -> deque[bool]:
        recent = self._recent.get(ns)
        if recent is None:
            recent = self._recent[ns] = deque(maxlen=self.settings.graft_sample)
        return recent

    def _hole(self, ns: str, now_ms: int) -> bool:
        """Whether the tree has a hole here: no eager link left, or most recent batches
        of ``ns`` fetched (and no graft within ``graft_window_ms``)."""
        if not self.eager(ns):
            return True
        window = self.settings.graft_window_ms
        if now_ms - self._grafted.get(ns, -window) <= window:
            return False
        recent = self._arrivals(ns)
        return len(recent) * 4 >= self.settings.graft_sample and sum(recent) * 2 > len(recent)

    def _path(self, topic: Topic) -> int:
        """The heaviest link on the path ``topic``'s batch took to this node."""
        return max(topic.path_max, edge_weight(topic.publisher, self.node_id))

    def _prune_heaviest(
        self, ns: str, first: tuple[int, str], second: tuple[int, str]
    ) -> list[Command]:
        """A batch came twice, over two paths from its origin (heaviest link and last
        neighbour of each): together they hold a cycle. Prune the link to the neighbour
        that brought one copy if that link is the heaviest of both paths (then it is
        the heaviest on that cycle); otherwise leave it to the node at the heaviest
        link, which sees a duplicate there sooner or later.

        Why not Plumtree's "prune whoever sent the duplicate": batches of two origins
        crossing a cycle make two nodes prune two of its links at once, which cuts the
        tree; nodes then fetch and graft, and the tree never settles (in the simulation
        at 200 nodes and 100 batches/s it did not). A link that is the heaviest on some
        cycle is in no minimum spanning tree of the overlay (weights are distinct), so
        links pruned by this rule, however many at once, never take an edge of that
        tree away: the eager links stay connected and settle into that tree."""
        links = self._links.get(ns, {})
        for (weight, neighbour), (other, _) in ((second, first), (first, second)):
            if weight > other and weight == edge_weight(neighbour, self.node_id):
                if not links.get(neighbour, False):
                    return []
                links[neighbour] = False
                self.stats["relay_prunes_sent"] += 1
                return [
                    Unsubscribe(neighbour, data_subscriptions(neighbour, ns, self.node_id)),
                    SendTo(neighbour, Prune(ns)),
                ]
        return []

    def _learn(self, neighbour: str, key: BatchKey, now_ms: int, path: int | None) -> list[Command]:
        """``path``: the heaviest link on the path the batch came by; None if it came
        off a repair (by a fetch, or relayed from one)."""
        self._mark_seen(key)
        self._announce(key, now_ms)
        self.stats["relay_batches_relayed"] += 1
        if path is not None:
            self._paths[key] = (path, neighbour)
            if len(self._paths) > self.settings.max_paths_remembered:
                del self._paths[next(iter(self._paths))]
        hop = hop_mark(neighbour)
        topic = data_topic(self.node_id, key.namespace, hop, path or 0, path is None)
        return [Deliver(neighbour, key), PublishBatch(topic, key)]

    def _mark_seen(self, key: BatchKey) -> None:
        runs = self._seen.get((key.namespace, key.origin))
        if runs is None:
            runs = self._seen[(key.namespace, key.origin)] = SeenRuns(self.settings.max_seen_runs)
        runs.add(key.first, key.last)

    def _announce(self, key: BatchKey, now_ms: int) -> None:
        runs = self._haves.setdefault(key.namespace, {}).setdefault(key.origin, [])
        if runs and runs[-1][1] + 1 == key.first:
            runs[-1][1] = key.last  # a stream of one origin's batches: one run
        else:
            runs.append([key.first, key.last])
        if self._have_due is None:
            self._have_due = now_ms + self.settings.have_interval_ms

    def _flush_haves(self) -> list[Command]:
        out: list[Command] = []
        for ns, by_origin in self._haves.items():
            runs = [(origin, a, b) for origin, rs in by_origin.items() for a, b in rs]
            for i in range(0, len(runs), MAX_HAVE_RUNS):
                chunk = tuple(runs[i : i + MAX_HAVE_RUNS])
                out.append(PublishHave(have_topic(self.node_id, ns), Have(ns, chunk)))
        self._haves.clear()
        self._have_due = None
        return out

    def _fetch(self, key: BatchKey, missing: _Missing, now_ms: int) -> list[Command]:
        ns = key.namespace
        links = self._links.get(ns, {})
        timeout = self._timeout()
        if not missing.waited and self.eager(ns):
            missing.waited = True
            if not any(links.get(n, False) for n in missing.announcers):
                # No tree neighbour has it either: the loss was further up, and the tree
                # neighbour below it fetches and relays it to us. Give it that time.
                missing.deadline = now_ms + timeout
                return []
            # A tree neighbour has it: our copy was lost on the way; ask that one first.
            missing.announcers.sort(key=lambda n: not links.get(n, False))
        missing.announcers = [n for n in missing.announcers if n in links]  # not gone
        if missing.announcers and missing.tried < self.settings.fetch_attempts:
            neighbour = missing.announcers[missing.tried % len(missing.announcers)]
            missing.tried += 1
            out: list[Command] = []
            if not missing.fetched:
                missing.fetched = True
                self._arrivals(ns).append(True)
            if not links[neighbour] and self._hole(ns, now_ms):
                links[neighbour] = True
                self._grafted[ns] = now_ms
                self._arrivals(ns).clear()
                self.stats["relay_grafts_sent"] += 1
                out.append(Subscribe(neighbour, data_subscriptions(neighbour, ns, self.node_id)))
                out.append(SendTo(neighbour, Graft(ns)))
            self._fetched[key] = missing.since
            if len(self._fetched) > self.settings.max_paths_remembered:
                del self._fetched[next(iter(self._fetched))]
            runs = self._seen.get((ns, key.origin))
            unseen = runs.unseen(key.first, key.last) if runs else [(key.first, key.last)]
            for first, last in unseen:
                out.append(Fetch(neighbour, ns, key.origin, first, last))
                self.stats["relay_fetches"] += 1
            missing.deadline = now_ms + timeout
            return out
        del self._missing[key]
        self.stats["relay_gave_up"] += 1  # anti-entropy's turn
        return []
