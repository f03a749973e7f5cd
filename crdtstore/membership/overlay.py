"""HyParView: a small symmetric active view and a larger passive view per node.

Invariants (held after every call):
- ``me`` is in neither view; no node is in both; ``len(active) <= active_size`` and
  ``len(passive) <= passive_size``.
- The active view is symmetric in steady state: a node enters it only through a
  handshake the other side took part in (join, neighbor request, forward-join end), and a
  node that drops another tells it (``Disconnect``), so the other side drops it too.
  A lost reply or disconnect leaves a one-sided link; the probes' acks reveal it (the
  protocol's concern) and :meth:`Overlay.confirm` makes it symmetric or drops it.
- Learning a member alive never evicts from the passive view (:meth:`offer_passive`);
  only shuffles and failures rotate it, so a start storm does not fill every passive
  view with the newest joiners.

Steady traffic (probes, relayed deltas, anti-entropy) flows only along active links, so a
node's connections stay at ``active_size`` plus a few short-lived ones, whatever N. The
passive view is the reserve a failed neighbour is replaced from; it is refreshed by
periodic shuffles (random walks exchanging samples) and topped up from the member table,
which every node holds whole.

Sans-I/O: methods return the messages to send as ``(to, message)`` pairs; randomness
comes from the ``random.Random`` given, so a simulation replays from its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crdtstore.membership.wire import (
    Contact,
    Disconnect,
    ForwardJoin,
    Join,
    Neighbor,
    NeighborReply,
    Shuffle,
    ShuffleReply,
)

Out = list[tuple[Contact, object]]


@dataclass(frozen=True, slots=True)
class OverlaySettings:
    active_size: int = 5
    """Neighbours a node keeps (and the most connections it holds, besides a few
    short-lived ones for probes and shuffles). HyParView's evaluation kept 5 at 10,000
    nodes; it is not scaled with N, so per-node cost stays flat."""
    passive_size: int = 30
    active_walk: int = 6
    """Hops a forward-join walks before the joiner is taken in (ARWL)."""
    passive_walk: int = 3
    """Hop of the walk at which the joiner is added to a passive view (PRWL)."""
    shuffle_active: int = 3
    shuffle_passive: int = 4
    shuffle_walk: int = 4


class Overlay:
    def __init__(self, me: Contact, settings: OverlaySettings, rng: random.Random) -> None:
        self.me = me
        self.settings = settings
        self.rng = rng
        self.active: dict[str, Contact] = {}
        self.passive: dict[str, Contact] = {}
        self.pending: dict[str, Contact] = {}
        """Neighbor requests sent and not yet answered."""
        self._sent_sample: tuple[Contact, ...] = ()
        """What this node's last shuffle sent, while its reply is awaited (else empty):
        a reply is taken once, and no larger than it."""

    # -- events of this node ---------------------------------------------------------------

    def join(self, contact: Contact) -> Out:
        return [(contact, Join(self.me))]

    def neighbour_failed(self, node_id: str) -> tuple[bool, Out]:
        """``node_id`` stopped answering: drop it from both views and ask a passive node
        to take its place. Returns whether it was a neighbour, and what to send."""
        was = self.active.pop(node_id, None) is not None
        self.passive.pop(node_id, None)
        self.pending.pop(node_id, None)
        return was, self.fill()

    def fill(self) -> Out:
        """Ask passive nodes to become neighbours while the active view has room (one
        request per free slot at a time; a refusal or silence moves on to another)."""
        out: Out = []
        free = self.settings.active_size - len(self.active) - len(self.pending)
        candidates = [c for n, c in self.passive.items() if n not in self.pending]
        self.rng.shuffle(candidates)
        for contact in candidates[: max(0, free)]:
            self.pending[contact.node_id] = contact
            out.append((contact, Neighbor(self.me, high=not self.active)))
        return out

    def forget_pending(self) -> None:
        """Unanswered neighbor requests are given up (called once a period)."""
        self.pending.clear()

    def shuffle(self) -> Out:
        if not self.active:
            return []
        s = self.settings
        sample = [self.me]
        sample += self.rng.sample(
            list(self.active.values()), min(s.shuffle_active, len(self.active))
        )
        sample += self.rng.sample(
            list(self.passive.values()), min(s.shuffle_passive, len(self.passive))
        )
        self._sent_sample = tuple(sample)
        target = self.rng.choice(list(self.active.values()))
        return [(target, Shuffle(self.me, s.shuffle_walk, tuple(sample)))]

    def add_passive(self, contact: Contact) -> None:
        node_id = contact.node_id
        if node_id == self.me.node_id or node_id in self.active:
            return
        if node_id not in self.passive and len(self.passive) >= self.settings.passive_size:
            del self.passive[self.rng.choice(list(self.passive))]
        self.passive[node_id] = contact

    def offer_passive(self, contact: Contact) -> None:
        """A member learned alive: refresh its contact if held, take it if there is room.
        Unlike :meth:`add_passive` it evicts nothing: in a start storm every node learns
        every joiner, and evicting for each kept the passive view full of the newest
        joiners (and cost a random draw per member learned)."""
        node_id = contact.node_id
        if node_id in self.passive:
            self.passive[node_id] = contact
        elif node_id in self.active:
            self.active[node_id] = contact
        elif node_id != self.me.node_id and len(self.passive) < self.settings.passive_size:
            self.passive[node_id] = contact

    def rotate(self, candidate: Contact) -> Out:
        """Ask ``candidate`` (a random live member) to become a neighbour: continuous
        rewiring keeps the overlay random and joins the halves of a healed partition,
        which HyParView's failure-driven repair alone would leave apart."""
        if candidate.node_id in self.active or candidate.node_id == self.me.node_id:
            return []
        self.pending[candidate.node_id] = candidate
        return [(candidate, Neighbor(self.me, high=False))]

    def confirm(self, neighbour: Contact) -> Out:
        """``neighbour`` answered a probe saying it does not hold this node (a one-sided
        link: a lost reply or disconnect). Ask it again; a refusal drops the link here
        (:meth:`on_neighbor_reply`), an acceptance makes it symmetric."""
        if neighbour.node_id not in self.active or neighbour.node_id in self.pending:
            return []
        self.pending[neighbour.node_id] = neighbour
        return [(neighbour, Neighbor(self.me, high=False))]

    # -- messages --------------------------------------------------------------------------

    def on_join(self, msg: Join) -> Out:
        joiner = msg.joiner
        if joiner.node_id == self.me.node_id:
            return []
        out = self._add_active(joiner)
        out.append((joiner, NeighborReply(self.me, accepted=True)))
        for contact in list(self.active.values()):
            if contact.node_id != joiner.node_id:
                out.append((contact, ForwardJoin(joiner, self.settings.active_walk)))
        return out

    def on_forward_join(self, sender: str, msg: ForwardJoin) -> Out:
        joiner = msg.joiner
        if joiner.node_id == self.me.node_id:
            return []
        if msg.ttl == 0 or len(self.active) <= 1:
            if joiner.node_id in self.active:
                return []
            out = self._add_active(joiner)
            out.append((joiner, NeighborReply(self.me, accepted=True)))
            return out
        if msg.ttl == self.settings.passive_walk:
            self.add_passive(joiner)
        onward = [c for n, c in self.active.items() if n not in (sender, joiner.node_id)]
        if not onward:
            out = self._add_active(joiner)
            out.append((joiner, NeighborReply(self.me, accepted=True)))
            return out
        return [(self.rng.choice(onward), ForwardJoin(joiner, msg.ttl - 1))]

    def on_neighbor(self, msg: Neighbor) -> Out:
        sender = msg.sender
        if sender.node_id == self.me.node_id:
            return []
        if sender.node_id in self.active:
            self.active[sender.node_id] = sender
            return [(sender, NeighborReply(self.me, accepted=True))]
        if msg.high or len(self.active) < self.settings.active_size:
            out = self._add_active(sender)
            out.append((sender, NeighborReply(self.me, accepted=True)))
            return out
        return [(sender, NeighborReply(self.me, accepted=False))]

    def on_neighbor_reply(self, msg: NeighborReply) -> Out:
        sender = msg.sender
        self.pending.pop(sender.node_id, None)
        if not msg.accepted:
            # A refusal says the sender does not hold this node: a link this side still
            # holds is one-sided, and goes.
            self.active.pop(sender.node_id, None)
            self.add_passive(sender)
            # The next request waits for the periodic fill unless this node has no
            # neighbour at all: asking at once looped at network speed (120 requests a
            # second from a node one short of full, every candidate being full).
            return [] if self.active else self.fill()
        if sender.node_id in self.active:
            self.active[sender.node_id] = sender
            return []
        return self._add_active(sender)

    def on_disconnect(self, msg: Disconnect) -> tuple[bool, Out]:
        contact = self.active.pop(msg.sender, None)
        if contact is None:
            return False, []
        self.add_passive(contact)
        return True, self.fill()

    def on_shuffle(self, sender: str, msg: Shuffle) -> Out:
        if msg.origin.node_id == self.me.node_id:
            return []
        onward = [c for n, c in self.active.items() if n not in (sender, msg.origin.node_id)]
        if msg.ttl > 0 and onward:
            return [(self.rng.choice(onward), Shuffle(msg.origin, msg.ttl - 1, msg.sample))]
        passive = list(self.passive.values())
        reply = tuple(self.rng.sample(passive, min(len(msg.sample), len(passive))))
        for contact in msg.sample:
            self.add_passive(contact)
        return [(msg.origin, ShuffleReply(reply))]

    def on_shuffle_reply(self, msg: ShuffleReply) -> bool:
        """Take the reply to this node's shuffle (False, and nothing changes, for one it
        did not ask for: anyone could otherwise flush its passive view)."""
        if not self._sent_sample:
            return False
        room = len(self._sent_sample)
        self._sent_sample = ()
        for contact in msg.sample[:room]:
            self.add_passive(contact)
        return True

    # -- internals -------------------------------------------------------------------------

    def _add_active(self, contact: Contact) -> Out:
        node_id = contact.node_id
        self.passive.pop(node_id, None)
        self.pending.pop(node_id, None)
        out: Out = []
        if node_id not in self.active and len(self.active) >= self.settings.active_size:
            dropped_id = self.rng.choice(list(self.active))
            dropped = self.active.pop(dropped_id)
            self.add_passive(dropped)
            out.append((dropped, Disconnect(self.me.node_id)))
        self.active[node_id] = contact
        return out
