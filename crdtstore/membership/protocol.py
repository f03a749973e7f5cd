"""The membership protocol of one node, sans-I/O: (message | tick, now_ms) -> commands.

It composes three things:
- the overlay (:mod:`crdtstore.membership.overlay`, HyParView): who this node's few
  neighbours are;
- failure detection by probing the neighbours (SWIM's ping, and ping-req through ``k``
  other neighbours when a ping goes unanswered). The active view is symmetric, so every
  member is watched by each of its neighbours: an observer topology, at a cost per node
  set by the active view's size, not by N. Lifeguard's local health stretches every
  timeout while this node itself runs late or hears itself suspected;
- a member table (:mod:`crdtstore.membership.table`), complete (every member, as every
  node holds every member record): status and incarnation, with SWIM's precedence. A
  change is flooded to every neighbour (so it crosses the overlay in a few hops),
  retransmitted on ``lambda * log N`` probes and acks, and repaired by anti-entropy
  between neighbours.

Invariants: this node's own entry is alive at ``incarnation`` unless it left; an
update that claims it suspect or dead at its incarnation or above is refuted by raising
the incarnation above it. Nothing here reads a clock or a socket; randomness comes
from the ``random.Random`` given, and no decision depends on a set's iteration order,
so a simulation replays from its seed.

Design choices, each made after a simulated run showed the problem:
- The silence clock of a neighbour starts when it becomes a neighbour. It used to be
  the time the member was last learned alive, so a member that became a neighbour long
  after (a shuffle, a rotation) was suspected in the same tick it was first pinged.
- Besides its neighbours, each node probes one random member every
  ``random_probe_interval_ms`` (SWIM's probing, at a rate that keeps connections within
  bounds), and a member that stays silent to it as long as a neighbour would have to is
  suspected. Neighbours alone left a hole: after a partition, a member whose neighbours
  were all on its own side was never found dead on the other side.
- A ping to a member this node holds suspect carries that suspicion. The flood and the
  piggybacked copies of it may all have been sent while the member was paused; without
  this it learned it was suspected only when declared dead, and came back through a
  death instead of a refutation.
- An ack says whether the acker holds the prober as a neighbour; a one-sided link (a
  lost reply or disconnect) is then re-requested or dropped, so links stay symmetric
  and every member stays watched by its neighbours.
- Anti-entropy compares table digests, then per-bucket hashes, then ships only the
  entries of the buckets that differ: a difference that is only an update in flight
  costs a kilobyte or two at 1,000 members, not the whole table (60 kB) each way.
- A new link is synchronised by the side that asked for it only, one exchange at a
  time per node: a joiner takes the table from its first neighbour, and its next ones
  find it equal, instead of five whole tables arriving at once in both directions.
- Entries learned from a table exchange are flooded on only when they change what this
  node knew of a member (a refutation, a death); members it had never heard of are not
  news to its neighbours, who hold the same table. Otherwise every joiner re-flooded
  the whole table it had just been given.
- Only changes to known members (suspicions, deaths, leaves, refutations, restarts) are
  piggybacked after the flood; a member's first appearance (a join) is flooded once and
  left to anti-entropy if a copy is lost. No timer waits on a join, and piggybacking
  every join of a 1,000-node start kept every ping carrying joins for a minute after.

Clocks. A ping carries its sender's clock reading and an ack the probed member's, so a
node learns the clock of every member it probes or is probed by, neighbours or not (a
hello, the only reading before, is exchanged between neighbours). Each reading goes out
as a :class:`ClockReading` command: an ack that answers one of this node's probes brings
a round trip (the target read its clock between the probe's sending and the ack's
arrival: NTP's offset and error bound), a ping a one-way reading (taken before it
arrived). An intermediary of an indirect probe passes the target's reading on unchanged;
a reading is attributed to the probe's target only from the target itself or from a
member asked to relay it. The readings are fields appended to the older forms, which
older nodes refuse whole: a member not yet known to read them (it has sent none since
its current life began) is sent a ping or a relayed ack in both forms, the longer first;
an ack goes in the form of the ping it answers.

Admission (who may become a neighbour, and what a neighbour is trusted with). Without
CURVE keys a node cannot tell a stranger from a brand-new node at its first message,
and the full mesh does not try: it connects to whoever says hello, and takes from its
PUB only batches of that node's own origin. The overlay keeps that bar:
- a Join, Neighbor or NeighborReply is taken only from the node it names (the
  connection's identity, as the full mesh's hello is); a ForwardJoin only from a
  neighbour (a walk is passed on by neighbours; a stranger cannot push itself into the
  views of nodes it never spoke to); a Join or Neighbor of a life that the replicated
  record says is past (left, or a lower incarnation) is refused. Each refusal is counted
  (``admission_refused_*``) and changes nothing;
- anyone else is admitted, as a joiner must be (its record can only replicate over a
  link), but a neighbour is a *member link* only while it is connected at the addresses
  and key of its replicated member record (:meth:`MembershipProtocol.recorded`). The
  runtime accepts relayed batches of any origin only from member links; from any other
  neighbour, as the full mesh from any publisher, only batches of its own origin.
- a Disconnect is taken only in its sender's own name, a Shuffle only from a neighbour
  (walks are passed on by neighbours), a ShuffleReply only from a member and only as the
  one answer to this node's last shuffle, no larger than what it sent.

Trust of membership updates (a Gossip, the piggyback of a Ping or an Ack, a table
exchange's entries, an Ack's incarnation, the contact of a Join, Neighbor, ForwardJoin
or Shuffle). Every byte from the network is untrusted: one forged frame must not kill a
member nor take its incarnation where it cannot refute. SWIM (and memberlist, whose
``suspectNode`` and ``deadNode`` take any incarnation not below the one held, and adopt
it) leaves that to a cluster-wide key; without one, the rules are:
- updates are taken only from a neighbour or a member in the table (at any status), not
  from a stranger that merely connected (``updates_refused_stranger``); from a stranger,
  only what it says of this node (a seed tells a refused joiner its past life), which at
  worst makes this node refute;
- an update is believed only up to ``max_incarnation_jump`` above the highest
  incarnation this node knows of its member: the table's, or the member's replicated
  record (its own word, checked by origin), 0 for a member it knows neither way. Each
  update of a frame is judged against what was known before the frame, so one frame
  raises a member's incarnation by one bound at most; what is refused is counted
  (``updates_refused_incarnation``) and logged at most every ``log_interval_ms``;
- an accusation (suspect, dead, left) is believed only below the wire's bound
  (:data:`MAX_INCARNATION`), so that its refutation, one above, can always be written.
  Together: whatever a member is accused of and believed, it refutes above it, and its
  refutation (one above what was believed) is believed too. Only a lagging node (one
  that had not taken the accusation either) may refuse the refutation's jump, and it
  holds the member alive meanwhile; its record brings the base up.
- an indirect probe (PingReq) is run only for a live member or a neighbour, only on a
  live member this node knows, at the addresses it holds (not the request's), and at
  most ``max_relayed_probes`` at a time per requester; its ack is passed on only if it
  comes from that target (``acks_refused`` otherwise). An ack answers one of this
  node's probes only from its target or from a helper it asked.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from crdtstore.codec import MAX_SEQ
from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.health import LocalHealth
from crdtstore.membership.overlay import Out, Overlay, OverlaySettings
from crdtstore.membership.retransmit import RetransmitQueue
from crdtstore.membership.table import MemberTable, granularity_for, supersedes
from crdtstore.membership.wire import (
    MAX_UPDATES,
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

MAX_INCARNATION = MAX_SEQ
"""The wire's bound of an incarnation. An accusation is believed only below it, so the
refutation above it (one more) can always be written."""

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
    random_probe_interval_ms: int = 2_000
    """Besides its neighbours, a node probes one random member this often (see the
    module's notes: a member whose neighbours all share its side of a partition is
    otherwise never found dead on the other side)."""
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
    table_exchange_ms: int = 200
    """How long a table exchange with a new neighbour is given before the next new
    neighbour's starts (one at a time: the first one usually makes the rest equal)."""
    reconnect_interval_ms: int = 10_000
    """How often a node offers its table to one member it holds dead, so that both
    sides of a healed partition learn of each other (and the living refute)."""
    prune_after_ms: int = 24 * 3600 * 1000
    retransmit_mult: int = 1
    """Each update rides on ``retransmit_mult * ceil(log2(N + 1))`` probes and acks
    (SWIM's lambda). The flood already carries it once to every neighbour, and probes
    go only to neighbours, so these copies only repair losses: SWIM's 3 or 4 (it has no
    flood) made a 1,000-node start storm drain its queues for minutes."""
    max_piggyback: int = 8
    gossip_interval_ms: int = 20
    """Updates learned within this long leave together, one message per neighbour: a
    burst (a mass start, a partition) costs a few frames per neighbour, not one per
    update, for at most this much added latency per hop."""
    max_local_health: int = 8
    max_incarnation_jump: int = 1 << 16
    """How far above the highest incarnation this node knows of a member (its table
    entry or its replicated record; 0 if it knows neither) a frame may raise it. Legit
    lives climb by one per restart or refutation, and a member's record, once
    replicated, is the base; a forged update far above it is refused (see the module's
    notes on trust), so an incarnation space of 2**63 takes 2**47 frames to exhaust."""
    max_relayed_probes: int = 16
    """Indirect probes one member may have this node run for it at a time (a prober asks
    each helper once per target a round, for a handful of targets)."""
    log_interval_ms: int = 10_000
    """A refusal of the same kind is logged at most this often (all are counted)."""
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
class ClockReading:
    """``node_id``'s clock read ``clock_ms`` at some moment between ``sent_ms`` and
    ``received_ms`` of this node's clock (a round trip), or, with ``sent_ms`` None, at
    some moment before ``received_ms`` (one way)."""

    node_id: str
    clock_ms: int
    sent_ms: int | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class Refuted:
    """This node raised its incarnation (its record should follow)."""

    incarnation: int


Command = Send | NeighbourUp | NeighbourDown | Refuted | StatusChange | ClockReading


@dataclass(frozen=True, slots=True)
class _Relay:
    """A ping this node sent on ``requester``'s behalf (its ``seq``) to ``target``."""

    requester: str
    seq: int
    target: str
    sent_ms: int


@dataclass(slots=True)
class _Probe:
    target: str
    sent_ms: int
    indirect: bool = False
    helpers: tuple[str, ...] = ()


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
        self._retransmit = RetransmitQueue()
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}
        self._last_ack: dict[str, int] = {}
        """Neighbour -> when it was last heard from (set when it becomes a neighbour)."""
        self._relayed: dict[int, _Relay] = {}
        """Seq of a ping this node sent for another's indirect probe -> that probe."""
        self._relays_of: Counter[str] = Counter()
        """Requester -> its indirect probes this node is running (bounded)."""
        self._reads_clocks: set[str] = set()
        """Members that sent a clock reading in their current life: they read the
        longer forms of Ping and Ack, and are sent those alone."""
        self._watch: dict[str, int] = {}
        """Non-neighbours whose probe went unanswered -> since when: probed every round
        until they answer, suspected once silent as long as a neighbour would be."""
        self._seq = 0
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
        self._gossip_out: dict[str, dict[str, Update]] = {}
        self._gossip_due: int | None = None
        self._sync_queue: dict[str, None] = {}
        """New neighbours this node asked for, whose tables it has yet to compare."""
        self._sync_free_at = now_ms
        self._next_prune = now_ms + settings.prune_after_ms // 8
        self._next_timer = min(self._next.values())
        self._records: dict[str, tuple[Contact, bool]] = {}
        self._told_past_life: list[Command] = []  # replies to refused past lives, sent next
        """Member -> (contact, left) of its replicated record, newest life (see learn())."""

    # -- queries ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    @property
    def table_hash(self) -> int:
        return self.table.digest

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
        return len(self._retransmit) + sum(len(u) for u in self._gossip_out.values())

    def neighbours(self) -> list[str]:
        return sorted(self.overlay.active)

    def next_deadline(self) -> int:
        deadline = self._next_timer
        if self._gossip_due is not None:
            deadline = min(deadline, self._gossip_due)
        if self._sync_queue:
            deadline = min(deadline, self._sync_free_at)
        timeout = self._stretch(self.settings.probe_timeout_ms)
        for probe in self._probes.values():
            if not probe.indirect:
                deadline = min(deadline, probe.sent_ms + timeout)
        return deadline

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
        held = self._records.get(contact.node_id)
        if held is None or contact.incarnation >= held[0].incarnation:
            self._records[contact.node_id] = (contact, left)
        status = Status.LEFT if left else Status.ALIVE
        entry = self.table.get(contact.node_id)
        if entry is not None and not supersedes(
            status, contact.incarnation, entry.status, entry.contact.incarnation
        ):
            return []
        out = self._apply(Update(contact, status), now_ms, source=None)
        return out + self._neighbour_changes(now_ms)

    def tick(self, now_ms: int, io_stall_ms: int = 0) -> list[Command]:
        """Run the timers due at ``now_ms``. ``io_stall_ms``: how long this node's own I/O
        was held up since the previous tick (what its peers sent meanwhile is still on its
        way in), which this node's local health takes into account."""
        out: list[Command] = []
        if self._health.tick(now_ms, self.next_deadline(), io_stall_ms):
            self._count("io_stalls")
        s = self.settings
        nxt = self._next
        out += self._probe_timeouts(now_ms)
        if self._gossip_due is not None and now_ms >= self._gossip_due:
            out += self._flush_gossip()
        if self._sync_queue and now_ms >= self._sync_free_at:
            out += self._sync_next_neighbour(now_ms)
        if now_ms >= nxt["probe"]:
            nxt["probe"] = now_ms + s.probe_interval_ms
            out += self._probe_round(now_ms)
            out += self._timers(now_ms)
        if now_ms >= nxt["random_probe"]:
            nxt["random_probe"] = now_ms + s.random_probe_interval_ms
            out += self._random_probe(now_ms)
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
                out.append(Send(target, self._digest()))
        if now_ms >= nxt["reconnect"]:
            nxt["reconnect"] = now_ms + s.reconnect_interval_ms
            if self.table.dead:
                dead = self.table[self.rng.choice(list(self.table.dead))]
                out.append(Send(dead.contact, self._digest()))
        self._next_timer = min(nxt.values())
        return out + self._neighbour_changes(now_ms)

    # -- messages --------------------------------------------------------------------------

    def on_message(self, sender: str, msg: object, now_ms: int) -> list[Command]:
        """``sender``: the node id the transport vouches for (the connection's identity)."""
        out: list[Command] = []
        if isinstance(msg, Ping):
            out += self._absorb(msg.updates, now_ms, sender)
            neighbour = sender in self.overlay.active
            clock = None
            if msg.clock_ms is not None:
                self._reads_clock(sender)
                if sender in self.table:  # not a stranger's: what is kept per member stays bounded
                    out.append(ClockReading(sender, msg.clock_ms, None, now_ms))
                clock = now_ms  # answered in the form it came in
            ack = Ack(msg.seq, self.me.incarnation, self._piggyback(), neighbour, clock)
            out.append(Send(sender, ack))
        elif isinstance(msg, Ack):
            if msg.clock_ms is not None:
                self._reads_clock(sender)
            out += self._absorb(msg.updates, now_ms, sender)
            out += self._on_ack(sender, msg, now_ms)
        elif isinstance(msg, PingReq):
            out += self._relay_probe(sender, msg, now_ms)
        elif isinstance(msg, Gossip):
            out += self._absorb(msg.updates, now_ms, sender)
        elif isinstance(msg, TableDigest | TableBuckets | TableSync):
            out += self._on_table(sender, msg, now_ms)
        elif isinstance(msg, Join):
            if self._admissible(sender, msg.joiner, "join", now_ms):
                self._heard(msg.joiner, now_ms)
                out += self._sends(self.overlay.on_join(msg))
        elif isinstance(msg, ForwardJoin):
            if sender not in self.overlay.active:
                self._refuse("admission_refused_forward_join", now_ms, f"from {sender!r}")
            elif self._admissible(None, msg.joiner, "forward_join", now_ms):
                self._heard_of(msg.joiner, now_ms)
                out += self._sends(self.overlay.on_forward_join(sender, msg))
        elif isinstance(msg, Neighbor):
            if not self._admissible(sender, msg.sender, "neighbor", now_ms):
                pass
            elif self.leaving:
                self._heard(msg.sender, now_ms)
                out.append(Send(msg.sender, NeighborReply(self.me, accepted=False)))
            else:
                self._heard(msg.sender, now_ms)
                out += self._sends(self.overlay.on_neighbor(msg))
        elif isinstance(msg, NeighborReply):
            if msg.sender.node_id != sender:
                self._refuse("admission_refused_identity", now_ms, _named(sender, msg))
                return out + self._neighbour_changes(now_ms)
            if not self._credible(Update(msg.sender, Status.ALIVE), sender, now_ms):
                return out + self._neighbour_changes(now_ms)
            self._heard(msg.sender, now_ms)
            seeds = [s for s in self.seeds if s.router != msg.sender.router]
            self._seed_answered |= len(seeds) < len(self.seeds)
            self.seeds = seeds
            if not self.leaving:
                out += self._sends(self.overlay.on_neighbor_reply(msg))
                node_id = msg.sender.node_id
                if msg.accepted and node_id in self.overlay.active:
                    self._sync_queue[node_id] = None
                    # Due now at the earliest: a deadline long past would read as a
                    # tick that ran late (see crdtstore.membership.health).
                    self._sync_free_at = max(self._sync_free_at, now_ms)
        elif isinstance(msg, Disconnect):
            if msg.sender != sender:
                self._refuse("admission_refused_identity", now_ms, _named(sender, msg))
            else:
                _, sends = self.overlay.on_disconnect(msg)
                out += self._sends(sends)
        elif isinstance(msg, Shuffle):
            # A walk is passed on by neighbours only, as a forward-join is.
            if sender not in self.overlay.active:
                self._refuse("admission_refused_shuffle", now_ms, f"from {sender!r}")
            elif self._credible(Update(msg.origin, Status.ALIVE), sender, now_ms):
                self._heard_of(msg.origin, now_ms)
                out += self._sends(self.overlay.on_shuffle(sender, msg))
        elif isinstance(msg, ShuffleReply):
            if not self._known_sender(sender) or not self.overlay.on_shuffle_reply(msg):
                self._refuse("shuffle_replies_refused", now_ms, f"unasked, from {sender!r}")
        else:
            self._count("rejected_membership_kind")
        if self._told_past_life:
            out += self._told_past_life
            self._told_past_life = []
        return out + self._neighbour_changes(now_ms)

    # -- admission -------------------------------------------------------------------------

    def _admissible(self, sender: str | None, claimed: Contact, kind: str, now_ms: int) -> bool:
        """Whether ``claimed`` may enter the views through a message of ``sender`` (None:
        passed on by a neighbour, so no identity to hold it to). See the module's notes."""
        if sender is not None and claimed.node_id != sender:
            self._refuse(
                "admission_refused_identity",
                now_ms,
                f"{sender!r} said {kind} as {claimed.node_id!r}",
            )
            return False
        if not self._credible(Update(claimed, Status.ALIVE), sender or "a neighbour", now_ms):
            return False
        held = self._records.get(claimed.node_id)
        if held is not None:
            record, left = held
            if record.incarnation > claimed.incarnation or (
                left and record.incarnation >= claimed.incarnation
            ):
                self._refuse(
                    f"admission_refused_past_life_{kind}",
                    now_ms,
                    f"{claimed.node_id} at incarnation {claimed.incarnation}, its record at "
                    f"{record.incarnation}{' (left)' if left else ''}",
                )
                if sender is not None:
                    # Tell it which life the record holds, as over: a node restarted on a
                    # fresh directory under an old id (or after a leave) starts low and
                    # knows no better; it refutes above that life, and its next join
                    # passes. Unanswered, it was shut out for as long as the record stood.
                    past = Update(replace(claimed, incarnation=record.incarnation), Status.DEAD)
                    self._told_past_life.append(Send(claimed, Gossip((past,))))
                return False
        return True

    def recorded(self, contact: Contact) -> bool:
        """Whether ``contact`` is its member's replicated record (same addresses and key,
        a life not left): a link to it is a member link, trusted to relay any origin's
        batches. A newcomer, or a node that says a member's name from elsewhere, is not."""
        held = self._records.get(contact.node_id)
        if held is None or held[1]:
            return False
        record = held[0]
        return (record.router, record.pub, record.public_key) == (
            contact.router,
            contact.pub,
            contact.public_key,
        )

    # -- probing ---------------------------------------------------------------------------

    def _probe_round(self, now_ms: int) -> list[Command]:
        """Ping each neighbour not heard from for a probe interval (any frame from it, its
        own pings included, says it is there), and each watched member. A link's two ends
        then take turns instead of both pinging every interval: about a third of the
        frames, and no neighbour goes longer unheard than before."""
        out: list[Command] = []
        recent = now_ms - self.settings.probe_interval_ms
        for node_id, contact in self.overlay.active.items():
            if self._last_ack.get(node_id, recent) <= recent:
                out += self._probe(contact, now_ms)
        for node_id in list(self._watch):
            entry = self.table.get(node_id)
            if entry is not None and node_id not in self.overlay.active:
                out += self._probe(entry.contact, now_ms)
        return out

    def _random_probe(self, now_ms: int) -> list[Command]:
        contact = self._random_live()
        if contact is None or contact.node_id in self.overlay.active:
            return []
        return self._probe(contact, now_ms)

    def _probe(self, contact: Contact, now_ms: int) -> list[Command]:
        node_id = contact.node_id
        if node_id in self._probing:
            return []
        self._seq += 1
        self._probes[self._seq] = _Probe(node_id, now_ms)
        self._probing[node_id] = self._seq
        ping = Ping(self._seq, self._ping_updates(node_id), now_ms)
        return self._in_both_forms(node_id, contact, ping)

    def _in_both_forms(self, node_id: str, to: Contact | str, msg: Ping | Ack) -> list[Command]:
        """``msg`` (carrying a clock reading) to ``node_id``, and a copy without the
        reading unless ``node_id`` is known to read it (see the module's notes)."""
        out: list[Command] = [Send(to, msg)]
        if msg.clock_ms is not None and node_id not in self._reads_clocks:
            out.append(Send(to, replace(msg, clock_ms=None)))
        return out

    def _reads_clock(self, sender: str) -> None:
        if sender in self.table:
            self._reads_clocks.add(sender)

    def _ping_updates(self, target: str) -> tuple[Update, ...]:
        """The piggyback of a ping; a suspect target is told first that it is suspected,
        so that it refutes at the first ping it hears (see the module's notes)."""
        entry = self.table.get(target)
        if entry is not None and entry.status is Status.SUSPECT:
            return (entry.update, *self._piggyback(self.settings.max_piggyback - 1))
        return self._piggyback()

    def _probe_timeouts(self, now_ms: int) -> list[Command]:
        out: list[Command] = []
        timeout = self._stretch(self.settings.probe_timeout_ms)
        give_up = self._stretch(self.settings.probe_interval_ms * 2)
        for seq, probe in list(self._probes.items()):
            if probe.indirect:
                if now_ms - probe.sent_ms > give_up:
                    self._drop_probe(seq)  # the next round pings it again
                    if probe.target not in self.overlay.active:
                        self._watch.setdefault(probe.target, probe.sent_ms)
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
            chosen = self.rng.sample(helpers, k)
            probe.helpers = tuple(c.node_id for c in chosen)
            for helper in chosen:
                out.append(Send(helper, PingReq(seq, target.contact)))
            # The target gets a second direct ping too: one lost frame is the common case.
            suspicion = (target.update,) if target.status is Status.SUSPECT else ()
            ping = Ping(seq, suspicion, now_ms)
            out += self._in_both_forms(probe.target, target.contact, ping)
        for seq, relay in list(self._relayed.items()):
            if now_ms - relay.sent_ms > give_up:
                self._end_relay(seq)
        return out

    def _on_ack(self, sender: str, msg: Ack, now_ms: int) -> list[Command]:
        relay = self._relayed.get(msg.seq)
        if relay is not None:
            if sender != relay.target:
                # Only the target answers a ping sent to it: anyone else's ack passed on
                # would keep a dead member alive at the requester.
                self._refuse("acks_refused", now_ms, f"{sender!r} answered for {relay.target!r}")
                return []
            self._end_relay(msg.seq)
            # The target's own reading, passed on: the requester times the round trip.
            ack = Ack(relay.seq, msg.incarnation, clock_ms=msg.clock_ms)
            return self._in_both_forms(relay.requester, relay.requester, ack)
        probe = self._probes.get(msg.seq)
        if probe is None:
            return []
        target = probe.target
        if sender != target and sender not in probe.helpers:
            # Only the target, or a member asked to relay, answers for it (its clock too).
            self._refuse("acks_refused", now_ms, f"{sender!r} answered for {target!r}")
            return []
        self._drop_probe(msg.seq)
        self._watch.pop(target, None)
        out: list[Command] = []
        if msg.clock_ms is not None:
            out.append(ClockReading(target, msg.clock_ms, probe.sent_ms, now_ms))
        if target in self.overlay.active:
            self._last_ack[target] = now_ms
            if not msg.neighbour and target not in self.overlay.pending:
                # A one-sided link: ask to be taken back (a refusal drops it here).
                self._count("one_sided_links")
                out += self._sends(self.overlay.confirm(self.overlay.active[target]))
        entry = self.table.get(target)
        suspected = entry is not None and entry.status is Status.SUSPECT
        if entry is not None and suspected and msg.incarnation > entry.contact.incarnation:
            alive = Update(replace(entry.contact, incarnation=msg.incarnation), Status.ALIVE)
            if self._credible(alive, sender, now_ms):
                out += self._apply(alive, now_ms, source=None)
        return out

    def _relay_probe(self, sender: str, msg: PingReq, now_ms: int) -> list[Command]:
        """Ping ``msg.target`` for ``sender``'s indirect probe: only for a member or
        neighbour, only a live member this node knows, at the addresses this node holds
        for it (not those of the request), and a bounded number at a time per requester,
        so no one can turn this node into a prober of arbitrary addresses."""
        requester = self.table.get(sender)
        if sender not in self.overlay.active and (
            requester is None or requester.status not in (Status.ALIVE, Status.SUSPECT)
        ):
            self._refuse("ping_reqs_refused", now_ms, f"from {sender!r}, not a live member")
            return []
        target = self.table.get(msg.target.node_id)
        if (
            target is None
            or target.status not in (Status.ALIVE, Status.SUSPECT)
            or msg.target.node_id in (self.me.node_id, sender)
        ):
            self._refuse(
                "ping_reqs_refused", now_ms, f"{sender!r} asked for {msg.target.node_id!r}"
            )
            return []
        if self._relays_of[sender] >= self.settings.max_relayed_probes:
            self._refuse("ping_reqs_refused", now_ms, f"{sender!r} has too many in flight")
            return []
        self._seq += 1
        self._relayed[self._seq] = _Relay(sender, msg.seq, target.contact.node_id, now_ms)
        self._relays_of[sender] += 1
        node_id = target.contact.node_id
        return self._in_both_forms(node_id, target.contact, Ping(self._seq, (), now_ms))

    def _end_relay(self, seq: int) -> None:
        relay = self._relayed.pop(seq, None)
        if relay is not None:
            self._relays_of[relay.requester] -= 1
            if self._relays_of[relay.requester] <= 0:
                del self._relays_of[relay.requester]

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
            last = self._last_ack.setdefault(node_id, now_ms)
            if entry is not None and entry.status is Status.ALIVE and now_ms - last > silent_limit:
                self._count("suspicions_raised")
                out += self._apply(Update(entry.contact, Status.SUSPECT), now_ms, source=None)
        for node_id, since in list(self._watch.items()):
            entry = self.table.get(node_id)
            if entry is None or entry.status is not Status.ALIVE or node_id in self.overlay.active:
                del self._watch[node_id]  # settled, or a neighbour (watched as one)
            elif now_ms - since > silent_limit:
                del self._watch[node_id]
                self._count("suspicions_raised")
                out += self._apply(Update(entry.contact, Status.SUSPECT), now_ms, source=None)
        dead_limit = self._stretch(self.settings.dead_after_ms)
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

    # -- dissemination ---------------------------------------------------------------------

    def _absorb(
        self, updates: Iterable[Update], now_ms: int, sender: str, news_only: bool = False
    ) -> list[Command]:
        out: list[Command] = []
        if sender in self.overlay.active:
            self._last_ack[sender] = now_ms  # any frame from a neighbour says it is there
        updates = tuple(updates)
        if updates and not self._known_sender(sender):
            # A stranger is heard only about this node (a seed it never met tells a
            # refused joiner its past life): at worst this node refutes, within the bound.
            mine = tuple(u for u in updates if u.node_id == self.me.node_id)
            if len(mine) < len(updates):
                self._refuse(
                    "updates_refused_stranger",
                    now_ms,
                    f"{len(updates) - len(mine)} from {sender!r}, not a member known here",
                )
            updates = mine
        # Judged against what was known before the frame: one frame climbs one bound.
        known = {u.node_id: self._known_incarnation(u.node_id) for u in updates}
        for update in updates:
            if self._credible(update, sender, now_ms, known[update.node_id]):
                out += self._apply(update, now_ms, source=sender, news_only=news_only)
        return out

    def _known_sender(self, sender: str) -> bool:
        """A neighbour or a member in the table (at any status: the two sides of a healed
        partition hold each other dead, and exchange tables to learn better)."""
        return sender in self.overlay.active or sender in self.table

    def _known_incarnation(self, node_id: str) -> int:
        if node_id == self.me.node_id:
            return self.me.incarnation
        entry = self.table.get(node_id)
        held = self._records.get(node_id)
        return max(
            0 if entry is None else entry.contact.incarnation,
            0 if held is None else held[0].incarnation,
        )

    def _credible(self, update: Update, sender: str, now_ms: int, known: int | None = None) -> bool:
        """The incarnation rule (see the module's notes on trust): at most
        ``max_incarnation_jump`` above what is known, and an accusation below the wire's
        bound, so that its refutation can be written."""
        if known is None:
            known = self._known_incarnation(update.node_id)
        incarnation, jump = update.incarnation, self.settings.max_incarnation_jump
        if incarnation <= known + jump and (
            update.status is Status.ALIVE or incarnation < MAX_INCARNATION
        ):
            return True
        self._refuse(
            "updates_refused_incarnation",
            now_ms,
            f"{sender!r} says {update.node_id!r} is {update.status.name.lower()} at "
            f"incarnation {incarnation}; {known} known here, {jump} above it believed",
        )
        return False

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
            self._reads_clocks.discard(node_id)  # a new life, perhaps of an older build
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
                self._queue_gossip(update, now_ms, source)
            return out
        self._retransmit.put(update, self._retransmits())
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
        self._health.raise_level(now_ms)
        self._count("refutations")
        self.me = replace(self.me, incarnation=update.incarnation + 1)
        self.overlay.me = self.me
        alive = Update(self.me, Status.ALIVE)
        self.table.set(alive, now_ms)
        self._retransmit.put(alive, self._retransmits())
        self._queue_gossip(alive, now_ms, None)
        return [Refuted(self.me.incarnation)]

    def _piggyback(self, k: int | None = None) -> tuple[Update, ...]:
        return self._retransmit.take(self.settings.max_piggyback if k is None else k)

    def _retransmits(self) -> int:
        return self.settings.retransmit_mult * max(1, math.ceil(math.log2(len(self.table) + 1)))

    # -- anti-entropy ----------------------------------------------------------------------

    def _digest(self) -> TableDigest:
        return TableDigest(self.table.digest, len(self.table))

    def _on_table(
        self, sender: str, msg: TableDigest | TableBuckets | TableSync, now_ms: int
    ) -> list[Command]:
        """Digest -> bucket hashes -> entries of the differing buckets -> what differs
        back: each step only when the previous one found a difference."""
        if isinstance(msg, TableDigest):
            if msg.digest == self.table.digest:
                return []
            granularity = granularity_for(max(msg.count, len(self.table)))
            return [Send(sender, TableBuckets(self.table.folded(granularity)))]
        if isinstance(msg, TableBuckets):
            granularity = len(msg.hashes)
            buckets = self.table.differing(granularity, msg.hashes)
            if not buckets:
                return []
            entries = self.table.in_buckets(granularity, buckets)
            return [Send(sender, TableSync(entries, False, granularity, buckets))]
        self._count("table_entries_received")
        out = self._absorb(msg.entries, now_ms, sender, news_only=True)
        if msg.reply:
            return out
        theirs = {u.node_id: (u.status, u.incarnation) for u in msg.entries}
        mine = self.table.in_buckets(msg.granularity, msg.buckets)
        differ = tuple(u for u in mine if theirs.get(u.node_id) != (u.status, u.incarnation))
        if differ:
            out.append(Send(sender, TableSync(differ, True, msg.granularity, msg.buckets)))
        return out

    def _sync_next_neighbour(self, now_ms: int) -> list[Command]:
        # Sent even if the link is gone by now: a joiner evicted by its contact at once
        # (a full view) otherwise never got the table, and stayed with the few members
        # it met in an overlay component of its own.
        node_id = next(iter(self._sync_queue))
        del self._sync_queue[node_id]
        entry = self.table.get(node_id)
        if entry is None:
            return []
        self._sync_free_at = now_ms + self.settings.table_exchange_ms
        return [Send(entry.contact, self._digest())]

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
            self._last_ack.pop(node_id, None)
            seq = self._probing.get(node_id)
            if seq is not None:
                self._drop_probe(seq)
            out.append(NeighbourDown(node_id))
        for node_id in sorted(n for n in active if n not in seen):
            self._last_ack[node_id] = now_ms  # its silence is counted from now
            out.append(NeighbourUp(active[node_id]))
        self._active_seen = dict.fromkeys(active)
        return out

    # -- table bookkeeping -----------------------------------------------------------------

    def _remove(self, node_id: str) -> None:
        self.table.remove(node_id)
        self._reads_clocks.discard(node_id)
        self._records.pop(node_id, None)
        self._retransmit.discard(node_id)
        self.overlay.passive.pop(node_id, None)
        self._count("members_pruned")

    def _stretch(self, ms: int) -> int:
        return self._health.stretch(ms)

    @property
    def local_health(self) -> int:
        """Lifeguard's score (:mod:`crdtstore.membership.health`): this node's own
        slowness, which stretches every timeout it judges others by."""
        return self._health.level

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    # -- for the runtime (appended; see crdtstore.overlay_liveness) -------------------------

    def member(self, node_id: str) -> tuple[MemberStatus, int, int] | None:
        """(status, incarnation, since_ms) of one member, or None."""
        entry = self.table.get(node_id)
        if entry is None:
            return None
        return TO_STATUS[entry.status], entry.contact.incarnation, entry.since_ms

    def raise_incarnation(self, at_least: int, now_ms: int) -> list[Command]:
        """An earlier life of this node wrote a higher incarnation: live above it."""
        if at_least <= self.me.incarnation:
            return []
        self.me = replace(self.me, incarnation=at_least)
        self.overlay.me = self.me
        alive = Update(self.me, Status.ALIVE)
        self.table.set(alive, now_ms)
        self._retransmit.put(alive, self._retransmits())
        self._queue_gossip(alive, now_ms, None)
        return []
