"""Members' clocks as this node sees them, judged against ``max_clock_drift_ms``.

Hellos, probes and their acks carry the sender's clock reading; the offsets are kept in
:class:`~crdtstore.membership.clocks.ClockOffsets`. At each membership tick the watch
judges the live members' clocks, logs at error level each member whose clock is beyond the
limit of this node's (by this node's estimate, or by what the member says of ours), once
per log interval per member, and refreshes what ``members()`` and the status show.

Invariants: the offsets are touched only under ``_offsets_lock`` (the overlay's thread
observes probes, the replicator's thread hellos and ticks); the view shown to other
threads is replaced whole, under ``_view_lock``, never changed in place.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from crdtstore.membership.clocks import ClockJudgement, ClockOffsets
from crdtstore.membership.protocol import ClockReading
from crdtstore.membership.view import Member

log = logging.getLogger("crdtstore.replicator")

ClockView = tuple[ClockJudgement, dict[str, int], dict[str, int]]
"""The judgement, each member's offset from this node, and what members told of ours."""


class ClockWatch:
    """One node's view of its members' clocks. The offsets are thread-safe; ``check``
    runs on the replicator's thread."""

    def __init__(
        self, node_id: str, max_drift_ms: int, log_interval_ms: int, stats: Counter[str]
    ) -> None:
        self.node_id = node_id
        self.offsets = ClockOffsets(max_drift_ms)
        self._stats = stats
        self._log_interval_ms = log_interval_ms
        self._offsets_lock = threading.Lock()
        self._view_lock = threading.Lock()
        self._logged: dict[str, int] = {}
        self._disagree: set[str] = set()
        self._view: ClockView = (ClockJudgement(0, {}, frozenset()), {}, {})

    def probed(self, reading: ClockReading) -> None:
        """On the overlay's thread: a member's clock reading from a probe or an ack (any
        member probed or probing, not only neighbours, whose hellos bring theirs)."""
        with self._offsets_lock:
            if reading.sent_ms is None:
                self.offsets.observe(reading.node_id, reading.clock_ms, reading.received_ms)
            else:
                self.offsets.observe_round_trip(
                    reading.node_id, reading.clock_ms, reading.sent_ms, reading.received_ms
                )

    def heard(self, node_id: str, clock_ms: int, now: int) -> None:
        """``node_id``'s clock read ``clock_ms`` in a hello received at ``now``."""
        with self._offsets_lock:
            self.offsets.observe(node_id, clock_ms, now)

    def told(self, node_id: str, offset_ms: int | None) -> None:
        """``node_id`` says our clock is ``offset_ms`` from its own (a hello's reply)."""
        with self._offsets_lock:
            self.offsets.told(node_id, offset_ms)

    def check(self, now: int, live: list[str], known: list[str]) -> None:
        """Log each live member whose clock is beyond the limit of this node's, by this
        node's estimate or by what the member says (error level, at most once per log
        interval per member); refresh what members() shows of clocks."""
        with self._offsets_lock:
            judgement = self.offsets.judge(self.node_id, live)
            told = {n: o for n, o in self.offsets.told_by().items() if n in live}
            beyond = self.offsets.beyond_limit(live)
            offsets = {n: o for n in known if (o := self.offsets.offset(n)) is not None}
        disagree = {n: -o for n, o in told.items()}
        disagree.update(beyond)  # our own estimate first
        for node_id in sorted(self._disagree - disagree.keys()):
            log.info("clock: member %s is within max_clock_drift_ms again", node_id)
        for node_id, offset in sorted(disagree.items()):
            if node_id not in self._disagree:
                self._stats["clock_disagreements"] += 1
            last = self._logged.get(node_id)
            if last is None or now - last >= self._log_interval_ms:
                self._logged[node_id] = now
                log.error("%s", clock_alarm(node_id, offset, self.offsets.max_drift_ms, judgement))
        self._disagree = set(disagree)
        with self._view_lock:
            self._view = judgement, offsets, told

    def view(self) -> ClockView:
        """As of the last ``check``; from any thread."""
        with self._view_lock:
            return self._view

    def status(self, members: list[Member]) -> dict[str, Any]:
        """The status's ``clock`` field."""
        judgement, _, told = self.view()
        return {
            "max_clock_drift_ms": self.offsets.max_drift_ms,
            "skew_ms": judgement.skew_ms.get(self.node_id, 0),
            "off": sorted(judgement.off),
            "told": told,
            "beyond_limit": {
                m.node_id: m.clock_offset_ms
                for m in members
                if m.clock_offset_ms is not None and self.offsets.beyond(m.clock_offset_ms)
            },
        }


def clock_alarm(node_id: str, offset: int, limit: int, judgement: ClockJudgement) -> str:
    """What to tell the operator of a member whose clock is ``offset`` ms from ours."""
    if offset > 0:
        head = f"member {node_id}'s clock is {offset} ms ahead of this node's"
        effect = f"this node defers {node_id}'s writes until its own clock reaches their stamps"
    else:
        head = f"this node's clock is {-offset} ms ahead of member {node_id}'s"
        effect = f"{node_id} defers this node's writes until its clock reaches their stamps"
    count = len(judgement.skew_ms)
    if judgement.off and len(judgement.off) < count:
        off = ", ".join(sorted(judgement.off))
        verdict = f"by the median of {count} clocks, the one off is {off}"
    else:
        verdict = f"{count} clocks cannot tell which one is wrong"
    return (
        f"clock: {head}, beyond max_clock_drift_ms={limit}: {effect}; {verdict} "
        "(crdt-inspect DIR status)"
    )
