"""The failure detector, driven by a fake clock (no sleeps, no real time)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.membership import FailureDetector, MemberStatus


def make() -> FailureDetector:
    return FailureDetector(suspect_after_ms=1000, dead_after_ms=2000, tick_interval_ms=100)


def run(det: FailureDetector, start: int, end: int, step: int = 100) -> list[tuple[int, str]]:
    seen = []
    for now in range(start, end + 1, step):
        seen += [(now, c.new.value) for c in det.tick(now)]
    return seen


def test_silent_member_is_suspected_then_declared_dead() -> None:
    det = make()
    det.heard("b", 1, 0)
    changes = run(det, 0, 4000)
    assert [s for _, s in changes] == ["suspect", "dead"]
    suspect_at, dead_at = (t for t, _ in changes)
    assert 1000 < suspect_at <= 1100
    assert dead_at - suspect_at > 2000
    assert det.status("b") is MemberStatus.DEAD


def test_heartbeat_while_suspect_clears_suspicion() -> None:
    det = make()
    det.heard("b", 1, 0)
    run(det, 0, 1200)
    assert det.status("b") is MemberStatus.SUSPECT
    changes = det.heard("b", 1, 1300)
    assert [c.new for c in changes] == [MemberStatus.ALIVE]
    assert det.status("b") is MemberStatus.ALIVE


def test_dead_member_revives_only_with_higher_incarnation() -> None:
    det = make()
    det.heard("b", 1, 0)
    run(det, 0, 4000)
    assert det.status("b") is MemberStatus.DEAD
    assert det.heard("b", 1, 4100) == []  # a paused process at the same incarnation
    assert det.status("b") is MemberStatus.DEAD
    changes = det.heard("b", 2, 4200)
    assert [(c.new, c.incarnation) for c in changes] == [(MemberStatus.ALIVE, 2)]


def test_stale_incarnation_is_ignored() -> None:
    det = make()
    det.heard("b", 5, 0)
    det.heard("b", 4, 900)
    run(det, 0, 1100)
    assert det.status("b") is MemberStatus.SUSPECT  # the stale beat did not count


def test_member_that_left_stays_left() -> None:
    det = make()
    det.heard("b", 1, 0)
    det.add("b", 1, 10, left=True)
    assert det.status("b") is MemberStatus.LEFT
    assert det.heard("b", 1, 20) == []
    run(det, 0, 5000)
    assert det.status("b") is MemberStatus.LEFT


def test_the_left_record_of_a_past_life_does_not_undo_the_member_s_return() -> None:
    det = make()
    det.add("b", 1, 0, left=True)
    det.heard("b", 2, 10)  # b rejoined: its hello or heartbeat came before its new record
    assert det.add("b", 1, 20, left=True) == []  # the record still held says life 1 left
    assert (det.status("b"), det.incarnation("b")) == (MemberStatus.ALIVE, 2)
    det.add("b", 2, 30, left=True)  # and when life 2 leaves, it has left
    assert det.status("b") is MemberStatus.LEFT


def test_overloaded_detector_stretches_its_timeouts() -> None:
    """Lifeguard: a detector whose own ticks come late must not declare peers dead."""
    det = make()
    det.heard("b", 1, 0)
    # Ticks arrive 400 ms apart instead of 100: this node is the slow one.
    changes = run(det, 0, 2800, step=400)
    assert changes == []
    assert det.local_health > 0
    assert det.status("b") is MemberStatus.ALIVE


def test_an_io_stall_holds_local_health_up_for_a_suspicion_timeout() -> None:
    """Ticks on time, but this node's I/O thread was held up 400 ms: the heartbeats sent
    meanwhile are still on their way in. Health rises, and the on-time ticks after the
    stall do not lower it before a suspicion timeout has passed."""
    det = make()
    det.heard("b", 1, 0)
    run(det, 0, 500)
    assert det.tick(600, io_stall_ms=400) == []
    assert det.local_health == 1
    assert run(det, 700, 1500) == []  # silent 1500 ms, the limit stretched to 2000
    assert det.local_health == 1
    assert det.status("b") is MemberStatus.ALIVE
    # Then it falls back, and a b still silent is suspected after all.
    changes = run(det, 1700, 2600)
    assert det.local_health == 0
    assert [s for _, s in changes] == ["suspect"]


def test_a_short_io_turn_changes_nothing() -> None:
    det = make()
    det.heard("b", 1, 0)
    for now in range(0, 1001, 100):
        assert det.tick(now, io_stall_ms=100) == []
    assert det.local_health == 0
    assert [s for _, s in run(det, 1100, 1200)] == ["suspect"]


def test_suspected_lists_suspects_and_dead_with_incarnation() -> None:
    det = make()
    det.heard("b", 3, 0)
    det.heard("c", 1, 0)
    run(det, 0, 1100)
    det.heard("c", 1, 1100)
    assert det.suspected() == {"b": 3}


@given(
    st.lists(st.tuples(st.sampled_from("bcd"), st.integers(1, 3), st.integers(0, 300)), max_size=60)
)
def test_member_heard_within_timeout_is_never_suspected(
    beats: list[tuple[str, int, int]],
) -> None:
    det = make()
    now = 0
    heard_at: dict[str, int] = {}
    for node, inc, gap in beats:
        now += gap
        current = det.incarnation(node)
        det.heard(node, inc, now)
        if det.status(node) is MemberStatus.ALIVE and (current is None or inc >= current):
            heard_at[node] = now
        for change in det.tick(now):
            if change.new is MemberStatus.SUSPECT:
                assert now - heard_at[change.node_id] > det.suspect_after_ms
