"""Lifeguard's local health (:mod:`crdtstore.membership.health`), the one rule both
detectors use: its parts by name, and a differential test holding the full mesh's
detector to the rule it kept before sharing it (its ticks come once an interval)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.membership import FailureDetector
from crdtstore.membership.health import LocalHealth

INTERVAL = 100
HOLD = 1_000


def health() -> LocalHealth:
    return LocalHealth(max_level=3, interval_ms=INTERVAL, hold_ms=HOLD)


def test_a_late_tick_raises_and_holds_then_it_falls_once_an_interval() -> None:
    h = health()
    h.tick(0)
    h.tick(350)  # due at 100, more than an interval past it
    assert h.level == 1 and h.stretch(200) == 400
    for now in range(450, 350 + HOLD, INTERVAL):
        h.tick(now)
        assert h.level == 1, now
    h.tick(350 + HOLD)
    assert h.level == 0


def test_a_deadline_brought_forward_counts_from_the_previous_tick() -> None:
    h = health()
    h.tick(100)
    h.tick(180, due_ms=50)  # due 130 ms before, but already past at the previous tick
    assert h.level == 0
    h.tick(300, due_ms=190)  # 110 past its deadline
    assert h.level == 1


def test_one_stall_counts_once_an_interval_and_the_level_is_capped() -> None:
    h = health()
    h.tick(0)
    assert h.tick(100, io_stall_ms=400) is True
    assert h.tick(150, io_stall_ms=450) is False  # the same stall, seen again
    assert h.level == 1
    for now in range(200, 1_000, INTERVAL):
        h.tick(now, io_stall_ms=INTERVAL + 1)
    assert h.level == 3


@dataclass
class DetectorRuleBefore:
    """The full mesh detector's rule as it stood before it shared :class:`LocalHealth`
    (the specification the differential test holds it to)."""

    level: int = 0
    hold_until: int = 0
    last: int | None = None

    def refuted(self, now: int) -> None:
        self.level = min(3, self.level + 1)
        self.hold_until = now + HOLD

    def tick(self, now: int, io_stall: int) -> None:
        if self.last is not None:
            late = now - self.last > 2 * INTERVAL
            if late or io_stall > INTERVAL:
                self.refuted(now)
            elif self.level and now >= self.hold_until:
                self.level -= 1
        self.last = now


@given(
    st.lists(
        st.tuples(
            st.integers(INTERVAL, 4 * INTERVAL),  # ticks come once an interval or later
            st.sampled_from([0, INTERVAL, INTERVAL + 1, 900]),
            st.booleans(),  # heard itself suspected before this tick
        ),
        max_size=80,
    ),
    st.sampled_from([0, 900]),
)
def test_the_full_mesh_detector_keeps_its_rule(
    ticks: list[tuple[int, int, bool]], first_stall: int
) -> None:
    det = FailureDetector(
        suspect_after_ms=HOLD, dead_after_ms=2 * HOLD, tick_interval_ms=INTERVAL, max_local_health=3
    )
    before = DetectorRuleBefore()
    now = 0
    det.tick(now, first_stall)
    before.tick(now, first_stall)
    for gap, stall, suspected in ticks:
        if suspected:
            det.refuted(now + 1)
            before.refuted(now + 1)
        now += gap
        det.tick(now, stall)
        before.tick(now, stall)
        assert det.local_health == before.level, now
