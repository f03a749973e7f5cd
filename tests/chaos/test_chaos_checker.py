"""The chaos checker on histories written by hand: each rule fires on the story it names,
and stays quiet on the stories the store is allowed to tell (concurrent writes, cut-short
operations, removes that explain an absence)."""

from __future__ import annotations

from chaos.checker import STALE_MARGIN_NS, Replica, check
from chaos.history import ADD, PUT, REMOVE, Op, Outcome

MS = 1_000_000


def op(
    f: str,
    key: str,
    at_ms: float,
    done_ms: float | None = None,
    value: str | None = None,
    outcome: Outcome = "ok",
) -> Op:
    """An operation invoked at ``at_ms`` and completed at ``done_ms`` (default: 1 ms later;
    never for ``info``, an operation cut short)."""
    done = at_ms + 1 if done_ms is None else done_ms
    return Op(
        process="c1.0",
        n=0,
        f=f,
        key=key,
        value=value,
        node="n1",
        observed=f == REMOVE,
        invoke_wall=int(at_ms * MS),
        outcome=outcome,
        complete_wall=None if outcome == "info" else int(done * MS),
    )


def kinds(ops: list[Op], elements: set[str], registers: dict[str, str]) -> list[str]:
    verdict = check(ops, [Replica("n1", frozenset(elements), registers)])
    return [v.kind for v in verdict.violations]


def test_an_acknowledged_add_that_is_present_passes() -> None:
    assert kinds([op(ADD, "e1", 0)], {"e1"}, {}) == []


def test_an_acknowledged_add_that_is_absent_and_never_removed_is_lost() -> None:
    assert kinds([op(ADD, "e1", 0)], set(), {}) == ["lost add"]


def test_any_attempted_remove_explains_an_absent_add() -> None:
    outcomes: tuple[Outcome, ...] = ("ok", "fail", "info")
    for outcome in outcomes:
        ops = [op(ADD, "e1", 0), op(REMOVE, "e1", 5, outcome=outcome)]
        assert kinds(ops, set(), {}) == [], outcome


def test_an_add_cut_short_may_be_present_or_absent() -> None:
    ops = [op(ADD, "e1", 0, outcome="info"), op(ADD, "e2", 0, outcome="fail")]
    assert kinds(ops, {"e1"}, {}) == []
    assert kinds(ops, {"e2"}, {}) == []
    assert kinds(ops, set(), {}) == []


def test_an_acknowledged_remove_whose_element_is_back_is_undone() -> None:
    ops = [op(ADD, "e1", 0), op(REMOVE, "e1", 10)]
    assert kinds(ops, {"e1"}, {}) == ["undone remove"]


def test_a_remove_cut_short_may_leave_the_element() -> None:
    ops = [op(ADD, "e1", 0), op(REMOVE, "e1", 10, outcome="info")]
    assert kinds(ops, {"e1"}, {}) == []


def test_an_element_no_add_attempted_is_a_phantom() -> None:
    assert kinds([op(ADD, "e1", 0)], {"e1", "ghost"}, {}) == ["phantom"]


def test_the_last_acknowledged_value_passes() -> None:
    ops = [op(PUT, "k", 0, 1, "a"), op(PUT, "k", 10, 11, "b")]
    assert kinds(ops, set(), {"k": "b"}) == []


def test_a_value_overwritten_by_a_later_acknowledged_put_is_stale() -> None:
    ops = [op(PUT, "k", 0, 1, "a"), op(PUT, "k", 10, 11, "b")]
    assert kinds(ops, set(), {"k": "a"}) == ["stale register"]


def test_either_of_two_concurrent_puts_may_win() -> None:
    # b was invoked before a was acknowledged (and a before b was): no real-time order.
    ops = [op(PUT, "k", 0, 30, "a"), op(PUT, "k", 10, 20, "b")]
    assert kinds(ops, set(), {"k": "a"}) == []
    assert kinds(ops, set(), {"k": "b"}) == []


def test_a_put_within_the_clock_granularity_of_an_ack_may_lose() -> None:
    # Timestamps have whole milliseconds: a put invoked within the margin may tie and lose.
    late = (MS + STALE_MARGIN_NS) / MS
    ops = [op(PUT, "k", 0, 1, "a"), op(PUT, "k", late, late + 1, "b")]
    assert kinds(ops, set(), {"k": "a"}) == []


def test_a_put_cut_short_may_win_over_later_acknowledged_ones() -> None:
    ops = [op(PUT, "k", 0, value="a", outcome="info"), op(PUT, "k", 10, 11, "b")]
    assert kinds(ops, set(), {"k": "a"}) == []


def test_a_key_absent_after_an_acknowledged_put_is_lost() -> None:
    ops = [op(PUT, "k", 0, 1, "a"), op(PUT, "j", 0, value="x", outcome="info")]
    assert kinds(ops, set(), {}) == ["lost register"]


def test_values_and_keys_no_put_wrote_are_phantoms() -> None:
    ops = [op(PUT, "k", 0, 1, "a")]
    assert kinds(ops, set(), {"k": "zzz"}) == ["phantom value"]
    assert kinds(ops, set(), {"k": "a", "other": "a"}) == ["phantom value"]


def test_a_violation_names_every_replica_it_shows_on() -> None:
    ops = [op(ADD, "e1", 0), op(ADD, "e2", 0)]
    verdict = check(
        ops,
        [
            Replica("n1", frozenset({"e1", "e2"}), {}),
            Replica("n2", frozenset({"e2"}), {}),
            Replica("n3", frozenset({"e2"}), {}),
        ],
    )
    [lost] = verdict.violations
    assert (lost.kind, lost.subject, lost.nodes) == ("lost add", "e1", ("n2", "n3"))
    assert verdict.counts == {"add ok": 2}
