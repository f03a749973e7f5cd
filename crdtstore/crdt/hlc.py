"""Hybrid logical clocks (Kulkarni et al., 2014), as pure values.

A timestamp is one int: milliseconds since the epoch in the high bits and a 16-bit
logical counter in the low bits, so timestamps order as ints and encode compactly.

Invariants: ``tick`` returns a timestamp greater than every timestamp this clock has
issued or observed; ``observe`` never moves the clock to a remote timestamp more than
``max_drift_ms`` ahead of local physical time (it raises instead), so one node with a
bad clock cannot drag every other clock, and every later write, into its future.
No clock is read here: the caller passes ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtstore.errors import ClockDriftError, InvalidValue

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 63) - 1


def make_timestamp(physical_ms: int, logical: int = 0) -> int:
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    return ts >> LOGICAL_BITS


def logical(ts: int) -> int:
    return ts & LOGICAL_MASK


@dataclass(frozen=True, slots=True)
class HybridClock:
    """The last timestamp a node issued or observed."""

    last: int = 0

    def tick(self, now_ms: int) -> tuple[HybridClock, int]:
        """A new timestamp for a local event, and the clock that issued it."""
        wall = make_timestamp(now_ms)
        ts = wall if wall > self.last else self.last + 1
        if ts > MAX_TIMESTAMP:
            raise InvalidValue(f"hybrid clock overflow at {ts}")
        return HybridClock(ts), ts

    def observe(self, remote: int, now_ms: int, max_drift_ms: int) -> HybridClock:
        """The clock after seeing ``remote``; refuses one too far in the future."""
        check_drift(remote, now_ms, max_drift_ms)
        return self if remote <= self.last else HybridClock(remote)


def check_drift(remote: int, now_ms: int, max_drift_ms: int) -> None:
    """Raise :class:`ClockDriftError` if ``remote`` is too far ahead of ``now_ms``."""
    ahead = physical_ms(remote) - now_ms
    if ahead > max_drift_ms:
        raise ClockDriftError(
            f"remote timestamp {remote} is {ahead} ms ahead of local time "
            f"(limit max_clock_drift_ms={max_drift_ms})"
        )
