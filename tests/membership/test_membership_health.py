"""Lifeguard's local health (:mod:`crdtstore.membership.health`): its parts by name."""

from __future__ import annotations

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
