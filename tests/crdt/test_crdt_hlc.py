"""Properties of HybridClock: ticks strictly increase past everything issued or observed,
and a remote timestamp further ahead than ``max_drift_ms`` is refused, never adopted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import HybridClock, make_timestamp, physical_ms
from crdtstore.errors import ClockDriftError

NOW = 1_700_000_000_000
MAX_DRIFT = 5_000

# Local time may jump back and forth; remotes may be behind, close, or far ahead.
local_times = st.integers(NOW - 10_000, NOW + 10_000)
remotes = st.builds(
    make_timestamp, st.integers(NOW - 20_000, NOW + 30_000), st.integers(0, (1 << 16) - 1)
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), local_times),
        st.tuples(st.just("observe"), local_times, remotes),
    ),
    max_size=40,
)


@given(events)
def test_tick_exceeds_everything_issued_or_accepted(history: list[tuple[object, ...]]) -> None:
    clock = HybridClock()
    high = 0  # greatest timestamp issued or accepted so far
    for event in history:
        if event[0] == "tick":
            now = event[1]
            assert isinstance(now, int)
            clock, ts = clock.tick(now)
            assert ts > high
            assert ts >= make_timestamp(now), "a tick fell behind local physical time"
            assert clock.last == ts
            high = ts
        else:
            now, remote = event[1], event[2]
            assert isinstance(now, int) and isinstance(remote, int)
            too_far = physical_ms(remote) - now > MAX_DRIFT
            if too_far:
                with pytest.raises(ClockDriftError):
                    clock.observe(remote, now, MAX_DRIFT)
                continue  # the clock is a value: a refused observe changed nothing
            clock = clock.observe(remote, now, MAX_DRIFT)
            assert clock.last >= remote
            high = max(high, remote)
    assert clock.last == high


@given(local_times, st.integers(0, 60_000), st.integers(1, 10_000))
def test_observe_refuses_exactly_the_remotes_beyond_the_bound(
    now: int, max_drift: int, beyond: int
) -> None:
    clock = HybridClock()
    at_limit = make_timestamp(now + max_drift, (1 << 16) - 1)
    assert clock.observe(at_limit, now, max_drift).last == at_limit
    too_far = make_timestamp(now + max_drift + beyond)
    with pytest.raises(ClockDriftError, match=f"max_clock_drift_ms={max_drift}"):
        clock.observe(too_far, now, max_drift)


def test_a_refused_remote_never_drags_later_ticks() -> None:
    clock, first = HybridClock().tick(NOW)
    with pytest.raises(ClockDriftError):
        clock = clock.observe(make_timestamp(NOW + 10 * MAX_DRIFT), NOW, MAX_DRIFT)
    clock, second = clock.tick(NOW + 1)
    assert second == make_timestamp(NOW + 1)
    assert second > first
