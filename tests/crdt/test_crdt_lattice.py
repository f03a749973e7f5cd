"""Lattice laws and delta correctness of ORSet and LWWMap, on reachable values only.

Arbitrary DotMaps are not meaningful (a dot must carry one payload at one key, and a
delta must list every key its context touches), so values are produced the way a
cluster produces them: replicas "a", "b", "c" each mutate their own state and now and
then join another replica's state or any delta seen so far (deltas out of order,
duplicated, or joined into delta groups first). On those values we check:

- ``join`` is commutative, associative and idempotent (``==`` ignores a state's empty
  entries), and agrees with a reference join written from the definition that visits
  every key of both sides;
- a delta joined into any state that has seen the mutated state gives the same result
  as joining the mutated state itself; joining a delta visits only the delta's keys,
  which is sound only because deltas list every key their context touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext, Dot, DotMap, HybridClock, LWWMap, ORSet, join_entry

REPLICAS = ("a", "b", "c")
KEYS = (0, 1, "x", b"y")
START_MS = 1_700_000_000_000


@dataclass
class Cluster:
    """Replica states plus every delta any replica produced (and some delta groups)."""

    kind: type[DotMap[Any]]
    states: dict[str, DotMap[Any]]
    deltas: list[DotMap[Any]] = field(default_factory=list)
    clocks: dict[str, HybridClock] = field(default_factory=dict)
    now: int = START_MS


def mutate(cluster: Cluster, replica: str, op: str, key: Any, value: int) -> DotMap[Any]:
    """Apply one mutation at ``replica``; return its delta (already joined locally)."""
    state = cluster.states[replica]
    if isinstance(state, ORSet):
        delta: DotMap[Any] = (
            state.add(replica, key) if op == "write" else state.remove(replica, key)
        )
    else:
        assert isinstance(state, LWWMap)
        if op == "write":
            clock, ts = cluster.clocks.get(replica, HybridClock()).tick(cluster.now)
            cluster.clocks[replica] = clock
            delta = state.put(replica, key, value, ts)
        else:
            delta = state.delete(replica, key)
    cluster.states[replica] = state.join(delta)
    cluster.deltas.append(delta)
    return delta


steps = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "erase", "join_state", "join_delta", "group"]),
        st.sampled_from(REPLICAS),
        st.sampled_from(KEYS),
        st.integers(0, 1_000),  # value, or which replica / delta to join
        st.integers(-3, 5),  # clock step in ms (clocks may run backwards)
    ),
    min_size=6,
    max_size=40,
)


def simulate(kind: type[DotMap[Any]], history: list[tuple[str, str, Any, int, int]]) -> Cluster:
    cluster = Cluster(kind, {r: kind() for r in REPLICAS})
    for op, replica, key, n, step in history:
        cluster.now += step
        if op in ("write", "erase"):
            mutate(cluster, replica, op, key, n)
        elif op == "join_state":
            other = REPLICAS[n % len(REPLICAS)]
            cluster.states[replica] = cluster.states[replica].join(cluster.states[other])
        elif cluster.deltas and op == "join_delta":
            delta = cluster.deltas[n % len(cluster.deltas)]
            cluster.states[replica] = cluster.states[replica].join(delta)
        elif cluster.deltas:  # "group": a delta interval, as a batch or repair ships it
            first = cluster.deltas[n % len(cluster.deltas)]
            second = cluster.deltas[(n // 7) % len(cluster.deltas)]
            cluster.deltas.append(first.join(second))
    return cluster


kinds = st.sampled_from([ORSet, LWWMap])


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    return simulate(draw(kinds), draw(steps))


def values_of(cluster: Cluster) -> list[DotMap[Any]]:
    return [*cluster.states.values(), *cluster.deltas]


def reference_join(x: DotMap[Any], y: DotMap[Any]) -> tuple[dict[Any, dict[Any, Any]], Any]:
    """The join from its definition: every key of both sides, live entries only."""
    entries = {}
    for key in set(x.entries) | set(y.entries):
        joined = join_entry(x.dots(key), x.context, y.dots(key), y.context)
        if joined:
            entries[key] = joined
    return entries, x.context.join(y.context)


def live(value: DotMap[Any]) -> dict[Any, dict[Any, Any]]:
    return {k: dict(e) for k, e in value.entries.items() if e}


def assert_delta_lists_its_keys(delta: DotMap[Any], history: Cluster) -> None:
    """Every dot a delta's context covers that is live somewhere lives at a listed key."""
    for state in history.states.values():
        for key, entry in state.entries.items():
            if any(d in delta.context for d in entry):
                assert key in delta.entries, f"{delta!r} omits key {key!r} its context covers"


@given(clusters(), st.data())
def test_join_is_commutative(cluster: Cluster, data: st.DataObject) -> None:
    x = data.draw(st.sampled_from(values_of(cluster)))
    y = data.draw(st.sampled_from(values_of(cluster)))
    assert x.join(y) == y.join(x)


@given(clusters(), st.data())
def test_join_is_associative(cluster: Cluster, data: st.DataObject) -> None:
    x, y, z = (data.draw(st.sampled_from(values_of(cluster))) for _ in range(3))
    assert x.join(y).join(z) == x.join(y.join(z))


@given(clusters())
def test_join_is_idempotent(cluster: Cluster) -> None:
    for x in values_of(cluster):
        assert x.join(x) == x
        assert x.join(cluster.kind()) == cluster.kind().join(x)
        assert x.join(cluster.kind()) == (
            x if not x.is_delta else cluster.kind(dict(x.entries), x.context)
        )


@given(clusters(), st.data())
def test_join_agrees_with_the_reference_join(cluster: Cluster, data: st.DataObject) -> None:
    x = data.draw(st.sampled_from(values_of(cluster)))
    y = data.draw(st.sampled_from(values_of(cluster)))
    joined = x.join(y)
    entries, ctx = reference_join(x, y)
    assert live(joined) == entries
    assert joined.context == ctx
    assert joined.is_delta == (x.is_delta and y.is_delta)
    if joined.is_delta:
        assert set(joined.entries) == set(x.entries) | set(y.entries)


@given(clusters())
def test_states_hold_only_live_dots_their_context_covers(cluster: Cluster) -> None:
    for value in values_of(cluster):
        owner: dict[Any, Any] = {}
        for key, entry in value.entries.items():
            assert entry or value.is_delta, f"state keeps an empty entry at {key!r}"
            for d in entry:
                assert d in value.context
                assert owner.setdefault(d, key) == key, f"dot {d} live at two keys"
    for delta in cluster.deltas:
        assert_delta_lists_its_keys(delta, cluster)


@given(
    clusters(),
    st.sampled_from(REPLICAS),
    st.sampled_from(["write", "erase"]),
    st.sampled_from(KEYS),
    st.integers(),
    st.data(),
)
def test_delta_join_equals_state_join(
    cluster: Cluster, replica: str, op: str, key: Any, value: int, data: st.DataObject
) -> None:
    x = cluster.states[replica]
    delta = mutate(cluster, replica, op, key, value)
    after = cluster.states[replica]
    assert after == x.join(delta)
    # The mutation did what it says, to its key only, consuming exactly one dot.
    assert len(after.context) == len(x.context) + 1
    assert after.context == x.context.add(x.context.next_dot(replica))
    assert {k: dict(e) for k, e in live(after).items() if k != key} == {
        k: e for k, e in live(x).items() if k != key
    }
    if isinstance(after, ORSet):
        assert (key in after) == (op == "write")
    else:
        assert isinstance(after, LWWMap)
        assert after.get(key, "absent") == (value if op == "write" else "absent")
    # Into any state y that has seen x: delta-join == state-join.
    other = data.draw(st.sampled_from([*values_of(cluster), cluster.kind()]))
    y = other.join(x)
    assert y.join(delta) == y.join(after)
    assert delta.join(y) == y.join(after)
    # A delta group joins like its parts in sequence.
    extra = data.draw(st.sampled_from(cluster.deltas))
    assert y.join(delta.join(extra)) == y.join(delta).join(extra)


@given(clusters(), st.data())
def test_delta_join_visiting_only_delta_keys_equals_full_join(
    cluster: Cluster, data: st.DataObject
) -> None:
    state = data.draw(st.sampled_from(list(cluster.states.values())))
    delta = data.draw(st.sampled_from(cluster.deltas)) if cluster.deltas else cluster.kind()
    # A "state" copy of the delta makes join visit every key of both sides.
    as_state = cluster.kind(dict(delta.entries), delta.context)
    assert state.join(delta) == state.join(as_state)
    entries, ctx = reference_join(state, delta)
    assert live(state.join(delta)) == entries
    assert state.join(delta).context == ctx


def big_state(n: int) -> ORSet:
    """A state holding elements ``0..n-1``, each added once by replica "a"."""
    return ORSet({i: {Dot("a", i + 1): None} for i in range(n)}, CausalContext({"a": n}))


def test_delta_into_large_state_touches_only_its_keys() -> None:
    state = big_state(2_000)
    # Remote replica "b" saw all of it, removed 5 and added 5 new elements.
    b_state: DotMap[None] = ORSet().join(state)
    group: DotMap[None] = ORSet(is_delta=True)
    for i in range(5):
        assert isinstance(b_state, ORSet)
        d = b_state.remove("b", i)
        b_state = b_state.join(d)
        group = group.join(d)
        assert isinstance(b_state, ORSet)
        d = b_state.add("b", f"new{i}")
        b_state = b_state.join(d)
        group = group.join(d)
    assert set(group.entries) == {*range(5), *(f"new{i}" for i in range(5))}
    joined = state.join(group)
    assert joined == b_state
    assert isinstance(joined, ORSet) and len(joined) == 2_000
