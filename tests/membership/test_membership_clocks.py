"""Clock offsets and the judgement of which clock is off, driven by explicit readings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.membership.clocks import SAMPLES, ClockOffsets

LIMIT = 60_000


def test_the_estimate_is_the_least_delayed_reading() -> None:
    clocks = ClockOffsets(LIMIT)
    # The peer runs 5 s ahead; its messages take 3, 40, 1 and 2000 ms to be handled.
    for sent, delay in ((1_000, 3), (2_000, 40), (3_000, 1), (4_000, 2_000)):
        clocks.observe("b", sent + 5_000, sent + delay)
    assert clocks.offset("b") == 5_000 - 1
    assert clocks.offset("c") is None


def test_a_corrected_clock_is_seen_once_its_old_readings_are_gone() -> None:
    clocks = ClockOffsets(LIMIT)
    for t in range(SAMPLES):
        clocks.observe("b", t + 300_000, t)
    clocks.observe("b", SAMPLES, SAMPLES)  # NTP stepped b back
    assert clocks.offset("b") == 300_000
    for t in range(SAMPLES + 1, 2 * SAMPLES):
        clocks.observe("b", t, t)
    assert clocks.offset("b") == 0


def test_what_a_peer_says_is_kept_only_beyond_the_limit() -> None:
    clocks = ClockOffsets(LIMIT)
    assert clocks.told("a", 300_000) and clocks.told_by() == {"a": 300_000}
    assert not clocks.told("a", LIMIT)
    assert clocks.told_by() == {}
    clocks.told("a", -LIMIT - 1)
    assert not clocks.told("a", None) and clocks.told_by() == {}


def test_only_offsets_beyond_the_limit_are_told() -> None:
    clocks = ClockOffsets(LIMIT)
    for node_id, offset in {"a": LIMIT, "b": LIMIT + 1, "c": -LIMIT - 1}.items():
        clocks.observe(node_id, offset, 0)
    assert clocks.beyond_limit(["a", "b", "c", "d"]) == {"b": LIMIT + 1, "c": -LIMIT - 1}
    assert clocks.beyond_limit(["a"]) == {}


def test_of_two_clocks_apart_neither_is_named() -> None:
    clocks = ClockOffsets(LIMIT)
    clocks.observe("b", 300_000, 0)
    verdict = clocks.judge("a", ["b"])
    assert verdict.off == {"a", "b"}  # both off: nothing says which is right
    assert verdict.skew_ms == {"a": -150_000, "b": 150_000}


def test_the_median_names_the_clock_that_is_off_from_every_side() -> None:
    truth = {"a": 0, "b": 300_000, "c": 1_000}
    for me in truth:
        clocks = ClockOffsets(LIMIT)
        for peer, clock in truth.items():
            clocks.observe(peer, clock, truth[me])  # its reading, against my clock
        verdict = clocks.judge(me, [p for p in truth if p != me])
        assert verdict.off == {"b"}, me
        assert verdict.skew_ms["b"] == 299_000


@given(st.lists(st.integers(-10 * LIMIT, 10 * LIMIT), min_size=1, max_size=9))
def test_clocks_not_off_accept_each_other_and_a_refusing_pair_has_one_off(
    peers: list[int],
) -> None:
    clocks = ClockOffsets(LIMIT)
    for i, offset in enumerate(peers):
        clocks.observe(f"n{i}", offset, 0)
    verdict = clocks.judge("me", [f"n{i}" for i in range(len(peers))])
    readings = {"me": 0, **{f"n{i}": o for i, o in enumerate(peers)}}
    for x, cx in readings.items():
        for y, cy in readings.items():
            if x not in verdict.off and y not in verdict.off:
                assert abs(cx - cy) <= LIMIT + 1  # +1: an even count's median rounds down
            if abs(cx - cy) > LIMIT + 1:
                assert x in verdict.off or y in verdict.off
