"""The membership protocol of one node, sans-I/O: (message | tick, now_ms) -> commands.

It composes three things:
- the overlay (:mod:`crdtstore.membership.overlay`, HyParView): who this node's few
  neighbours are;
- failure detection by probing the neighbours (SWIM's ping, and ping-req through ``k``
  other neighbours when a ping goes unanswered). The active view is symmetric, so every
  member is watched by each of its neighbours: an observer topology, at a cost per node
  set by the active view's size, not by N. Lifeguard's local health stretches every
  timeout while this node itself runs late or hears itself suspected;
- a member table, complete (every member, as every node holds every member record):
  status and incarnation, with SWIM's precedence (alive < suspect < dead < left at one
  incarnation; a higher incarnation wins, except over a leave or death at a higher or
  equal one). A change is sent at once to every neighbour (so it floods the overlay in
  a few hops), retransmitted on ``lambda * log N`` probes, and repaired by a push-pull
  of the whole table whenever two neighbours' table hashes differ.

Invariants: this node's own entry is alive at ``incarnation`` unless it left; an
update that claims it suspect or dead at its incarnation or above is refuted by raising
the incarnation above it. Nothing here reads a clock or a socket; randomness comes
from the ``random.Random`` given.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.overlay import Out, Overlay, OverlaySettings
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
    MAX_UPDATES,
    Status,
    TableDigest,
    TableSync,
    Update,
)

SEED_PREFIX = "\x00seed:"
"""Node id of a contact known only by address (a seed), until it answers."""

TO_STATUS = {
    Status.ALIVE: MemberStatus.ALIVE,
    Status.SUSPECT: MemberStatus.SUSPECT,
    Status.DEAD: MemberStatus.DEAD,
    Status.LEFT: MemberStatus.LEFT,
}


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    probe_interval_ms: int = 500
    """Every neighbour is pinged this often (the protocol period)."""
    probe_timeout_ms: int = 200
    """A ping unanswered this long goes out again through ``indirect_probes`` others."""
    indirect_probes: int = 3
    suspect_after_ms: int = 2_000
    """A neighbour unanswered (directly and indirectly) this long is suspected."""
    dead_after_ms: int = 6_000
    """A suspect not refuted this long is dead (both stretched by local health)."""
    join_interval_ms: int = 1_000
    """How often a node without neighbours asks its seeds (or known members) to join."""
    shuffle_interval_ms: int = 10_000
    rotate_interval_ms: int = 30_000
    """How often a node swaps one neighbour for a random live member."""
    table_sync_interval_ms: int = 5_000
    """How often a node compares its member table's hash with one neighbour's."""
    reconnect_interval_ms: int = 10_000
    """How often a node offers its table to one member it holds dead, so that both
    sides of a healed partition learn of each other (and the living refute)."""
    prune_after_ms: int = 24 * 3600 * 1000
    retransmit_mult: int = 3
    """Each update rides on ``retransmit_mult * ceil(log2(N + 1))`` probes (SWIM's lambda)."""
    max_piggyback: int = 8
    gossip_interval_ms: int = 20
    """Updates learned within this long leave together, one message per neighbour: a
    burst (a mass start, a partition) costs a few frames per neighbour, not one per
    update, for at most this much added latency per hop."""
    max_local_health: int = 8
    overlay: OverlaySettings = field(default_factory=OverlaySettings)


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``to``: a contact (connect to it if need be) or, as a string, the
    node id of a peer that just sent this node a message (answer on its connection)."""

    to: Contact | str
    msg: object


@dataclass(frozen=True, slots=True)
class NeighbourUp:
    contact: Contact


@dataclass(frozen=True, slots=True)
class NeighbourDown:
    node_id: str


@dataclass(frozen=True, slots=True)
class Refuted:
    """This node raised its incarnation (its record should follow)."""

    incarnation: int


Command = Send | NeighbourUp | NeighbourDown | Refuted | StatusChange


@dataclass(slots=True)
class _Entry:
    contact: Contact
    status: Status
    since_ms: int


@dataclass(slots=True)
class _Probe:
    target: str
    sent_ms: int
    indirect: bool = False


def _entry_hash(node_id: str, status: Status, incarnation: int) -> int:
    h = hashlib.blake2b(f"{node_id}\x00{int(status)}\x00{incarnation}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def supersedes(new: Status, new_inc: int, old: Status, old_inc: int) -> bool:
    """SWIM's precedence: does an update (new, new_inc) override (old, old_inc)?"""
    if old in (Status.LEFT, Status.DEAD):
        return new_inc > old_inc or (new_inc == old_inc and new > old)
    if new is Status.ALIVE:
        return new_inc > old_inc
    return new_inc > old_inc or (new_inc == old_inc and new > old)


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
        self.table: dict[str, _Entry] = {me.node_id: _Entry(me, Status.ALIVE, now_ms)}
        self.table_hash = _entry_hash(me.node_id, Status.ALIVE, me.incarnation)
        self.local_health = 0
        self.stats: dict[str, int] = {}
        self.leaving = False
        self._retransmit: dict[str, tuple[Update, int]] = {}
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}
        self._last_ack: dict[str, int] = {}
        self._relayed: dict[int, tuple[str, int, int]] = {}
        self._seq = 0
        self._last_tick: int | None = None
        self._hold_health_until = 0
        s = settings
        self._next = {
            "probe": now_ms,
            "join": now_ms,
            "shuffle": now_ms + s.shuffle_interval_ms,
            "rotate": now_ms + s.rotate_interval_ms,
            "table": now_ms + s.table_sync_interval_ms,
            "reconnect": now_ms + s.reconnect_interval_ms,
        }
        self._active_seen: frozenset[str] = frozenset()
        self._pending_changes: list[Command] = []
        self._gossip_out: dict[str, dict[str, Update]] = {}
        self._gossip_due: int | None = None
        self._suspects: set[str] = set()
        self._next_prune = now_ms + settings.prune_after_ms // 8

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    def status(self, node_id: str) -> MemberStatus | None:
        entry = self.table.get(node_id)
        return None if entry is None else TO_STATUS[entry.status]

    def members(self) -> dict[str, tuple[MemberStatus, int, int]]:
        """node id -> (status, incarnation, since_ms)."""
        return {
            n: (TO_STATUS[e.status], e.contact.incarnation, e.since_ms)
            for n, e in self.table.items()
        }

    def neighbours(self) -> list[str]:
        return sorted(self.overlay.active)

    def next_deadline(self) -> int:
        deadline = min(self._next.values())
        if self._gossip_due is not None:
            deadline = min(deadline, self._gossip_due)
        for probe in self._probes.values():
            wait = self.settings.probe_timeout_ms if not probe.indirect else 0
            if wait:
                deadline = min(deadline, probe.sent_ms + self._stretch(wait))
        return deadline

    # -- events of this node ---------------------------------------------------------------

    def leave(self, now_ms: int) -> list[Command]:
        """Tell the neighbours this node leaves (the update floods from them)."""
        self.leaving = True
        update = Update(self.me, Status.LEFT)
        self._set(self.me.node_id, self.me, Status.LEFT, now_ms)
        out: list[Command] = []
        for contact in self.overlay.active.values():
            out.append(Send(contact, Gossip((update,))))
        for contact in self.overlay.active.values():
            out.append(Send(contact, Disconnect(self.me.node_id)))
        return out

    def learn(self, contact: Contact, now_ms: int) -> list[Command]:
        """A member record read from replicated state: a member this node may not have
        heard of yet (taken as alive at that incarnation, and as a passive candidate)."""
        if contact.node_id == self.me.node_id:
            return []
        entry = self.table.get(contact.node_id)
        if entry is not None and entry.contact.incarnation >= contact.incarnation:
            return []
        out = self._apply(Update(contact, Status.ALIVE), now_ms, source=None)
        return out + self._neighbour_changes()

    def tick(self, now_ms: int) -> list[Command]:
        out: list[Command] = []
        self._update_health(now_ms)
        s = self.settings
        nxt = self._next
        out += self._probe_timeouts(now_ms)
        if self._gossip_due is not None and now_ms >= self._gossip_due:
            out += self._flush_gossip()
        if now_ms >= nxt["probe"]:
            nxt["probe"] = now_ms + s.probe_interval_ms
            out += self._probe_round(now_ms)
            out += self._timers(now_ms)
        if now_ms >= nxt["join"]:
            nxt["join"] = now_ms + s.join_interval_ms
            out += self._join(now_ms)
        if now_ms >= nxt["shuffle"]:
            nxt["shuffle"] = now_ms + s.shuffle_interval_ms
            self.overlay.forget_pending()
            self._top_up_passive()
            out += self._sends(self.overlay.shuffle())
            out += self._sends(self.overlay.fill())
        if now_ms >= nxt["rotate"]:
            nxt["rotate"] = now_ms + s.rotate_interval_ms
            live = self._live_others()
            if live and len(self.overlay.active) >= s.overlay.active_size:
                out += self._sends(self.overlay.rotate(self.rng.choice(live)))
        if now_ms >= nxt["table"]:
            nxt["table"] = now_ms + s.table_sync_interval_ms
            if self.overlay.active:
                target = self.rng.choice(list(self.overlay.active.values()))
                out.append(Send(target, TableDigest(self.table_hash, len(self.table))))
        if now_ms >= nxt["reconnect"]:
            nxt["reconnect"] = now_ms + s.reconnect_interval_ms
            dead = [e.contact for e in self.table.values() if e.status is Status.DEAD]
            if dead:
                out.append(Send(self.rng.choice(dead), TableDigest(self.table_hash, len(self.table))))
        return out + self._neighbour_changes()

    # -- messages --------------------------------------------------------------------------

    def on_message(self, sender: str, msg: object, now_ms: int) -> list[Command]:
        """``sender``: the node id the transport vouches for (the connection's identity)."""
        out: list[Command] = []
        if isinstance(msg, Ping):
            out += self._absorb(msg.updates, now_ms, sender)
            out.append(Send(sender, Ack(msg.seq, self.me.incarnation, self._piggyback())))
        elif isinstance(msg, Ack):
            out += self._absorb(msg.updates, now_ms, sender)
            out += self._on_ack(msg, now_ms)
        elif isinstance(msg, PingReq):
            self._seq += 1
            self._relayed[self._seq] = (sender, msg.seq, now_ms)
            out.append(Send(msg.target, Ping(self._seq)))
        elif isinstance(msg, Gossip):
            out += self._absorb(msg.updates, now_ms, sender)
        elif isinstance(msg, TableDigest):
            if msg.digest != self.table_hash:
                out.append(Send(sender, TableSync(self._entries(), reply=False)))
        elif isinstance(msg, TableSync):
            out += self._absorb(msg.entries, now_ms, sender)
            if not msg.reply and self._differs(msg.entries):
                out.append(Send(sender, TableSync(self._entries(), reply=True)))
        elif isinstance(msg, Join):
            self._heard(msg.joiner, now_ms)
            out += self._sends(self.overlay.on_join(msg))
        elif isinstance(msg, ForwardJoin):
            self._heard_of(msg.joiner, now_ms)
            out += self._sends(self.overlay.on_forward_join(sender, msg))
        elif isinstance(msg, Neighbor):
            self._heard(msg.sender, now_ms)
            if self.leaving:
                out.append(Send(msg.sender, NeighborReply(self.me, accepted=False)))
            else:
                out += self._sends(self.overlay.on_neighbor(msg))
        elif isinstance(msg, NeighborReply):
            self._heard(msg.sender, now_ms)
            self.seeds = [s for s in self.seeds if s.router != msg.sender.router]
            if not self.leaving:
                out += self._sends(self.overlay.on_neighbor_reply(msg))
        elif isinstance(msg, Disconnect):
            _, sends = self.overlay.on_disconnect(msg)
            out += self._sends(sends)
        elif isinstance(msg, Shuffle):
            self._heard_of(msg.origin, now_ms)
            out += self._sends(self.overlay.on_shuffle(sender, msg))
        elif isinstance(msg, ShuffleReply):
            self.overlay.on_shuffle_reply(msg)
        else:
            self._count("rejected_membership_kind")
        return out + self._neighbour_changes()

    # -- probing ---------------------------------------------------------------------------

    def _probe_round(self, now_ms: int) -> list[Command]:
        out: list[Command] = []
        for node_id, contact in self.overlay.active.items():
            self._last_ack.setdefault(node_id, now_ms)
            if node_id in self._probing:
                continue
            self._seq += 1
            self._probes[self._seq] = _Probe(node_id, now_ms)
            self._probing[node_id] = self._seq
            out.append(Send(contact, Ping(self._seq, self._piggyback())))
        return out

    def _probe_timeouts(self, now_ms: int) -> list[Command]:
        out: list[Command] = []
        timeout = self._stretch(self.settings.probe_timeout_ms)
        for seq, probe in list(self._probes.items()):
            if probe.indirect:
                if now_ms - probe.sent_ms > self._stretch(self.settings.probe_interval_ms * 2):
                    self._drop_probe(seq)  # the next round pings it again
                continue
            if now_ms - probe.sent_ms < timeout:
                continue
            probe.indirect = True
            target = self.table.get(probe.target)
            helpers = [c for n, c in self.overlay.active.items() if n != probe.target]
            self._count("probes_indirect")
            if target is None:
                continue
            k = min(self.settings.indirect_probes, len(helpers))
            for helper in self.rng.sample(helpers, k):
                out.append(Send(helper, PingReq(seq, target.contact)))
            # The target gets a second direct ping too: one lost frame is the common case.
            out.append(Send(target.contact, Ping(seq)))
        for seq, (_, _, at) in list(self._relayed.items()):
            if now_ms - at > self._stretch(self.settings.probe_interval_ms * 2):
                del self._relayed[seq]
        return out

    def _on_ack(self, msg: Ack, now_ms: int) -> list[Command]:
        relayed = self._relayed.pop(msg.seq, None)
        if relayed is not None:
            requester, their_seq, _ = relayed
            return [Send(requester, Ack(their_seq, msg.incarnation))]
        probe = self._probes.get(msg.seq)
        if probe is None:
            return []
        self._drop_probe(msg.seq)
        self._last_ack[probe.target] = now_ms
        entry = self.table.get(probe.target)
        if entry is not None and entry.status is Status.SUSPECT:
            if msg.incarnation > entry.contact.incarnation:
                contact = replace(entry.contact, incarnation=msg.incarnation)
                return self._apply(Update(contact, Status.ALIVE), now_ms, source=None)
        return []

    def _drop_probe(self, seq: int) -> None:
        probe = self._probes.pop(seq, None)
        if probe is not None and self._probing.get(probe.target) == seq:
            del self._probing[probe.target]

    def _timers(self, now_ms: int) -> list[Command]:
        """Suspect silent neighbours, declare suspects dead, prune the long gone."""
        out: list[Command] = []
        silent_limit = self._stretch(self.settings.suspect_after_ms)
        for node_id in list(self.overlay.active):
            entry = self.table.get(node_id)
            last = self._last_ack.get(node_id, now_ms)
            if entry is not None and entry.status is Status.ALIVE and now_ms - last > silent_limit:
                self._count("suspicions_raised")
                out += self._apply(Update(entry.contact, Status.SUSPECT), now_ms, source=None)
        dead_limit = self._stretch(self.settings.dead_after_ms)
        for node_id in list(self._suspects):
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

    # -- dissemination ---------------------------------------------------------------------

    def _absorb(self, updates: Iterable[Update], now_ms: int, sender: str) -> list[Command]:
        out: list[Command] = []
        if sender in self.overlay.active:
            self._last_ack[sender] = now_ms  # any frame from a neighbour says it is there
        for update in updates:
            out += self._apply(update, now_ms, source=sender)
        return out

    def _apply(self, update: Update, now_ms: int, source: str | None) -> list[Command]:
        node_id = update.node_id
        if node_id == self.me.node_id:
            return self._about_me(update, now_ms)
        entry = self.table.get(node_id)
        if entry is not None and not supersedes(
            update.status, update.incarnation, entry.status, entry.contact.incarnation
        ):
            return []
        old = None if entry is None else entry.status
        self._set(node_id, update.contact, update.status, now_ms)
        out: list[Command] = [
            StatusChange(node_id, None if old is None else TO_STATUS[old], TO_STATUS[update.status], update.incarnation)
        ]
        if old is not None and old is update.status:
            out = []  # a new incarnation at the same status: not a change to report
        if update.status is Status.ALIVE:
            self._last_ack[node_id] = now_ms
            self.overlay.add_passive(update.contact)
        elif update.status in (Status.DEAD, Status.LEFT):
            was, sends = self.overlay.neighbour_failed(node_id)
            out += self._sends(sends)
        self._retransmit[node_id] = (update, self._retransmits())
        self._queue_gossip(update, now_ms, source)
        return out

    def _queue_gossip(self, update: Update, now_ms: int, source: str | None) -> None:
        for neighbour in self.overlay.active:
            if neighbour != source:
                self._gossip_out.setdefault(neighbour, {})[update.node_id] = update
        if self._gossip_out and self._gossip_due is None:
            self._gossip_due = now_ms + self.settings.gossip_interval_ms

    def _flush_gossip(self) -> list[Command]:
        out: list[Command] = []
        for neighbour, updates in self._gossip_out.items():
            contact = self.overlay.active.get(neighbour)
            if contact is None:
                continue  # no longer a neighbour: the table exchange with new ones covers it
            batch = list(updates.values())
            for i in range(0, len(batch), MAX_UPDATES):
                out.append(Send(contact, Gossip(tuple(batch[i : i + MAX_UPDATES]))))
        self._gossip_out.clear()
        self._gossip_due = None
        return out

    def _about_me(self, update: Update, now_ms: int) -> list[Command]:
        if update.status is Status.ALIVE or update.incarnation < self.me.incarnation:
            return []
        if self.leaving:
            return []
        # Said suspect, dead or gone at our incarnation or above: refute with a higher one.
        self.local_health = min(self.settings.max_local_health, self.local_health + 1)
        self._hold_health_until = now_ms + self.settings.suspect_after_ms
        self._count("refutations")
        self.me = replace(self.me, incarnation=update.incarnation + 1)
        self.overlay.me = self.me
        self._set(self.me.node_id, self.me, Status.ALIVE, now_ms)
        alive = Update(self.me, Status.ALIVE)
        self._retransmit[self.me.node_id] = (alive, self._retransmits())
        self._queue_gossip(alive, now_ms, None)
        return [Refuted(self.me.incarnation)]

    def _piggyback(self) -> tuple[Update, ...]:
        if not self._retransmit:
            return ()
        chosen = sorted(self._retransmit.items(), key=lambda kv: -kv[1][1])
        chosen = chosen[: self.settings.max_piggyback]
        for node_id, (update, left) in chosen:
            if left <= 1:
                del self._retransmit[node_id]
            else:
                self._retransmit[node_id] = (update, left - 1)
        return tuple(update for _, (update, _) in chosen)

    def _retransmits(self) -> int:
        return self.settings.retransmit_mult * max(1, math.ceil(math.log2(len(self.table) + 1)))

    def _entries(self) -> tuple[Update, ...]:
        return tuple(Update(e.contact, e.status) for e in self.table.values())

    def _differs(self, entries: Iterable[Update]) -> bool:
        theirs = {u.node_id: (u.status, u.incarnation) for u in entries}
        mine = {n: (e.status, e.contact.incarnation) for n, e in self.table.items()}
        return theirs != mine

    # -- overlay glue ----------------------------------------------------------------------

    def _join(self, now_ms: int) -> list[Command]:
        if self.overlay.active or self.leaving:
            return []
        contacts = list(self.seeds) + self._live_others()
        if not contacts:
            return []
        self._count("join_attempts")
        return self._sends(self.overlay.join(self.rng.choice(contacts)))

    def _top_up_passive(self) -> None:
        room = self.settings.overlay.passive_size - len(self.overlay.passive)
        live = [c for c in self._live_others() if c.node_id not in self.overlay.active]
        for contact in self.rng.sample(live, min(room, len(live))):
            self.overlay.add_passive(contact)

    def _live_others(self) -> list[Contact]:
        return [
            e.contact
            for n, e in self.table.items()
            if e.status is Status.ALIVE and n != self.me.node_id
        ]

    def _heard(self, contact: Contact, now_ms: int) -> None:
        """A message signed by its sender's connection: alive at that incarnation."""
        self._heard_of(contact, now_ms)

    def _heard_of(self, contact: Contact, now_ms: int) -> None:
        if contact.node_id == self.me.node_id or contact.node_id.startswith(SEED_PREFIX):
            return
        entry = self.table.get(contact.node_id)
        if entry is None or supersedes(
            Status.ALIVE, contact.incarnation, entry.status, entry.contact.incarnation
        ):
            self._pending_changes.extend(self._apply(Update(contact, Status.ALIVE), now_ms, None))

    def _sends(self, out: Out) -> list[Command]:
        return [Send(to, msg) for to, msg in out]

    def _neighbour_changes(self) -> list[Command]:
        """What the overlay's active view gained and lost since the last call (and the
        changes learned on the way)."""
        out: list[Command] = list(self._pending_changes)
        self._pending_changes.clear()
        now = frozenset(self.overlay.active)
        for node_id in sorted(self._active_seen - now):
            self._last_ack.pop(node_id, None)
            seq = self._probing.get(node_id)
            if seq is not None:
                self._drop_probe(seq)
            out.append(NeighbourDown(node_id))
        for node_id in sorted(now - self._active_seen):
            out.append(NeighbourUp(self.overlay.active[node_id]))
            # A new neighbour: compare tables at once (it may know members we do not).
            out.append(Send(self.overlay.active[node_id], TableDigest(self.table_hash, len(self.table))))
        self._active_seen = now
        return out

    # -- table bookkeeping -----------------------------------------------------------------

    def _set(self, node_id: str, contact: Contact, status: Status, now_ms: int) -> None:
        if status is Status.SUSPECT:
            self._suspects.add(node_id)
        else:
            self._suspects.discard(node_id)
        entry = self.table.get(node_id)
        if entry is not None:
            self.table_hash ^= _entry_hash(node_id, entry.status, entry.contact.incarnation)
        self.table[node_id] = _Entry(contact, status, now_ms)
        self.table_hash ^= _entry_hash(node_id, status, contact.incarnation)

    def _remove(self, node_id: str) -> None:
        entry = self.table.pop(node_id, None)
        self._suspects.discard(node_id)
        if entry is not None:
            self.table_hash ^= _entry_hash(node_id, entry.status, entry.contact.incarnation)
        self._retransmit.pop(node_id, None)
        self.overlay.passive.pop(node_id, None)
        self._count("members_pruned")

    def _stretch(self, ms: int) -> int:
        return ms * (1 + self.local_health)

    def _update_health(self, now_ms: int) -> None:
        if self._last_tick is not None:
            late = now_ms - self._last_tick > 2 * self.settings.probe_interval_ms
            if late:
                self.local_health = min(self.settings.max_local_health, self.local_health + 1)
            elif self.local_health and now_ms >= self._hold_health_until:
                self.local_health -= 1
                self._hold_health_until = now_ms + self.settings.probe_interval_ms
        self._last_tick = now_ms

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1
