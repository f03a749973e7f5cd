"""Members' clock offsets, and which clock of the cluster is off.

Invariant: no clock is read here; every reading and every ``now_ms`` is a parameter.
An offset is always "that node's clock minus this node's", in milliseconds.

Why this exists. A peer refuses an LWW stamp more than ``max_clock_drift_ms`` ahead of its
own clock (one bad clock must not win every key), and it should. But a node whose clock
runs ahead sees nothing wrong itself, since everything it receives is stamped in its
past, and its peers refused even its member record (stamped ahead too), so no node
said anything. Every hello, probe and ack carries its sender's clock reading; each
node estimates its peers' offsets from them, tells a neighbour whose clock is beyond the
limit of its own (a hello reply's ``offset_ms``), and lists every member with its
offset. Both ends of a disagreement log it at error level.

Estimating. A reading taken when a message was sent and compared with our clock when it
is handled is the sender's offset minus the message's delay (transit, queues, our own
backlog), and a delay is never negative. So of a peer's last :data:`SAMPLES` readings the
largest is the estimate, the least delayed one (a minimum-delay filter, as NTP's clock
filter is). On loopback and a LAN the error is milliseconds, against a limit of a minute.

A round trip does better (the overlay mode's probes: a ping out, the member's reading in
the ack): the member read its clock between our sending and our receiving, so its offset
lies between ``reading - received`` and ``reading - sent``; NTP takes the middle, off by at
most half the round trip, and, of its last readings, the one of the shortest round trip.
So does this: of a member's last :data:`SAMPLES` round trips the shortest gives its
estimate, and one-way readings count only for a member with no round trip.

Judging which clock is off. Two nodes whose clocks differ by more than the limit know
that much, each by itself, and not which of them is wrong. With more clocks the median
of those this node knows (its own, and its live members') is the reference, and a clock
more than half the limit from it is *off*. Half, because two clocks within half the
limit of the median are within the limit of each other (they accept each other's
stamps), and of two clocks more than the limit apart at least one is off. With two
nodes the median lies between them, and both are off: from two clocks nobody can tell.

What a node whose clock is off does with its own writes: nothing different. They are
accepted locally and durably, stamped by its clock, and published as always. A peer
whose clock is more than the limit behind refuses them now and fetches them again by
repair once its own clock is within the limit of their stamps, that is once real time
has caught up with them less the limit; until then the operator is told, on every node.
Not chosen: refusing local writes (an outage on one node's opinion of another's clock,
and in a cluster of two, possibly of the node that is right); accepting far-future
stamps at peers (the bad clock would win every key, and drag every clock, for as long as
it is ahead); clamping the node's stamps to its peers' time (an HLC stamp must exceed
every stamp the node issued before, which already lie ahead, and there is no trusted
reference to clamp to without a centre). The price of deferring: once applied, those
writes win over writes peers made to the same keys meanwhile, as their stamps are later.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

SAMPLES = 8
"""Readings kept per member: its estimate is the largest (least delayed) of these, so a
delayed burst is forgotten after this many readings and a corrected clock is seen."""


@dataclass(frozen=True, slots=True)
class ClockJudgement:
    """The clocks this node knows, each against the median of them."""

    median_ms: int
    """The median clock minus this node's."""
    skew_ms: dict[str, int]
    """Node id (this node's included) -> its clock minus the median."""
    off: frozenset[str]
    """Nodes whose clock is more than half the limit from the median."""


@dataclass(slots=True)
class ClockOffsets:
    """Per member: recent readings of its clock, and what it said of this node's clock."""

    max_drift_ms: int
    _samples: dict[str, deque[int]] = field(default_factory=dict)
    _round_trips: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)
    """Node id -> (round trip, offset at its middle) of its last round trips."""
    _told: dict[str, int] = field(default_factory=dict)

    def observe(self, node_id: str, clock_ms: int, now_ms: int) -> None:
        """``node_id``'s clock read ``clock_ms`` when it sent what arrives at ``now_ms``."""
        samples = self._samples.get(node_id)
        if samples is None:
            samples = self._samples[node_id] = deque(maxlen=SAMPLES)
        samples.append(clock_ms - now_ms)

    def observe_round_trip(
        self, node_id: str, clock_ms: int, sent_ms: int, received_ms: int
    ) -> None:
        """``node_id``'s clock read ``clock_ms`` between ``sent_ms`` and ``received_ms``
        of ours (a probe and its ack)."""
        if received_ms < sent_ms:
            return  # our clock stepped back meanwhile: the interval says nothing
        trips = self._round_trips.get(node_id)
        if trips is None:
            trips = self._round_trips[node_id] = deque(maxlen=SAMPLES)
        trips.append((received_ms - sent_ms, clock_ms - (sent_ms + received_ms) // 2))

    def offset(self, node_id: str) -> int | None:
        trips = self._round_trips.get(node_id)
        if trips:
            return min(trips)[1]
        samples = self._samples.get(node_id)
        return max(samples) if samples else None

    def forget(self, node_id: str) -> None:
        self._samples.pop(node_id, None)
        self._round_trips.pop(node_id, None)
        self._told.pop(node_id, None)

    def beyond(self, offset_ms: int) -> bool:
        return abs(offset_ms) > self.max_drift_ms

    def beyond_limit(self, node_ids: Iterable[str]) -> dict[str, int]:
        """The offsets of ``node_ids`` beyond the limit (this node's own estimate)."""
        out = {}
        for node_id in node_ids:
            offset = self.offset(node_id)
            if offset is not None and self.beyond(offset):
                out[node_id] = offset
        return out

    def told(self, node_id: str, offset_of_me: int | None) -> bool:
        """``node_id`` says this node's clock minus its own is ``offset_of_me`` (None: it
        finds nothing wrong). Kept only beyond the limit; True if it is."""
        if offset_of_me is None or not self.beyond(offset_of_me):
            self._told.pop(node_id, None)
            return False
        self._told[node_id] = offset_of_me
        return True

    def told_by(self) -> dict[str, int]:
        """Members that say this node's clock is beyond the limit of theirs, and by how
        much (this node's clock minus theirs)."""
        return dict(self._told)

    def judge(self, self_id: str, node_ids: Iterable[str]) -> ClockJudgement:
        """This node's clock and the estimated clocks of ``node_ids`` (the live members),
        each against their median."""
        clocks = {self_id: 0}
        for node_id in node_ids:
            offset = self.offset(node_id)
            if offset is not None and node_id != self_id:
                clocks[node_id] = offset
        ordered = sorted(clocks.values())
        middle = len(ordered) // 2
        median = (
            ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2
        )
        skew = {node_id: clock - median for node_id, clock in clocks.items()}
        half = self.max_drift_ms // 2
        return ClockJudgement(median, skew, frozenset(n for n, s in skew.items() if abs(s) > half))
