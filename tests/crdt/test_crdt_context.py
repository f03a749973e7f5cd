"""Properties of CausalContext: a compact set of dots that behaves exactly like a set.

Every property is checked against a brute-force model: the plain ``set`` of dots the
context iterates, over a small universe of replicas and sequences so that contexts
overlap, touch and leave gaps often.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext, Dot

REPLICAS = ("a", "b", "c")
MAX_SEQ = 12
UNIVERSE = [Dot(r, s) for r in (*REPLICAS, "d") for s in range(1, MAX_SEQ + 4)]

dots = st.builds(Dot, st.sampled_from(REPLICAS), st.integers(1, MAX_SEQ))
vectors = st.dictionaries(st.sampled_from(REPLICAS), st.integers(0, MAX_SEQ // 2), max_size=3)


@st.composite
def contexts(draw: st.DrawFn) -> CausalContext:
    """A context built by one of the ways the code builds them: constructor, adds, joins."""
    how = draw(st.sampled_from(["init", "from_dots", "adds", "joins"]))
    if how == "init":
        return CausalContext(draw(vectors), draw(st.sets(dots, max_size=8)))
    if how == "from_dots":
        return CausalContext.from_dots(draw(st.lists(dots, max_size=10)))
    if how == "adds":
        ctx = CausalContext(draw(vectors))
        for d in draw(st.lists(dots, max_size=10)):
            ctx = ctx.add(d)
        return ctx
    parts = draw(st.lists(st.builds(CausalContext, vectors, st.sets(dots, max_size=4)), max_size=4))
    ctx = CausalContext()
    for part in parts:
        ctx = ctx.join(part)
    return ctx


def model(ctx: CausalContext) -> set[Dot]:
    listed = list(ctx)
    assert len(listed) == len(set(listed)) == len(ctx), "iteration repeats a dot"
    return set(listed)


def assert_compact(ctx: CausalContext) -> None:
    assert all(top > 0 for top in ctx.vv.values()), f"zero entry kept in vv: {ctx!r}"
    for d in ctx.cloud:
        assert d.seq > ctx.vv.get(d.replica, 0) + 1, f"cloud dot {d} not compacted: {ctx!r}"


@given(contexts())
def test_every_way_of_building_a_context_leaves_it_compact(ctx: CausalContext) -> None:
    assert_compact(ctx)


@given(vectors, st.sets(dots, max_size=10))
def test_construction_holds_exactly_the_given_dots(vv: dict[str, int], cloud: set[Dot]) -> None:
    ctx = CausalContext(vv, cloud)
    expected = {Dot(r, s) for r, top in vv.items() for s in range(1, top + 1)} | cloud
    assert model(ctx) == expected
    assert all((d in ctx) == (d in expected) for d in UNIVERSE)


@given(contexts(), dots)
def test_add_inserts_one_dot_and_stays_compact(ctx: CausalContext, d: Dot) -> None:
    after = ctx.add(d)
    assert_compact(after)
    assert model(after) == model(ctx) | {d}


@given(contexts(), contexts())
def test_join_is_union_and_stays_compact(a: CausalContext, b: CausalContext) -> None:
    joined = a.join(b)
    assert_compact(joined)
    assert model(joined) == model(a) | model(b)
    for d in UNIVERSE:
        assert (d in joined) == (d in a or d in b)


@given(contexts(), contexts())
def test_join_is_commutative(a: CausalContext, b: CausalContext) -> None:
    assert a.join(b) == b.join(a)
    assert hash(a.join(b)) == hash(b.join(a))


@given(contexts(), contexts(), contexts())
def test_join_is_associative(a: CausalContext, b: CausalContext, c: CausalContext) -> None:
    assert a.join(b).join(c) == a.join(b.join(c))


@given(contexts())
def test_join_is_idempotent(a: CausalContext) -> None:
    assert a.join(a) == a
    assert a.join(CausalContext()) == a


@given(contexts(), contexts())
def test_equality_is_set_equality(a: CausalContext, b: CausalContext) -> None:
    assert (a == b) == (model(a) == model(b))


@given(contexts(), contexts())
def test_le_is_set_inclusion(a: CausalContext, b: CausalContext) -> None:
    assert (a <= b) == (model(a) <= model(b))
    assert a <= a.join(b)


@given(contexts(), st.sampled_from((*REPLICAS, "d")))
def test_next_dot_is_above_every_seen_dot_of_the_replica(ctx: CausalContext, replica: str) -> None:
    seqs = [d.seq for d in model(ctx) if d.replica == replica]
    assert ctx.max_seq(replica) == max(seqs, default=0)
    assert ctx.next_dot(replica) == Dot(replica, max(seqs, default=0) + 1)
    assert ctx.next_dot(replica) not in ctx


def brute_missing(mine: CausalContext, other: CausalContext) -> dict[str, list[tuple[int, int]]]:
    """Seq ranges of ``other``'s contiguous part absent from ``mine``, by enumeration."""
    out: dict[str, list[tuple[int, int]]] = {}
    for replica, top in other.vv.items():
        absent = [s for s in range(1, top + 1) if Dot(replica, s) not in model(mine)]
        spans: list[tuple[int, int]] = []
        for s in absent:
            if spans and spans[-1][1] == s - 1:
                spans[-1] = (spans[-1][0], s)
            else:
                spans.append((s, s))
        if spans:
            out[replica] = spans
    return out


@given(contexts(), contexts())
def test_missing_from_matches_brute_force_difference(a: CausalContext, b: CausalContext) -> None:
    assert a.missing_from(b) == brute_missing(a, b)
    # What is missing, once added, is missing no more.
    filled = a
    for replica, spans in a.missing_from(b).items():
        for lo, hi in spans:
            for s in range(lo, hi + 1):
                filled = filled.add(Dot(replica, s))
    assert filled.missing_from(b) == {}
    assert a.join(b).missing_from(b) == {}


runs = st.tuples(st.sampled_from([*REPLICAS, "d"]), st.integers(1, MAX_SEQ + 2), st.integers(0, 6))


@given(contexts(), runs)
def test_with_run_and_without_run_add_and_remove_exactly_the_run(
    ctx: CausalContext, run: tuple[str, int, int]
) -> None:
    replica, first, length = run
    last = first + length - 1  # length 0: an empty run
    dots_of_run = {Dot(replica, s) for s in range(first, last + 1)}
    added = ctx.with_run(replica, first, last)
    assert set(added) == set(ctx) | dots_of_run
    assert added == CausalContext.from_dots(set(ctx) | dots_of_run)  # compact as ever
    removed = ctx.without_run(replica, first, last)
    assert set(removed) == set(ctx) - dots_of_run
    assert removed == CausalContext.from_dots(set(ctx) - dots_of_run)
