"""The rules a process without the network role applies to the directory's member view."""

from __future__ import annotations

from crdtstore.membership import MemberRecord, MemberStatus
from crdtstore.membership.observed import (
    STALE_INTERVALS,
    Observation,
    ViewStamp,
    observed_members,
    staleness,
)
from crdtstore.membership.seeds import SeedWatch


def stamp(written: int, stopped: bool = False) -> ViewStamp:
    return ViewStamp(
        pid=42,
        node_id="a",
        router="tcp://h:1",
        written_at_ms=written,
        interval_ms=1000,
        stopped=stopped,
    )


def running(pid: int) -> bool:
    return True


def gone(pid: int) -> bool:
    return False


def test_a_view_is_current_only_while_its_holder_writes_it() -> None:
    assert staleness(stamp(10_000), 10_000 + STALE_INTERVALS * 1000, running) is None
    late = staleness(stamp(10_000), 10_001 + STALE_INTERVALS * 1000, running)
    assert late is not None and "pid 42" in late and "3001 ms" in late
    assert "no process" in (staleness(None, 0, running) or "")
    assert "stopped" in (staleness(stamp(10_000, stopped=True), 10_000, running) or "")
    assert "gone" in (staleness(stamp(10_000), 10_000, gone) or "")


def record(node_id: str, left: bool = False) -> MemberRecord:
    return MemberRecord(node_id, f"tcp://{node_id}:1", f"tcp://{node_id}:2", None, None, 1, 5, left)


RECORDS = {"a": record("a"), "b": record("b"), "c": record("c"), "d": record("d", left=True)}
SEEN = {
    "b": Observation(MemberStatus.DEAD, 3, since_ms=900, last_heard_ms=100),
    "d": Observation(MemberStatus.LEFT, 1, since_ms=950, last_heard_ms=200),
}


def test_a_fresh_view_gives_the_detectors_verdicts_with_when_they_were_made() -> None:
    members = {m.node_id: m for m in observed_members("a", RECORDS, SEEN, 1000, stale=False)}
    assert {n: m.status for n, m in members.items()} == {
        "a": "alive",
        "b": "dead",
        "c": "alive",
        "d": "left",
    }
    assert (members["b"].incarnation, members["b"].last_heard_ms) == (3, 100)
    assert (members["b"].status_since_ms, members["b"].observed_at_ms) == (900, 1000)
    # A record the detector has not judged yet carries no verdict's times.
    assert (members["c"].status_since_ms, members["c"].observed_at_ms) == (None, None)


def test_a_stale_view_claims_no_member_alive_or_dead_but_left_stays_left() -> None:
    members = {m.node_id: m for m in observed_members("a", RECORDS, SEEN, 1000, stale=True)}
    assert {n: m.status for n, m in members.items()} == {
        "a": "alive",
        "b": "unknown",
        "c": "unknown",
        "d": "left",
    }
    assert members["b"].last_heard_ms == 100 and members["b"].observed_at_ms == 1000


def test_a_silent_seed_is_counted_after_its_patience_and_warned_about_at_a_bounded_rate() -> None:
    watch = SeedWatch(patience_ms=3000, warn_every_ms=10_000)
    assert watch.greeted("tcp://s:1", 0) is None
    assert watch.greeted("tcp://s:1", 2999) is None
    assert watch.greeted("tcp://s:1", 3000) == 3000
    warned = [t for t in range(3000, 30_001, 1000) if watch.should_warn("tcp://s:1", t)]
    assert warned == [3000, 13_000, 23_000]
    watch.answered("tcp://s:1")
    assert watch.greeted("tcp://s:1", 40_000) is None
