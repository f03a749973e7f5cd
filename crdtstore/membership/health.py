"""Lifeguard's local health: one rule for both failure detectors.

A detector that is itself slow misreads its own slowness as everyone else's silence
(Lifeguard, Dadgar et al.). So each sign of its own slowness raises a score that
stretches every timeout it judges others by (``timeout * (1 + level)``):
- a tick that comes more than one interval after it was due;
- an I/O stall of this node's transport longer than an interval (what peers sent
  meanwhile is still on its way in; counted once an interval, as one stall is seen by
  every tick while it lasts);
- hearing itself suspected (:meth:`LocalHealth.raise_level`).
A rise holds for ``hold_ms`` (a suspicion timeout): what was missed arrives after the
stall, and on-time ticks right after must not lower the score before it has. Then the
score falls by one per on-time interval, never below 0 nor above ``max_level``.

Why each part (a measured false suspicion: 3 nodes, probe interval 100 ms, 12 writer
processes starting on 2 cores): a node held up by a 594-ms GC pause and a 908-ms turn
of its transport's I/O thread ticked 347 and 189 ms late, then on time 100 and 260 ms
later, its score back at 0 while what its neighbours had sent meanwhile still sat
behind its own I/O thread: it suspected both. Hence the hold (the score fell at the
next on-time tick) and the measure of stalls (its ticks did not show them). Inferring
this node's slowness from all its neighbours falling silent at once was tried and
dropped: when they do all die (2 of 3 nodes killed) it stretched their detection 7x.

Used by the overlay's :class:`~crdtstore.membership.protocol.MembershipProtocol`, which
ticks at every deadline (gossip, probe timeouts) and says when each tick was due. Pure: every input
carries ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

_NEVER = -(1 << 62)


@dataclass(slots=True)
class LocalHealth:
    max_level: int
    interval_ms: int
    """The period of the ticks: later than this past its due time, a tick is late; a
    stall longer than this is one."""
    hold_ms: int
    """How long a rise holds the score up (the suspicion timeout)."""
    level: int = 0
    _hold_until_ms: int = 0
    _last_tick_ms: int | None = None
    _stall_counted_at_ms: int = _NEVER

    def stretch(self, ms: int) -> int:
        """``ms`` as this node's own slowness stretches it."""
        return ms * (1 + self.level)

    def raise_level(self, now_ms: int) -> None:
        """A sign of this node's own slowness: up one, held for ``hold_ms``."""
        self.level = min(self.max_level, self.level + 1)
        self._hold_until_ms = now_ms + self.hold_ms

    def tick(self, now_ms: int, due_ms: int | None = None, io_stall_ms: int = 0) -> bool:
        """A tick at ``now_ms`` that was due at ``due_ms`` (None: an interval after the
        previous tick, for a caller that ticks once an interval). Returns whether an I/O
        stall was counted (the caller may count it)."""
        interval = self.interval_ms
        stalled = False
        if io_stall_ms > interval:
            if now_ms >= self._stall_counted_at_ms + interval:
                self._stall_counted_at_ms = now_ms
                self.raise_level(now_ms)
                stalled = True
        elif self._last_tick_ms is not None:
            last = self._last_tick_ms
            due = last + interval if due_ms is None else due_ms
            # A deadline already past at the previous tick (brought forward since) counts
            # from that tick.
            if now_ms - max(due, last) > interval:
                self.raise_level(now_ms)
            elif self.level and now_ms >= self._hold_until_ms:
                self.level -= 1
                self._hold_until_ms = now_ms + interval
        self._last_tick_ms = now_ms
        return stalled

    @property
    def ticked(self) -> bool:
        """Whether a tick has been seen (the first has no previous one to be late after)."""
        return self._last_tick_ms is not None
