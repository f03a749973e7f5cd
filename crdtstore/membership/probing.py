"""Failure detection by probing (SWIM's ping and ping-req), for one node.

Each node pings its neighbours (the overlay's active view, which is symmetric, so every
member is watched by each of its neighbours: an observer topology at a cost per node set
by the active view's size, not by N), plus one random member now and then. A ping
unanswered for ``probe_timeout_ms`` goes out again directly and through
``indirect_probes`` other neighbours (PingReq); a member silent as long as
``suspect_after_ms`` is suspected. Lifeguard's local health
(:mod:`crdtstore.membership.health`) stretches every timeout here.

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

Clocks. A ping carries its sender's clock reading and an ack the probed member's, so a
node learns the clock of every member it probes or is probed by, neighbours or not (a
hello, the only reading before, is exchanged between neighbours). Each reading goes out
as a :class:`~crdtstore.membership.commands.ClockReading` command: an ack that answers
one of this node's probes brings a round trip (the target read its clock between the
probe's sending and the ack's arrival: NTP's offset and error bound), a ping a one-way
reading (taken before it arrived). An intermediary of an indirect probe passes the
target's reading on unchanged; a reading is attributed to the probe's target only from
the target itself or from a member asked to relay it. The readings are fields appended
to the older forms, which older nodes refuse whole: a member not yet known to read them
(it has sent none since its current life began) is sent a ping or a relayed ack in both
forms, the longer first; an ack goes in the form of the ping it answers.

Invariants: ``probing`` maps each member with a probe in flight to that probe's seq in
``probes`` (one probe per member at a time); ``relays_of`` counts the relayed probes in
``relayed`` per requester, each at most ``max_relayed_probes``; a relayed probe or a
probe given up is dropped after two (stretched) probe intervals, so both stay bounded.
Which acks and ping-reqs are believed is set out in :mod:`crdtstore.membership.admission`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from crdtstore.membership.admission import Admission
from crdtstore.membership.commands import ClockReading, Command, Send
from crdtstore.membership.dissemination import Dissemination
from crdtstore.membership.health import LocalHealth
from crdtstore.membership.overlay import Overlay
from crdtstore.membership.protocol_settings import ProtocolSettings
from crdtstore.membership.table import MemberTable
from crdtstore.membership.wire import Ack, Contact, Ping, PingReq, Status, Update
from crdtstore.sync.rejections import Rejections

Apply = Callable[[Update, int], list[Command]]
"""Take an update this node decided on itself (the protocol's ``_apply``, source None)."""


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


class Prober:
    def __init__(
        self,
        *,
        overlay: Overlay,
        table: MemberTable,
        settings: ProtocolSettings,
        rng: random.Random,
        health: LocalHealth,
        stats: Counter[str],
        refuse: Rejections,
        admission: Admission,
        dissemination: Dissemination,
        apply: Apply,
    ) -> None:
        self.overlay = overlay
        self.table = table
        self.settings = settings
        self.rng = rng
        self._health = health
        self._stats = stats
        self._refuse = refuse
        self._admission = admission
        self._dissemination = dissemination
        self._apply = apply
        self.probes: dict[int, _Probe] = {}
        self.probing: dict[str, int] = {}
        self.last_ack: dict[str, int] = {}
        """Neighbour -> when it was last heard from (set when it becomes a neighbour)."""
        self.relayed: dict[int, _Relay] = {}
        """Seq of a ping this node sent for another's indirect probe -> that probe."""
        self.relays_of: Counter[str] = Counter()
        """Requester -> its indirect probes this node is running (bounded)."""
        self.reads_clocks: set[str] = set()
        """Members that sent a clock reading in their current life: they read the
        longer forms of Ping and Ack, and are sent those alone."""
        self.watch: dict[str, int] = {}
        """Non-neighbours whose probe went unanswered -> since when: probed every round
        until they answer, suspected once silent as long as a neighbour would be."""
        self._seq = 0

    def next_timeout(self, deadline: int) -> int:
        """``deadline``, or the first direct probe's timeout if sooner."""
        timeout = self._health.stretch(self.settings.probe_timeout_ms)
        for probe in self.probes.values():
            if not probe.indirect:
                deadline = min(deadline, probe.sent_ms + timeout)
        return deadline

    def round(self, now_ms: int) -> list[Command]:
        """Ping each neighbour not heard from for a probe interval (any frame from it, its
        own pings included, says it is there), and each watched member. A link's two ends
        then take turns instead of both pinging every interval: about a third of the
        frames, and no neighbour goes longer unheard than before."""
        out: list[Command] = []
        recent = now_ms - self.settings.probe_interval_ms
        for node_id, contact in self.overlay.active.items():
            if self.last_ack.get(node_id, recent) <= recent:
                out += self._probe(contact, now_ms)
        for node_id in list(self.watch):
            entry = self.table.get(node_id)
            if entry is not None and node_id not in self.overlay.active:
                out += self._probe(entry.contact, now_ms)
        return out

    def random_probe(self, contact: Contact | None, now_ms: int) -> list[Command]:
        """Probe ``contact`` (a random live member), unless it is a neighbour."""
        if contact is None or contact.node_id in self.overlay.active:
            return []
        return self._probe(contact, now_ms)

    def _probe(self, contact: Contact, now_ms: int) -> list[Command]:
        node_id = contact.node_id
        if node_id in self.probing:
            return []
        self._seq += 1
        self.probes[self._seq] = _Probe(node_id, now_ms)
        self.probing[node_id] = self._seq
        ping = Ping(self._seq, self._ping_updates(node_id), now_ms)
        return self.in_both_forms(node_id, contact, ping)

    def in_both_forms(self, node_id: str, to: Contact | str, msg: Ping | Ack) -> list[Command]:
        """``msg`` (carrying a clock reading) to ``node_id``, and a copy without the
        reading unless ``node_id`` is known to read it (see the module's notes)."""
        out: list[Command] = [Send(to, msg)]
        if msg.clock_ms is not None and node_id not in self.reads_clocks:
            out.append(Send(to, replace(msg, clock_ms=None)))
        return out

    def reads_clock(self, sender: str) -> None:
        if sender in self.table:
            self.reads_clocks.add(sender)

    def _ping_updates(self, target: str) -> tuple[Update, ...]:
        """The piggyback of a ping; a suspect target is told first that it is suspected,
        so that it refutes at the first ping it hears (see the module's notes)."""
        entry = self.table.get(target)
        if entry is not None and entry.status is Status.SUSPECT:
            rest = self._dissemination.piggyback(self.settings.max_piggyback - 1)
            return (entry.update, *rest)
        return self._dissemination.piggyback()

    def on_ping(self, sender: str, msg: Ping, incarnation: int, now_ms: int) -> list[Command]:
        """Answer ``msg`` (its updates already taken) with an ack at ``incarnation``."""
        out: list[Command] = []
        neighbour = sender in self.overlay.active
        clock = None
        if msg.clock_ms is not None:
            self.reads_clock(sender)
            if sender in self.table:  # not a stranger's: what is kept per member stays bounded
                out.append(ClockReading(sender, msg.clock_ms, None, now_ms))
            clock = now_ms  # answered in the form it came in
        ack = Ack(msg.seq, incarnation, self._dissemination.piggyback(), neighbour, clock)
        out.append(Send(sender, ack))
        return out

    def timeouts(self, now_ms: int) -> list[Command]:
        out: list[Command] = []
        timeout = self._health.stretch(self.settings.probe_timeout_ms)
        give_up = self._health.stretch(self.settings.probe_interval_ms * 2)
        for seq, probe in list(self.probes.items()):
            if probe.indirect:
                if now_ms - probe.sent_ms > give_up:
                    self.drop(seq)  # the next round pings it again
                    if probe.target not in self.overlay.active:
                        self.watch.setdefault(probe.target, probe.sent_ms)
                continue
            if now_ms - probe.sent_ms < timeout:
                continue
            probe.indirect = True
            target = self.table.get(probe.target)
            helpers = [c for n, c in self.overlay.active.items() if n != probe.target]
            self._stats["probes_indirect"] += 1
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
            out += self.in_both_forms(probe.target, target.contact, ping)
        for seq, relay in list(self.relayed.items()):
            if now_ms - relay.sent_ms > give_up:
                self._end_relay(seq)
        return out

    def on_ack(self, sender: str, msg: Ack, now_ms: int) -> list[Command]:
        relay = self.relayed.get(msg.seq)
        if relay is not None:
            if sender != relay.target:
                # Only the target answers a ping sent to it: anyone else's ack passed on
                # would keep a dead member alive at the requester.
                self._refuse("acks_refused", now_ms, f"{sender!r} answered for {relay.target!r}")
                return []
            self._end_relay(msg.seq)
            # The target's own reading, passed on: the requester times the round trip.
            ack = Ack(relay.seq, msg.incarnation, clock_ms=msg.clock_ms)
            return self.in_both_forms(relay.requester, relay.requester, ack)
        probe = self.probes.get(msg.seq)
        if probe is None:
            return []
        target = probe.target
        if sender != target and sender not in probe.helpers:
            # Only the target, or a member asked to relay, answers for it (its clock too).
            self._refuse("acks_refused", now_ms, f"{sender!r} answered for {target!r}")
            return []
        self.drop(msg.seq)
        self.watch.pop(target, None)
        out: list[Command] = []
        if msg.clock_ms is not None:
            out.append(ClockReading(target, msg.clock_ms, probe.sent_ms, now_ms))
        if target in self.overlay.active:
            self.last_ack[target] = now_ms
            if not msg.neighbour and target not in self.overlay.pending:
                # A one-sided link: ask to be taken back (a refusal drops it here).
                self._stats["one_sided_links"] += 1
                confirm = self.overlay.confirm(self.overlay.active[target])
                out += [Send(to, m) for to, m in confirm]
        entry = self.table.get(target)
        suspected = entry is not None and entry.status is Status.SUSPECT
        if entry is not None and suspected and msg.incarnation > entry.contact.incarnation:
            alive = Update(replace(entry.contact, incarnation=msg.incarnation), Status.ALIVE)
            if self._admission.credible(alive, sender, now_ms):
                out += self._apply(alive, now_ms)
        return out

    def relay(self, sender: str, msg: PingReq, now_ms: int) -> list[Command]:
        """Ping ``msg.target`` for ``sender``'s indirect probe: only for a live member or
        neighbour, only a member this node knows, at the addresses this node holds
        for it (not those of the request), and a bounded number at a time per requester,
        so no one can turn this node into a prober of arbitrary addresses."""
        refuse = self._admission.refuse_request
        if not self._admission.live_member(sender):
            refuse("ping_reqs_refused", sender, now_ms, f"from {sender!r}, not a live member")
            return []
        # A target held dead is still pinged: the requester may know of a newer life.
        target = self.table.get(msg.target.node_id)
        if target is None or msg.target.node_id in (self.overlay.me.node_id, sender):
            refuse("ping_reqs_refused", sender, now_ms, f"for {msg.target.node_id!r}")
            return []
        if self.relays_of[sender] >= self.settings.max_relayed_probes:
            self._refuse("ping_reqs_refused", now_ms, f"{sender!r} has too many in flight")
            return []
        self._seq += 1
        self.relayed[self._seq] = _Relay(sender, msg.seq, target.contact.node_id, now_ms)
        self.relays_of[sender] += 1
        node_id = target.contact.node_id
        return self.in_both_forms(node_id, target.contact, Ping(self._seq, (), now_ms))

    def _end_relay(self, seq: int) -> None:
        relay = self.relayed.pop(seq, None)
        if relay is not None:
            self.relays_of[relay.requester] -= 1
            if self.relays_of[relay.requester] <= 0:
                del self.relays_of[relay.requester]

    def drop(self, seq: int) -> None:
        probe = self.probes.pop(seq, None)
        if probe is not None and self.probing.get(probe.target) == seq:
            del self.probing[probe.target]

    def suspicions(self, now_ms: int) -> list[Command]:
        """Suspect the neighbours and watched members silent too long."""
        out: list[Command] = []
        silent_limit = self._health.stretch(self.settings.suspect_after_ms)
        for node_id in list(self.overlay.active):
            entry = self.table.get(node_id)
            last = self.last_ack.setdefault(node_id, now_ms)
            if entry is not None and entry.status is Status.ALIVE and now_ms - last > silent_limit:
                self._stats["suspicions_raised"] += 1
                out += self._apply(Update(entry.contact, Status.SUSPECT), now_ms)
        for node_id, since in list(self.watch.items()):
            entry = self.table.get(node_id)
            if entry is None or entry.status is not Status.ALIVE or node_id in self.overlay.active:
                del self.watch[node_id]  # settled, or a neighbour (watched as one)
            elif now_ms - since > silent_limit:
                del self.watch[node_id]
                self._stats["suspicions_raised"] += 1
                out += self._apply(Update(entry.contact, Status.SUSPECT), now_ms)
        return out

    def neighbour_down(self, node_id: str) -> None:
        self.last_ack.pop(node_id, None)
        seq = self.probing.get(node_id)
        if seq is not None:
            self.drop(seq)
