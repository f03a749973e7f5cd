"""The membership protocol of one node, sans-I/O: (message | tick, now_ms) -> commands.

It composes these parts, each a module that states its own invariants:
- the overlay (:mod:`~crdtstore.membership.overlay`, HyParView): who this node's few
  neighbours are;
- probing (:mod:`~crdtstore.membership.probing`, SWIM's ping and ping-req) of the
  neighbours and of a random member now and then; Lifeguard's local health
  (:mod:`~crdtstore.membership.health`) stretches every timeout while this node itself
  runs late or hears itself suspected;
- a member table (:mod:`~crdtstore.membership.table`), complete (every member, as every
  node holds every member record): status and incarnation, with SWIM's precedence. A
  change is flooded to every neighbour and piggybacked on probes and acks
  (:mod:`~crdtstore.membership.dissemination`), and repaired by anti-entropy between
  neighbours (:mod:`~crdtstore.membership.table_exchange`);
- admission and trust (:mod:`~crdtstore.membership.admission`): who may enter the
  views, and which updates from the network are believed (every byte from it is
  untrusted: one forged frame must not kill a member nor corrupt this node's view).
This module dispatches messages and timers to them, and holds what they share: the
table, the overlay, this node's own entry (refuting what is said of it) and the
member lifecycle (suspect -> dead -> pruned). It is somewhat over issue 20's ~500 lines:
what is left is the dispatch of fourteen message kinds and seven timers and the table
updates every part calls back into; split further, that state would be passed around
by hand.

Invariants: this node's own entry is alive at ``incarnation`` unless it left; an
update that claims it suspect or dead at its incarnation or above (and is believed) is
refuted by raising the incarnation above it. Nothing here reads a clock or a socket;
randomness comes from the ``random.Random`` given, and no decision depends on a set's
iteration order, so a simulation replays from its seed.

Entries learned from a table exchange are flooded on only when they change what this
node knew of a member (a refutation, a death); members it had never heard of are not
news to its neighbours, who hold the same table. Otherwise every joiner re-flooded
the whole table it had just been given.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from crdtstore.membership.admission import MAX_INCARNATION, Admission
from crdtstore.membership.commands import (
    SEED_PREFIX,
    TO_STATUS,
    ClockReading,
    Command,
    NeighbourDown,
    NeighbourUp,
    Refuted,
    Send,
)
from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.dissemination import Dissemination
from crdtstore.membership.health import LocalHealth
from crdtstore.membership.overlay import Out, Overlay
from crdtstore.membership.probing import Prober
from crdtstore.membership.protocol_settings import ProtocolSettings
from crdtstore.membership.table import MemberTable, supersedes
from crdtstore.membership.table_exchange import TableExchange
from crdtstore.membership.wire import (
    Ack,
    Contact,
    Disconnect,
    ForwardJoin,
    Gossip,
    Join,
    Neighbor,
    NeighborReply,
    Ping,
    PingReq,
    Shuffle,
    ShuffleReply,
    Status,
    TableBuckets,
    TableDigest,
    TableSync,
    Update,
)
from crdtstore.sync.rejections import Rejections

__all__ = [
    "MAX_INCARNATION",
    "SEED_PREFIX",
    "ClockReading",
    "Command",
    "MembershipProtocol",
    "NeighbourDown",
    "NeighbourUp",
    "ProtocolSettings",
    "Refuted",
    "Send",
    "StatusChange",
    "supersedes",
]

log = logging.getLogger(__name__)


def _named(sender: str, msg: object) -> str:
    return f"{sender!r} sent {type(msg).__name__} in another's name"


class MembershipProtocol:
    def __init__(
        self,
        me: Contact,
        settings: ProtocolSettings,
        rng: random.Random,
        now_ms: int,
        seeds: Iterable[Contact] = (),
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.me = me
        self.overlay = Overlay(me, settings.overlay, rng)
        self.seeds = list(seeds)
        self._seed_answered = False
        self.table = MemberTable()
        self.table.set(Update(me, Status.ALIVE), now_ms)
        self._health = LocalHealth(
            settings.max_local_health, settings.probe_interval_ms, settings.suspect_after_ms
        )
        self.stats: Counter[str] = Counter()
        self._refuse = Rejections(
            me.node_id, self.stats, settings.log_interval_ms, log, "membership"
        )
        self.leaving = False
        self._admission = Admission(self.overlay, self.table, settings, self.stats, self._refuse)
        self._dissemination = Dissemination(self.overlay, self.table, settings)
        self._prober = Prober(
            overlay=self.overlay,
            table=self.table,
            settings=settings,
            rng=rng,
            health=self._health,
            stats=self.stats,
            refuse=self._refuse,
            admission=self._admission,
            dissemination=self._dissemination,
            apply=lambda update, now: self._apply(update, now, source=None),
        )
        self._exchange = TableExchange(
            self.table,
            settings,
            self.stats,
            lambda entries, now, sender: self._absorb(entries, now, sender, news_only=True),
            now_ms,
        )
        s = settings
        self._next = {
            "probe": now_ms,
            "random_probe": now_ms + s.random_probe_interval_ms,
            "join": now_ms,
            "shuffle": now_ms + s.shuffle_interval_ms,
            "rotate": now_ms + s.rotate_interval_ms,
            "table": now_ms + s.table_sync_interval_ms,
            "reconnect": now_ms + s.reconnect_interval_ms,
        }
        self._active_seen: dict[str, None] = {}
        self._pending_changes: list[Command] = []
        self._next_prune = now_ms + settings.prune_after_ms // 8
        self._next_timer = min(self._next.values())

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    @property
    def table_hash(self) -> int:
        return self.table.digest

    @property
    def local_health(self) -> int:
        """Lifeguard's score (:mod:`crdtstore.membership.health`): this node's own
        slowness, which stretches every timeout it judges others by."""
        return self._health.level

    def status(self, node_id: str) -> MemberStatus | None:
        entry = self.table.get(node_id)
        return None if entry is None else TO_STATUS[entry.status]

    def members(self) -> dict[str, tuple[MemberStatus, int, int]]:
        """node id -> (status, incarnation, since_ms)."""
        return {
            n: (TO_STATUS[e.status], e.contact.incarnation, e.since_ms)
            for n, e in self.table.items()
        }

    def pending_updates(self) -> int:
        """Updates still to be flooded or piggybacked (0 once this node has gone quiet)."""
        return self._dissemination.pending()

    def neighbours(self) -> list[str]:
        return sorted(self.overlay.active)

    def next_deadline(self) -> int:
        deadline = self._next_timer
        gossip_due = self._dissemination.due
        if gossip_due is not None:
            deadline = min(deadline, gossip_due)
        exchange_due = self._exchange.due()
        if exchange_due is not None:
            deadline = min(deadline, exchange_due)
        return self._prober.next_timeout(deadline)

    def recorded(self, contact: Contact) -> bool:
        """Whether ``contact`` is its member's replicated record: a link to it is a member
        link, trusted to relay any origin's batches (see
        :meth:`crdtstore.membership.admission.Admission.recorded`)."""
        return self._admission.recorded(contact)

    def member(self, node_id: str) -> tuple[MemberStatus, int, int] | None:
        """(status, incarnation, since_ms) of one member, or None."""
        entry = self.table.get(node_id)
        if entry is None:
            return None
        return TO_STATUS[entry.status], entry.contact.incarnation, entry.since_ms

    # -- events of this node ---------------------------------------------------------------

    def leave(self, now_ms: int) -> list[Command]:
        """Tell the neighbours this node leaves (the update floods from them)."""
        self.leaving = True
        update = Update(self.me, Status.LEFT)
        self.table.set(update, now_ms)
        out: list[Command] = []
        for contact in self.overlay.active.values():
            out.append(Send(contact, Gossip((update,))))
        for contact in self.overlay.active.values():
            out.append(Send(contact, Disconnect(self.me.node_id)))
        return out

    def learn(self, contact: Contact, now_ms: int, left: bool = False) -> list[Command]:
        """A member record read from replicated state: a member this node may not have
        heard of yet (taken as alive at that incarnation, and as a passive candidate),
        or one whose record says it left (gone at that incarnation)."""
        if contact.node_id == self.me.node_id:
            return []
        self._admission.learn(contact, left)
        status = Status.LEFT if left else Status.ALIVE
        entry = self.table.get(contact.node_id)
        if entry is not None and not supersedes(
            status, contact.incarnation, entry.status, entry.contact.incarnation
        ):
            return []
        out = self._apply(Update(contact, status), now_ms, source=None)
        return out + self._neighbour_changes(now_ms)

    def raise_incarnation(self, at_least: int, now_ms: int) -> list[Command]:
        """An earlier life of this node wrote a higher incarnation: live above it."""
        if at_least <= self.me.incarnation:
            return []
        self._live_at(at_least, now_ms)
        return []

    def tick(self, now_ms: int, io_stall_ms: int = 0) -> list[Command]:
        """Run the timers due at ``now_ms``. ``io_stall_ms``: how long this node's own I/O
        was held up since the previous tick (what its peers sent meanwhile is still on its
        way in), which this node's local health takes into account."""
        out: list[Command] = []
        if self._health.tick(now_ms, self.next_deadline(), io_stall_ms):
            self._count("io_stalls")
        s = self.settings
        nxt = self._next
        out += self._prober.timeouts(now_ms)
        gossip_due = self._dissemination.due
        if gossip_due is not None and now_ms >= gossip_due:
            out += self._dissemination.flush()
        exchange_due = self._exchange.due()
        if exchange_due is not None and now_ms >= exchange_due:
            out += self._exchange.next(now_ms)
        if now_ms >= nxt["probe"]:
            nxt["probe"] = now_ms + s.probe_interval_ms
            out += self._prober.round(now_ms)
            out += self._timers(now_ms)
        if now_ms >= nxt["random_probe"]:
            nxt["random_probe"] = now_ms + s.random_probe_interval_ms
            out += self._prober.random_probe(self._random_live(), now_ms)
        if now_ms >= nxt["join"]:
            nxt["join"] = now_ms + s.join_interval_ms
            out += self._join()
        if now_ms >= nxt["shuffle"]:
            nxt["shuffle"] = now_ms + s.shuffle_interval_ms
            self.overlay.forget_pending()
            self._top_up_passive()
            out += self._sends(self.overlay.shuffle())
            out += self._sends(self.overlay.fill())
        if now_ms >= nxt["rotate"]:
            nxt["rotate"] = now_ms + s.rotate_interval_ms
            live = self._random_live()
            if live is not None and len(self.overlay.active) >= s.overlay.active_size:
                out += self._sends(self.overlay.rotate(live))
        if now_ms >= nxt["table"]:
            nxt["table"] = now_ms + s.table_sync_interval_ms
            if self.overlay.active:
                target = self.rng.choice(list(self.overlay.active.values()))
                out.append(Send(target, self._exchange.digest()))
        if now_ms >= nxt["reconnect"]:
            nxt["reconnect"] = now_ms + s.reconnect_interval_ms
            if self.table.dead:
                dead = self.table[self.rng.choice(list(self.table.dead))]
                out.append(Send(dead.contact, self._exchange.digest()))
        self._next_timer = min(nxt.values())
        return out + self._neighbour_changes(now_ms)

    # -- messages --------------------------------------------------------------------------

    def on_message(self, sender: str, msg: object, now_ms: int) -> list[Command]:
        """``sender``: the node id the transport vouches for (the connection's identity)."""
        out: list[Command] = []
        admission = self._admission
        if isinstance(msg, Ping):
            out += self._absorb(msg.updates, now_ms, sender)
            out += self._prober.on_ping(sender, msg, self.me.incarnation, now_ms)
        elif isinstance(msg, Ack):
            if msg.clock_ms is not None:
                self._prober.reads_clock(sender)
            out += self._absorb(msg.updates, now_ms, sender)
            out += self._prober.on_ack(sender, msg, now_ms)
        elif isinstance(msg, PingReq):
            out += self._prober.relay(sender, msg, now_ms)
        elif isinstance(msg, Gossip):
            out += self._absorb(msg.updates, now_ms, sender)
        elif isinstance(msg, TableDigest | TableBuckets | TableSync):
            out += self._exchange.on_message(sender, msg, now_ms)
        elif isinstance(msg, Join):
            if admission.admissible(sender, msg.joiner, "join", now_ms):
                self._heard_of(msg.joiner, now_ms)
                out += self._sends(self.overlay.on_join(msg))
        elif isinstance(msg, ForwardJoin):
            if sender not in self.overlay.active:
                self._count("admission_refused_forward_join")  # also a link just dropped
            elif admission.admissible(None, msg.joiner, "forward_join", now_ms):
                self._heard_of(msg.joiner, now_ms)
                out += self._sends(self.overlay.on_forward_join(sender, msg))
        elif isinstance(msg, Neighbor):
            if not admission.admissible(sender, msg.sender, "neighbor", now_ms):
                pass
            elif self.leaving:
                self._heard_of(msg.sender, now_ms)
                out.append(Send(msg.sender, NeighborReply(self.me, accepted=False)))
            else:
                self._heard_of(msg.sender, now_ms)
                out += self._sends(self.overlay.on_neighbor(msg))
        elif isinstance(msg, NeighborReply):
            out += self._on_neighbor_reply(sender, msg, now_ms)
        elif isinstance(msg, Disconnect):
            if msg.sender != sender:
                self._refuse("admission_refused_identity", now_ms, _named(sender, msg))
            else:
                _, sends = self.overlay.on_disconnect(msg)
                out += self._sends(sends)
        elif isinstance(msg, Shuffle):
            # A walk is passed on along links; one may be one-sided for a while, so a
            # live member is heard too, a stranger not.
            if not admission.live_member(sender):
                reason = "admission_refused_shuffle"
                admission.refuse_request(reason, sender, now_ms, f"from {sender!r}")
            elif admission.credible(Update(msg.origin, Status.ALIVE), sender, now_ms):
                self._heard_of(msg.origin, now_ms)
                out += self._sends(self.overlay.on_shuffle(sender, msg))
        elif isinstance(msg, ShuffleReply):
            if not admission.known_sender(sender) or not self.overlay.on_shuffle_reply(msg):
                reason = "shuffle_replies_refused"
                admission.refuse_request(reason, sender, now_ms, f"unasked, from {sender!r}")
        else:
            self._count("rejected_membership_kind")
        if admission.replies:
            out += admission.replies
            admission.replies = []
        return out + self._neighbour_changes(now_ms)

    def _on_neighbor_reply(self, sender: str, msg: NeighborReply, now_ms: int) -> list[Command]:
        if msg.sender.node_id != sender:
            self._refuse("admission_refused_identity", now_ms, _named(sender, msg))
            return []
        if not self._admission.credible(Update(msg.sender, Status.ALIVE), sender, now_ms):
            return []
        self._heard_of(msg.sender, now_ms)
        seeds = [s for s in self.seeds if s.router != msg.sender.router]
        self._seed_answered |= len(seeds) < len(self.seeds)
        self.seeds = seeds
        if self.leaving:
            return []
        out = self._sends(self.overlay.on_neighbor_reply(msg))
        node_id = msg.sender.node_id
        if msg.accepted and node_id in self.overlay.active:
            self._exchange.start(node_id, now_ms)
        return out

    # -- the member table ------------------------------------------------------------------

    def _absorb(
        self, updates: Iterable[Update], now_ms: int, sender: str, news_only: bool = False
    ) -> list[Command]:
        out: list[Command] = []
        if sender in self.overlay.active:
            self._prober.last_ack[sender] = now_ms  # any frame from a neighbour: it is there
        for update in self._admission.trusted(updates, sender, now_ms):
            out += self._apply(update, now_ms, source=sender, news_only=news_only)
        return out

    def _apply(
        self, update: Update, now_ms: int, source: str | None, news_only: bool = False
    ) -> list[Command]:
        """Take ``update`` if it supersedes what the table holds. ``news_only``: pass it
        on (flood, piggyback) only if it changes a member this node already knew."""
        node_id = update.node_id
        if node_id == self.me.node_id:
            return self._about_me(update, now_ms)
        entry = self.table.get(node_id)
        if entry is not None and not supersedes(
            update.status, update.incarnation, entry.status, entry.contact.incarnation
        ):
            return []
        old = None if entry is None else entry.status
        if entry is not None and update.incarnation > entry.contact.incarnation:
            self._prober.reads_clocks.discard(node_id)  # a new life, perhaps an older build
        self.table.set(update, now_ms)
        out: list[Command] = []
        if old is not update.status:  # a new incarnation at the same status is no change
            old_status = None if old is None else TO_STATUS[old]
            out.append(
                StatusChange(node_id, old_status, TO_STATUS[update.status], update.incarnation)
            )
        if update.status is Status.ALIVE:
            self.overlay.offer_passive(update.contact)
        elif update.status in (Status.DEAD, Status.LEFT):
            _, sends = self.overlay.neighbour_failed(node_id)
            out += self._sends(sends)
        if entry is None:
            if not news_only:
                self._dissemination.flood(update, now_ms, source)
            return out
        self._dissemination.retransmit(update)
        self._dissemination.flood(update, now_ms, source)
        return out

    def _about_me(self, update: Update, now_ms: int) -> list[Command]:
        if update.status is Status.ALIVE or update.incarnation < self.me.incarnation:
            return []
        if self.leaving:
            return []
        # Said suspect, dead or gone at our incarnation or above: refute with a higher one.
        self._health.raise_level(now_ms)
        self._count("refutations")
        self._live_at(update.incarnation + 1, now_ms)
        return [Refuted(self.me.incarnation)]

    def _live_at(self, incarnation: int, now_ms: int) -> None:
        """This node lives on at ``incarnation``; everyone is told."""
        self.me = replace(self.me, incarnation=incarnation)
        self.overlay.me = self.me
        alive = Update(self.me, Status.ALIVE)
        self.table.set(alive, now_ms)
        self._dissemination.retransmit(alive)
        self._dissemination.flood(alive, now_ms, None)

    def _timers(self, now_ms: int) -> list[Command]:
        """Suspect silent neighbours, declare suspects dead, prune the long gone."""
        out = self._prober.suspicions(now_ms)
        dead_limit = self._health.stretch(self.settings.dead_after_ms)
        for node_id in list(self.table.suspects):
            entry = self.table[node_id]
            if now_ms - entry.since_ms > dead_limit:
                out += self._apply(Update(entry.contact, Status.DEAD), now_ms, source=None)
        if now_ms >= self._next_prune:
            self._next_prune = now_ms + self.settings.prune_after_ms // 8
            for node_id, entry in list(self.table.items()):
                if (
                    entry.status in (Status.DEAD, Status.LEFT)
                    and node_id != self.me.node_id
                    and now_ms - entry.since_ms > self.settings.prune_after_ms
                ):
                    self._remove(node_id)
        return out

    def _remove(self, node_id: str) -> None:
        self.table.remove(node_id)
        self._prober.reads_clocks.discard(node_id)
        self._admission.forget(node_id)
        self._dissemination.discard(node_id)
        self.overlay.passive.pop(node_id, None)
        self._count("members_pruned")

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    # -- overlay glue ----------------------------------------------------------------------

    def _join(self) -> list[Command]:
        """Ask a seed (or, with no neighbour left, any known member) to take this node in.
        Seeds are asked again until one answers, neighbours or not: a node that others
        joined through before its own join was answered otherwise stayed, with them, an
        overlay of its own that nothing ever merged (seen at 5% loss)."""
        if self.leaving or (self.overlay.active and (self._seed_answered or not self.seeds)):
            return []
        contacts = list(self.seeds)
        live = None if self.overlay.active else self._random_live()
        if live is not None:
            contacts.append(live)
        if not contacts:
            return []
        self._count("join_attempts")
        return self._sends(self.overlay.join(self.rng.choice(contacts)))

    def _top_up_passive(self) -> None:
        room = self.settings.overlay.passive_size - len(self.overlay.passive)
        for _ in range(room):
            contact = self._random_live()
            if contact is not None and contact.node_id not in self.overlay.active:
                self.overlay.add_passive(contact)

    def _random_live(self) -> Contact | None:
        return self.table.random_with(self.rng, Status.ALIVE, exclude=self.me.node_id)

    def _heard_of(self, contact: Contact, now_ms: int) -> None:
        """``contact`` is alive at its incarnation (said by itself on its own connection,
        or passed on by a neighbour)."""
        if contact.node_id == self.me.node_id or contact.node_id.startswith(SEED_PREFIX):
            return
        entry = self.table.get(contact.node_id)
        if entry is None or supersedes(
            Status.ALIVE, contact.incarnation, entry.status, entry.contact.incarnation
        ):
            self._pending_changes.extend(self._apply(Update(contact, Status.ALIVE), now_ms, None))

    def _sends(self, out: Out) -> list[Command]:
        return [Send(to, msg) for to, msg in out]

    def _neighbour_changes(self, now_ms: int) -> list[Command]:
        """What the overlay's active view gained and lost since the last call (and the
        changes learned on the way)."""
        out: list[Command] = list(self._pending_changes)
        self._pending_changes.clear()
        active = self.overlay.active
        seen = self._active_seen
        if active.keys() == seen.keys():
            return out
        for node_id in sorted(n for n in seen if n not in active):
            self._prober.neighbour_down(node_id)
            out.append(NeighbourDown(node_id))
        for node_id in sorted(n for n in active if n not in seen):
            self._prober.last_ack[node_id] = now_ms  # its silence is counted from now
            out.append(NeighbourUp(active[node_id]))
        self._active_seen = dict.fromkeys(active)
        return out
