"""The sync engine's side of relayed deltas: links, topics, fetches, older neighbours.

:class:`~crdtstore.sync.relay.Relay` decides, per namespace and neighbour, what to
subscribe to, relay, announce and fetch. This part turns its commands into the engine's
outgoing frames and keeps what the engine needs besides: which neighbours are linked and
in which form, which namespaces both ends hold, and which repair requests were the
relay's fetches (their batches are relayed on; a digest's repairs are not).

Invariants:

- A link has one form, chosen by the protocol version agreed with the neighbour: the
  tree form (version 4, :mod:`~crdtstore.sync.relay_topics`'s publisher-named topics,
  subscribed per link) or the flood form (version 3, tag ``v0.2.0``: every new batch
  republished on the namespace's own topic, and that topic subscribed on the
  neighbour's link). The forms never mix on one link, so a cluster upgrades one node at
  a time: while any flood link is up, every batch this node learns the first time, its
  own included, is also published on the namespace's topic (a PUB sends a topic nobody
  subscribed to nowhere, so that copy costs nothing once the last old neighbour is gone,
  and it is not made then).
- A link not vouched for (a joiner whose member record has not arrived: nothing says
  its connection is a member's) carries its own batches only, as the full mesh holds
  every publisher: subscribed to its own data topic (hop ``-``) or, in the flood form,
  to the namespace's topic, and a batch of another origin from it is refused. This is
  how a joiner's record and first writes spread before its record vouches for it.
- A batch that came from a flood link enters the tree as a repaired one (its path is
  not known): :meth:`Relay.on_fetched`. A joiner's own batch from its own-only link is
  taken and not relayed (see ``_own_of_unvouched``).
- What this node relays, it accepted first (the engine's checks passed: applied, held
  for a dependency, or already applied by another path); a batch it refused is not
  passed on, though the relay counts it seen (its announcers are not asked again).
- Nothing here reads a clock, does I/O or draws randomness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from crdtstore.sync.messages import DeltaBatch, Graft, Have, Prune, RepairRequest, encode_message
from crdtstore.sync.outgoing import Outgoing, PublishTopic, Send, Subscribe, Unsubscribe
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
)
from crdtstore.sync.relay_topics import (
    OWN,
    Topic,
    data_prefix,
    data_topic,
    have_prefix,
)

TREE = 4
"""The protocol version from which a link relays along the tree (the topics of
:mod:`~crdtstore.sync.relay_topics`)."""

MAX_FETCHES = 4_096
"""Fetches awaiting an answer, remembered at once; an older one's answer is then taken
as a digest repair's (applied, not relayed on)."""

Accept = Callable[[DeltaBatch, bytes], bool]
"""The engine's checks and delivery of one batch: whether it was taken (applied, held,
or already applied), False if refused."""


@dataclass(slots=True)
class _Link:
    tree: bool
    holds: frozenset[str] | None
    """The namespaces the neighbour holds (None: every one)."""
    vouched: bool
    """Its member record vouches for the connection: it relays every origin's batches."""
    subscribed: tuple[bytes, ...] = ()
    """What this part subscribed to on it besides the relay's own (the flood and
    own-only forms, the have prefix)."""


def _both(ns: str, holds: frozenset[str] | None) -> bool:
    return holds is None or ns in holds


def flat_topic(namespace: str) -> bytes:
    """The namespace's own topic (version 3 and the full mesh publish batches on it)."""
    return namespace.encode() + b"\0"


class RelayLinks:
    """Relayed deltas for one engine (see the module's note)."""

    def __init__(
        self,
        node_id: str,
        holds: Callable[[str], bool],
        every_namespace: bool,
        namespaces: Iterable[str],
        ids: Iterator[int],
        stats: Counter[str],
        settings: RelaySettings | None = None,
    ) -> None:
        """``holds``: the engine's rule; ``every_namespace``: this node holds every
        namespace (new ones are met at run time); ``namespaces``: those held now."""
        self.node_id = node_id
        self._holds = holds
        self._every = every_namespace
        self.relay = Relay(
            node_id, frozenset(n for n in namespaces if holds(n)), settings or RelaySettings()
        )
        self.relay.stats = stats  # one set of counters for the engine's status
        self._ids = ids
        self._stats = stats
        self._links: dict[str, _Link] = {}
        self._fetches: dict[int, str] = {}
        """Request id of each fetch not answered yet -> the neighbour asked."""
        self._flood_links = 0

    # -- links -----------------------------------------------------------------------------

    def link(
        self, peer: str, version: int, holds: frozenset[str] | None, vouched: bool = True
    ) -> list[Outgoing]:
        """``peer`` is a neighbour, speaking ``version`` with this node and holding
        ``holds``; ``vouched``: its member record vouches for the connection (else it
        carries its own batches only). Called again when any of it changes: what a form
        newly needs is subscribed before what it no longer needs is dropped, so nothing
        the link carries in both forms is missed in between."""
        tree = version >= TREE
        known = self._links.get(peer)
        if known is not None and (known.tree, known.holds, known.vouched) == (
            tree,
            holds,
            vouched,
        ):
            return []
        link = _Link(tree, holds, vouched)
        shared = sorted(ns for ns in self.relay.topics if _both(ns, holds))
        if not tree:
            link.subscribed = (b"",) if self._every else tuple(flat_topic(ns) for ns in shared)
        elif not vouched:
            # Its own data topics of the namespaces both hold; holding every namespace,
            # its have notices too, which name the namespaces new here (see on_have).
            # Not all it publishes: its relays, this node's own batches among them,
            # would come back only to be refused.
            link.subscribed = tuple(data_prefix(peer, ns) + OWN.encode() for ns in shared)
            if self._every:
                link.subscribed += (have_prefix(peer),)
        elif self._every:
            link.subscribed = (have_prefix(peer),)
        out: list[Outgoing] = []
        old = known.subscribed if known is not None else ()
        added = tuple(t for t in link.subscribed if t not in old)
        dropped = tuple(t for t in old if t not in link.subscribed)
        was_relayed = known is not None and known.tree and known.vouched
        if known is not None and was_relayed and (not (tree and vouched) or holds != known.holds):
            out += self._convert(self.relay.neighbour_down(peer), None)
            was_relayed = False
        if known is not None and not known.tree:
            self._flood_links -= known.vouched
        if not tree:
            self._flood_links += vouched
        self._links[peer] = link
        if added:
            out.append(Subscribe(peer, added))
        if tree and vouched and not was_relayed:
            up = self._convert(self.relay.neighbour_up(peer, frozenset(shared)), None)
            out += up
            # The transport holds a prefix once per link, not counted: one the relay
            # subscribed to just now is the relay's, and stays.
            kept = {t for o in up if isinstance(o, Subscribe) for t in o.topics}
            dropped = tuple(t for t in dropped if t not in kept)
        if dropped:
            out.append(Unsubscribe(peer, dropped))
        return out

    def unlink(self, peer: str) -> list[Outgoing]:
        link = self._links.pop(peer, None)
        if link is None:
            return []
        for rid in [r for r, p in self._fetches.items() if p == peer]:
            del self._fetches[rid]
        out: list[Outgoing] = []
        if not link.tree:
            self._flood_links -= link.vouched
        if link.subscribed:
            out.append(Unsubscribe(peer, link.subscribed))
        if link.tree and link.vouched:
            out += self._convert(self.relay.neighbour_down(peer), None)
        return out

    def linked(self) -> dict[str, str]:
        """Neighbour -> its link's form (for status)."""
        return {
            p: ("tree" if link.tree else "flood") + ("" if link.vouched else ", own batches only")
            for p, link in sorted(self._links.items())
        }

    def meet(self, namespace: str) -> list[Outgoing]:
        """A namespace this node holds may be new to the relay (a node holding every
        namespace writes or learns one): link it to the neighbours that hold it."""
        if namespace in self.relay.topics or not self._holds(namespace):
            return []
        out: list[Outgoing] = []
        tree = []
        for peer, link in sorted(self._links.items()):
            if not _both(namespace, link.holds):
                continue
            if link.tree and link.vouched:
                tree.append(peer)
            elif link.tree:  # own batches only: of this one too
                topic = data_prefix(peer, namespace) + OWN.encode()
                link.subscribed += (topic,)
                out.append(Subscribe(peer, (topic,)))
        return out + self._convert(self.relay.hold(namespace, tree), None)

    # -- batches ---------------------------------------------------------------------------

    def own(
        self, namespace: str, first: int, last: int, data: bytes, now_ms: int
    ) -> list[Outgoing]:
        """Publish this node's batches ``first..last`` (``data`` one frame of them)."""
        out = self.meet(namespace)
        key = BatchKey(namespace, self.node_id, first, last)
        if not self.relay.seen(key):
            self.relay.publish_own(key, now_ms)
        out.append(PublishTopic(data_topic(self.node_id, namespace, OWN), data))
        if self._flood_links:
            out.append(PublishTopic(flat_topic(namespace), data))
        return out

    def on_tree_batch(
        self, topic: Topic, batch: DeltaBatch, data: bytes, now_ms: int, accept: Accept
    ) -> list[Outgoing]:
        """A batch published on a tree link's data topic (the caller checked that the
        frame came on the connection of ``topic.publisher``)."""
        if batch.namespace != topic.namespace:
            self._stats["relay_rejected_topic"] += 1
            return []
        if batch.origin == self.node_id:
            self._stats["own_batches_relayed_back"] += 1  # only with a hop-mark collision
            return []
        link = self._links.get(topic.publisher)
        if link is None or not link.tree:
            self._stats["relay_rejected_not_neighbour"] += 1
            return []
        if not link.vouched:
            if topic.hop != OWN or batch.origin != topic.publisher:
                self._stats["relay_rejected_not_vouched"] += 1
                return []
            return self._own_of_unvouched(batch, data, accept)
        out = self.meet(batch.namespace)
        cmds = self.relay.on_batch(topic, _key(batch), now_ms)
        return out + self._convert(cmds, (batch, data, accept))

    def on_flood_batch(
        self, peer: str, batch: DeltaBatch, data: bytes, now_ms: int, accept: Accept
    ) -> list[Outgoing]:
        """A batch published on the namespace's own topic by ``peer``: taken only from
        a flood link (a version-3 neighbour relays every origin's batches on it)."""
        link = self._links.get(peer)
        if link is None or link.tree:
            self._stats["relay_rejected_not_neighbour"] += 1
            return []
        if not link.vouched and batch.origin != peer:
            self._stats["relay_rejected_not_vouched"] += 1
            return []
        return self._learn_off_tree(peer, batch, data, now_ms, accept)

    def on_have(self, topic: Topic, have: Have, now_ms: int) -> list[Outgoing]:
        if have.namespace != topic.namespace:
            self._stats["relay_rejected_topic"] += 1
            return []
        link = self._links.get(topic.publisher)
        if link is None or not link.tree:
            self._stats["relay_rejected_not_neighbour"] += 1
            return []
        if not link.vouched:
            return self._have_unvouched(topic.publisher, have)
        ns = have.namespace
        new = ns not in self.relay.topics
        out = self.meet(ns)
        out += self._convert(self.relay.on_have(topic, have, now_ms), None)
        if new and ns in self.relay.topics:
            # Published before this node subscribed: missed for certain, so fetched now
            # rather than after the relay's timeout (a burst of writes into a namespace
            # new here would otherwise wait for it batch by batch).
            for origin, first, last in have.runs:
                if origin != self.node_id:
                    out += self._convert([Fetch(topic.publisher, ns, origin, first, last)], None)
        return out

    def _have_unvouched(self, peer: str, have: Have) -> list[Outgoing]:
        """A have notice from a link that carries its own batches only (a node holding
        every namespace hears them to learn of new namespaces). A namespace it names
        that is new here is linked now; its own batches the notice lists were published
        before this node subscribed to them, so they are fetched from it at once."""
        ns = have.namespace
        if ns in self.relay.topics or not self._holds(ns):
            return []
        out = self.meet(ns)
        for origin, first, last in have.runs:
            if origin == peer:
                out += self._convert([Fetch(peer, ns, origin, first, last)], None)
        return out

    def fetched(self, request: int, peer: str) -> bool:
        """Whether a repair reply answers one of the relay's fetches (its batches are
        then given to :meth:`on_fetched`)."""
        return self._fetches.pop(request, None) == peer

    def on_fetched(
        self, peer: str, batch: DeltaBatch, data: bytes, now_ms: int, accept: Accept
    ) -> list[Outgoing]:
        return self._learn_off_tree(peer, batch, data, now_ms, accept)

    def learned(self, namespace: str, origin: str, first: int, last: int) -> None:
        """Batches applied by another path (a digest's repair, a range session): the
        relay need not fetch them."""
        if namespace in self.relay.topics:
            self.relay.learned(BatchKey(namespace, origin, first, last))

    def on_prune(self, peer: str, msg: Prune) -> list[Outgoing]:
        return self._convert(self.relay.on_prune(peer, msg), None)

    def on_graft(self, peer: str, msg: Graft) -> list[Outgoing]:
        return self._convert(self.relay.on_graft(peer, msg), None)

    # -- time ------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        return self.relay.next_deadline()

    def tick(self, now_ms: int, applied: Callable[[BatchKey], bool]) -> list[Outgoing]:
        """The relay's timers; ``applied``: whether the engine holds a batch already
        (then it is marked seen, not fetched)."""
        for key in self.relay.due(now_ms):
            if applied(key):
                self.relay.learned(key)
        return self._convert(self.relay.tick(now_ms), None)

    # -- internals -------------------------------------------------------------------------

    def _own_of_unvouched(self, batch: DeltaBatch, data: bytes, accept: Accept) -> list[Outgoing]:
        """A joiner's own batch, straight from it: taken, and not relayed. Each of its
        neighbours hears it the same way, so relaying only made duplicates (in a
        3-node cluster, a third of its batches twice at each node while it joined);
        a node further away gets it by anti-entropy until the joiner's record vouches
        for it and its batches go along the tree."""
        out = self.meet(batch.namespace)
        if accept(batch, data) and batch.namespace in self.relay.topics:
            self.relay.learned(_key(batch))
            self._stats["relay_joiner_batches_taken"] += 1
        return out

    def _learn_off_tree(
        self, peer: str, batch: DeltaBatch, data: bytes, now_ms: int, accept: Accept
    ) -> list[Outgoing]:
        out = self.meet(batch.namespace)
        cmds = self.relay.on_fetched(peer, _key(batch), now_ms)
        if not cmds:
            # Seen by the relay (a duplicate the engine counts, or one it refused before
            # and may take now), or of a namespace not held (the engine refuses it).
            accept(batch, data)
            return out
        return out + self._convert(cmds, (batch, data, accept))

    def _convert(
        self,
        cmds: list[Command],
        frame: tuple[DeltaBatch, bytes, Accept] | None,
    ) -> list[Outgoing]:
        """The relay's commands as frames; ``frame``: the batch a :class:`Deliver` and
        a :class:`PublishBatch` among them are about."""
        out: list[Outgoing] = []
        taken = False
        for cmd in cmds:
            if isinstance(cmd, Deliver):
                assert frame is not None
                taken = frame[2](frame[0], frame[1])
            elif isinstance(cmd, PublishBatch):
                if frame is None or not taken:
                    continue  # refused here: not passed on
                out.append(PublishTopic(cmd.topic, frame[1]))
                if self._flood_links:
                    out.append(PublishTopic(flat_topic(cmd.key.namespace), frame[1]))
            elif isinstance(cmd, PublishHave):
                out.append(PublishTopic(cmd.topic, encode_message(cmd.have)))
            elif isinstance(cmd, Subscribe | Unsubscribe):
                out.append(cmd)  # the relay's subscriptions are the engine's frames as they are
            elif isinstance(cmd, SendTo):
                out.append(Send(cmd.neighbour, encode_message(cmd.msg)))
            elif isinstance(cmd, Fetch):
                rid = next(self._ids)
                self._fetches[rid] = cmd.neighbour
                if len(self._fetches) > MAX_FETCHES:
                    del self._fetches[next(iter(self._fetches))]  # never answered
                req = RepairRequest(rid, cmd.namespace, cmd.origin, cmd.first, cmd.last)
                out.append(Send(cmd.neighbour, encode_message(req)))
        return out


def _key(batch: DeltaBatch) -> BatchKey:
    return BatchKey(batch.namespace, batch.origin, batch.first, batch.last)
