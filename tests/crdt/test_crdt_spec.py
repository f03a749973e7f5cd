"""Convergence to a specification computed from the history, with explicit causality.

Three replicas run random operations. Every operation's delta is delivered to every
replica eventually, in an arbitrary order and with duplicates. Independently of the
CRDT's own contexts, the test records for each operation the set of operations its
replica had received when it ran (``seen``). The specification then reads:

- OR-Set: an element is present iff some add of it is *observed* by no other operation
  on that element (an add or remove ``q`` observes ``p`` iff ``p`` is in ``q``'s seen set);
- LWW-map: a key's value is that of the greatest ``(timestamp, replica)`` among the puts
  of that key observed by no other put or delete of that key; absent if there is none.

Timestamps come from a HybridClock per replica with a simulated local time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import DotMap, HybridClock, LWWMap, ORSet

REPLICAS = ("a", "b", "c")
KEYS = ("x", "y", 3)
START_MS = 1_700_000_000_000
MAX_DRIFT_MS = 60_000


@dataclass(frozen=True)
class Op:
    index: int
    replica: str
    write: bool  # add / put, or remove / delete
    key: Any
    value: int
    timestamp: int
    seen: frozenset[int]


def spec(kind: type[DotMap[Any]], ops: list[Op]) -> dict[Any, Any]:
    """Key -> value (True for set elements) from the history alone."""
    result: dict[Any, Any] = {}
    for key in {op.key for op in ops}:
        on_key = [op for op in ops if op.key == key]
        surviving = [
            p
            for p in on_key
            if p.write and not any(p.index in q.seen for q in on_key if q is not p)
        ]
        if not surviving:
            continue
        if kind is ORSet:
            result[key] = True
        else:
            result[key] = max(surviving, key=lambda p: (p.timestamp, p.replica)).value
    return result


def read(value: DotMap[Any]) -> dict[Any, Any]:
    if isinstance(value, ORSet):
        return dict.fromkeys(value.elements(), True)
    assert isinstance(value, LWWMap)
    return dict(value.items())


actions = st.lists(
    st.one_of(
        # ("op", replica, write?, key, value, ms the local clock moves)
        st.tuples(
            st.just("op"),
            st.sampled_from(REPLICAS),
            st.booleans(),
            st.sampled_from(KEYS),
            st.integers(0, 99),
            st.integers(-5, 20),
        ),
        # ("deliver", target, which delta, unused...)
        st.tuples(
            st.just("deliver"),
            st.sampled_from(REPLICAS),
            st.integers(0, 10**6),
            st.just(None),
            st.just(0),
            st.just(0),
        ),
    ),
    min_size=4,
    max_size=40,
)


@given(st.sampled_from([ORSet, LWWMap]), actions, st.randoms(use_true_random=False))
def test_replicas_converge_to_the_specification(
    kind: type[DotMap[Any]], script: list[tuple[Any, ...]], rnd: Any
) -> None:
    states: dict[str, DotMap[Any]] = {r: kind() for r in REPLICAS}
    clocks = {r: HybridClock() for r in REPLICAS}
    now = dict.fromkeys(REPLICAS, START_MS)
    received: dict[str, set[int]] = {r: set() for r in REPLICAS}
    ops: list[Op] = []
    deltas: list[DotMap[Any]] = []

    def deliver(target: str, i: int) -> None:
        states[target] = states[target].join(deltas[i])
        received[target].add(i)
        op = ops[i]
        if op.write and kind is LWWMap:
            clocks[target] = clocks[target].observe(op.timestamp, now[target], MAX_DRIFT_MS)

    for action in script:
        if action[0] == "deliver":
            if deltas:
                deliver(action[1], action[2] % len(deltas))
            continue
        _, replica, write, key, value, step = action
        now[replica] += step
        state, index = states[replica], len(ops)
        timestamp = 0
        if kind is ORSet:
            assert isinstance(state, ORSet)
            delta: DotMap[Any] = state.add(replica, key) if write else state.remove(replica, key)
        else:
            assert isinstance(state, LWWMap)
            if write:
                clocks[replica], timestamp = clocks[replica].tick(now[replica])
                delta = state.put(replica, key, value, timestamp)
            else:
                delta = state.delete(replica, key)
        ops.append(Op(index, replica, write, key, value, timestamp, frozenset(received[replica])))
        deltas.append(delta)
        deliver(replica, index)

    # Eventually every delta reaches every replica: a random order, with duplicates.
    final = [(r, i) for r in REPLICAS for i in range(len(deltas))]
    final += rnd.sample(final, k=len(final) // 3)
    rnd.shuffle(final)
    for target, i in final:
        deliver(target, i)

    expected = spec(kind, ops)
    for r in REPLICAS:
        assert states[r] == states["a"], f"replica {r} diverged"
        assert read(states[r]) == expected
    assert len(states["a"].context) == len(ops), "every operation consumes exactly one dot"


def test_spec_reading_of_a_classic_history() -> None:
    """The spec itself, on the add-wins case: a remove that saw add 0 but not add 1."""
    ops = [
        Op(0, "a", True, "x", 0, 0, frozenset({0})),
        Op(1, "b", True, "x", 0, 0, frozenset({1})),
        Op(2, "a", False, "x", 0, 0, frozenset({0, 2})),
    ]
    assert spec(ORSet, ops) == {"x": True}
    assert spec(ORSet, [*ops[:1], ops[2]]) == {}
