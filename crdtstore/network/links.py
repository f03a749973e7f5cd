"""Which members this node is linked to, and what the sync engine is told of them.

A link is a connection the overlay's thread made: to a neighbour of the membership
protocol's active view, or, with topics, to a *topic link* this module pins. Each linked
member is a peer of the sync engine (its digests count, it is repaired from) and, once
alive, a link of the engine's relay, told the protocol version its hello agreed, the
namespaces its record holds, and whether its record vouches for the connection.

Topic links. The overlay is one graph of all members, and a node relays only what it
holds: the holders of a topic could sit apart, behind nodes that drop its batches. With
topics, ``TOPIC_LINKS`` links per held topic to random holders (pinned: kept whatever the
overlay does, and made two-way by the holder's answer to our hello, see ``pin_back``)
join every topic's holders into a random graph of their own, connected with high
probability; a holder that dies is replaced at the next refresh.

Invariants: a member is an engine peer only while connected; the relay's links are told
to the engine again only when their form changed (``relink``), and whenever something
they depend on may have changed ``relink_due`` is set. A hello is the sender's word: only
a replicated record vouches for a member, and only its addresses are linked back to.
Everything here is the replicator thread's.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from crdtstore.membership import MemberRecord, MemberStatus
from crdtstore.membership.versions import RELAY_TREE, PeerVersions
from crdtstore.membership.wire import Contact
from crdtstore.network.records import MemberRecords
from crdtstore.sync.engine import SyncEngine
from crdtstore.sync.outgoing import Outgoing

if TYPE_CHECKING:
    from crdtstore.overlay_liveness import OverlayLiveness

TOPIC_LINKS = 2
"""With topics: links kept per held topic to other holders of it."""

_LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


class PeerLinks:
    """The links of one node, and the engine's peers and relay links that follow them."""

    def __init__(
        self,
        *,
        node_id: str,
        topics: frozenset[str] | None,
        engine: SyncEngine,
        liveness: OverlayLiveness,
        records: MemberRecords,
        versions: PeerVersions,
        emit: Callable[[Sequence[Outgoing]], None],
        greet: Callable[[str], None],
        stats: Counter[str],
    ) -> None:
        """``emit`` sends what the engine answers; ``greet(node_id)`` sends our hello."""
        self.node_id = node_id
        self._topics = topics
        self._engine = engine
        self._liveness = liveness
        self._records = records
        self._versions = versions
        self._emit = emit
        self._greet = greet
        self._stats = stats
        self._rng = random.Random()
        self._connected: dict[str, tuple[str, str]] = {}
        self._engine_peers: set[str] = set()
        # The relay's links as last told to the engine (see relink).
        self._relinked: dict[str, tuple[int, frozenset[str] | None, bool]] = {}
        self.relink_due = False

    def connected(self, node_id: str) -> bool:
        return node_id in self._connected

    # -- links gained and lost -----------------------------------------------------------

    def neighbour_up(self, contact: Contact) -> None:
        """The overlay's thread connected ``contact`` (a neighbour, or a linked member's
        new life): a link starts with hellos both ways (clocks, versions, a digest)."""
        self._connected[contact.node_id] = (contact.router, contact.pub)
        self.add_to_engine(contact.node_id)
        self._greet(contact.node_id)

    def neighbour_down(self, node_id: str) -> None:
        if node_id not in self._liveness.pinned():
            self._connected.pop(node_id, None)
            self.remove_from_engine(node_id)

    def disconnect(self, node_id: str) -> None:
        # The overlay's thread owns the connections: ending the link there keeps its books
        # right (a neighbour it still counted would never be connected again).
        self._connected.pop(node_id, None)
        self._liveness.unpin(node_id)
        self.remove_from_engine(node_id)
        self._engine.forget_digest_form(node_id)

    def add_to_engine(self, node_id: str) -> None:
        if node_id not in self._engine_peers and node_id in self._connected:
            self._engine_peers.add(node_id)
            self._engine.add_peer(node_id)
        self.relink_due = True

    def remove_from_engine(self, node_id: str) -> None:
        if node_id in self._engine_peers:
            self._engine_peers.discard(node_id)
            self._engine.remove_peer(node_id)
        self.relink_due = True

    def relink(self) -> None:
        """Tell the engine's relay which links carry relayed batches: every connected
        member whose hello agreed a version, with that version, the namespaces its
        record holds, and whether the record vouches for the connection
        (``relay_sources``: then it relays every origin's batches; a joiner whose record
        has not arrived yet is held to its own origin)."""
        self.relink_due = False
        sources = self._liveness.relay_sources()
        wanted: dict[str, tuple[int, frozenset[str] | None, bool]] = {}
        for node_id in self._engine_peers:
            if self._versions.refused(node_id):
                continue
            # Before its hello is heard, its own batches in the newest form: a write it
            # makes at once is not missed while the hellos cross (its subscription
            # travels with the connection's handshake).
            heard = self._versions.agreed(node_id)
            agreed = heard or RELAY_TREE
            record = self._records.best(node_id)
            vouched = heard is not None and node_id in sources and self._records.recorded(node_id)
            topics = None if record is None else record.topics
            wanted[node_id] = (agreed, None if topics is None else frozenset(topics), vouched)
        for node_id in sorted(self._relinked.keys() - wanted.keys()):
            del self._relinked[node_id]
            self._emit(self._engine.unlink(node_id))
        for node_id, form in sorted(wanted.items()):
            if self._relinked.get(node_id) != form:
                self._relinked[node_id] = form
                self._emit(self._engine.link(node_id, *form))

    # -- topic links -----------------------------------------------------------------------

    def keep_topic_links(self, records: dict[str, MemberRecord]) -> None:
        """With topics, keep ``TOPIC_LINKS`` links per held topic to live members that
        hold it (see the module)."""
        if self._topics is None:
            return
        overlay = self._liveness
        pinned = overlay.pinned()
        live = {
            n: r
            for n, r in records.items()
            if n != self.node_id and not r.left and overlay.status(n) in _LIVE
        }
        for node_id in pinned - live.keys():
            overlay.unpin(node_id)
            if not overlay.is_neighbour(node_id):
                self._connected.pop(node_id, None)
                self.remove_from_engine(node_id)
        pinned &= live.keys()
        for topic in sorted(self._topics):
            holders = [n for n, r in live.items() if r.topics is None or topic in r.topics]
            linked = [n for n in holders if n in pinned or overlay.is_neighbour(n)]
            if len(linked) >= TOPIC_LINKS:
                continue
            spare = [n for n in holders if n not in linked]
            for node_id in self._rng.sample(spare, min(TOPIC_LINKS - len(linked), len(spare))):
                self._pin(live[node_id])
                pinned.add(node_id)

    def _pin(self, record: MemberRecord) -> None:
        self._liveness.pin(record)
        self._connected[record.node_id] = (record.router, record.pub)
        self.add_to_engine(record.node_id)
        self._stats["topic_links"] += 1
        self._greet(record.node_id)

    def pin_back(self, record: MemberRecord | None) -> None:
        """A hello from a member that is neither neighbour nor pinned, holding a topic
        we hold: it pinned us; link back, so each of us hears the other's publications."""
        if record is None:
            return
        node_id = record.node_id
        if node_id in self._connected or self._liveness.is_neighbour(node_id):
            return
        held = self._records.get(node_id)
        if held is None or held.left or held.incarnation < record.incarnation:
            # Only its replicated record vouches for it, and only that record's addresses
            # and key are linked to: a hello is the sender's word, and any client may send
            # one in a member's name, while what a link publishes is taken as relayed
            # batches of any origin. (A new life is linked back once its record arrives.)
            self._stats["pin_back_refused"] += 1
            return
        mine, theirs = self._topics, held.topics
        if mine is not None and theirs is not None and not set(mine) & set(theirs):
            return
        self._pin(held)
