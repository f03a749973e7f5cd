"""Everything the codec encodes decodes to an equal value, through real msgpack bytes.

Covers causal contexts, CRDT values of both types (states and deltas, with payloads of
every msgpack type), DeltaBatch messages and range replies built from packed ranges.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import (
    decode_context,
    decode_value,
    encode_context,
    encode_value,
    pack,
    unpack,
)
from crdtstore.crdt import CausalContext, Dot, DotMap, LWWMap, ORSet
from crdtstore.errors import DecodeError
from crdtstore.sync.fingerprint import (
    HASH_SPACE,
    encode_key,
    entry_hash,
    key_hash,
    key_position,
    split_range,
)
from crdtstore.sync.messages import (
    RANGE_ENTRIES,
    RANGE_EQUAL,
    RANGE_SPLIT,
    DeltaBatch,
    PackedRange,
    RangeAnswer,
    RangeReply,
    RangeSummary,
    decode_message,
    encode_delta_batch,
    encode_message,
)
from crdtstore.sync.shipped import ShippedEntries

replica_ids = st.text(min_size=1, max_size=128).filter(lambda s: bool(s))
small_ids = st.sampled_from(["a", "b", "node-7", "ü" * 128])
seqs = st.one_of(st.integers(1, 40), st.integers(1, (1 << 63) - 1))
contexts = st.builds(
    CausalContext,
    st.dictionaries(st.one_of(small_ids, replica_ids), seqs, max_size=4),
    st.sets(st.builds(Dot, small_ids, seqs), max_size=8),
)

# Payloads that survive msgpack unchanged (lists, not tuples; no NaN).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
payloads = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


def through_wire(obj: Any) -> Any:
    return unpack(pack(obj))


@given(contexts)
def test_context_round_trips(ctx: CausalContext) -> None:
    assert decode_context(through_wire(encode_context(ctx))) == ctx


@given(
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 6)),
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 30)), max_size=40),
)
def test_a_cloud_travels_as_its_runs(vv: dict[str, int], dots: list[tuple[str, int]]) -> None:
    ctx = CausalContext(vv, [Dot(r, s) for r, s in dots])
    wire = encode_context(ctx)
    assert decode_context(through_wire(wire)) == ctx
    # Canonical: one item per maximal run of consecutive seqs, in (replica, seq) order; a
    # pair for a seq alone, [replica, first, last] with first < last for a longer run.
    items = wire[1]
    spans = [(i[0], i[1], i[-1]) for i in items]
    assert all(len(i) == 2 or (len(i) == 3 and i[1] < i[2]) for i in items)
    assert spans == sorted(spans)
    assert all(not (a[0] == b[0] and a[2] + 1 >= b[1]) for a, b in pairwise(spans))
    assert sum(last - first + 1 for _, first, last in spans) == len(ctx.cloud)


def test_a_run_that_reaches_the_version_vector_builds_no_dot() -> None:
    # A run is folded into the contiguous part it extends, whatever its length; one that
    # does not reach it is the cloud's dots, one by one.
    huge = (1 << 62) + 5
    assert decode_context([{"a": 2}, [["a", 3, huge]]]) == CausalContext({"a": huge})
    assert decode_context([{"a": 2}, [["a", 1, 9]]]) == CausalContext({"a": 9})
    assert decode_context([{"a": 9}, [["a", 3, 5]]]) == CausalContext({"a": 9})
    assert decode_context([{}, [["a", 5, 7], ["a", 2], ["a", 1], ["a", 3, 4]]]) == (
        CausalContext({"a": 7})
    )
    assert decode_context([{"b": 1}, [["a", 4, 6]]]) == CausalContext(
        {"b": 1}, [Dot("a", 4), Dot("a", 5), Dot("a", 6)]
    )
    # A version-1 cloud, dot by dot, reads as the same context.
    assert decode_context([{}, [["a", 4], ["a", 5], ["a", 6], ["b", 1]]]) == CausalContext(
        {"b": 1}, [Dot("a", 4), Dot("a", 5), Dot("a", 6)]
    )


@given(
    st.sampled_from([ORSet, LWWMap]),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
    st.lists(payloads, min_size=1, max_size=8),
)
def test_values_round_trip(
    make_simulation: Callable[..., tuple[list[DotMap[Any]], Any]],
    kind: type[DotMap[Any]],
    rnd: random.Random,
    n_ops: int,
    values: list[Any],
) -> None:
    produced, _ = make_simulation(kind, rnd, n_ops, values)
    for value in produced:
        decoded = decode_value(through_wire(encode_value(value)), expected_type=kind.type_name)
        assert type(decoded) is kind
        assert decoded == value
        assert decoded.is_delta == value.is_delta
        assert set(decoded.entries) == set(value.entries)  # empty delta entries survive too


@given(
    st.sampled_from([ORSet, LWWMap]),
    st.randoms(use_true_random=False),
    st.integers(1, 40),
)
def test_delta_batches_round_trip(
    make_simulation: Callable[..., tuple[Any, dict[str, list[DotMap[Any]]]]],
    make_batches: Callable[[Any, random.Random], list[DeltaBatch]],
    kind: type[DotMap[Any]],
    rnd: random.Random,
    n_ops: int,
) -> None:
    _, own = make_simulation(kind, rnd, n_ops)
    for batch in make_batches(own, rnd):
        wire = encode_message(batch)
        decoded = decode_message(wire)
        assert decoded == batch
        assert encode_message(decoded) == wire  # the encoding is canonical
        # How a commit logs its batch: encode_delta_batch, from its entries' bytes.
        entries = [pack(e) for e in encode_value(batch.delta)[3]]
        assert wire == encode_delta_batch(
            batch.namespace,
            batch.origin,
            batch.first,
            batch.last,
            batch.type_name,
            encode_context(batch.rest),
            entries,
        )
        # Its two forms: the rows checked on arrival, and those of the delta it came from.
        assert decoded.rows == batch.rows and decoded.newest == batch.newest
        assert (decoded.type_name, decoded.context) == (batch.type_name, batch.delta.context)
        stamps = [p[0] for e in batch.delta.entries.values() for p in e.values() if p]
        assert batch.newest == max(stamps, default=0)
        for key, ekey, position, dots, edig in batch.rows:
            assert ekey == encode_key(key)
            assert position == key_position(key)
            assert {Dot(d[0], d[1]) for d in dots} == set(batch.delta.entries[key])
            assert int.from_bytes(edig, "big") == entry_hash(key, batch.delta.entries[key])
        # Batches leave their own run (origin, first..last) out of the context they carry;
        # those written before (the delta logs of older directories) name it, and mean the
        # same batch.
        fields = unpack(wire)
        assert decode_context(fields[6][2]) == batch.rest
        fields[6][2] = encode_context(batch.delta.context)
        old = decode_message(pack(fields))
        assert old == batch and old.context == batch.context and old.rows == batch.rows


@given(
    st.sampled_from([ORSet, LWWMap]),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
    st.sampled_from([0, 1, 3, 17]),
    st.booleans(),
)
def test_range_replies_round_trip_with_their_entries_as_bytes(
    make_simulation: Callable[..., tuple[list[DotMap[Any]], Any]],
    kind: type[DotMap[Any]],
    rnd: random.Random,
    n_ops: int,
    n_answers: int,
    with_context: bool,
) -> None:
    produced, _ = make_simulation(kind, rnd, n_ops)
    deltas = [v for v in produced if v.is_delta] or [kind({}, CausalContext(), is_delta=True)]
    ranges = split_range(0, HASH_SPACE, max(n_answers, 1))[:n_answers]
    answers = []
    for i, (lo, hi) in enumerate(ranges):
        if i % 3 == 0:
            packed = PackedRange.of(deltas[i % len(deltas)])
            answers.append(RangeAnswer(lo, hi, RANGE_ENTRIES, packed=packed))
        elif i % 3 == 1:
            answers.append(RangeAnswer(lo, hi, RANGE_EQUAL, fingerprint=i, count=i))
        else:
            parts = tuple(RangeSummary(a, b, 7, 1) for a, b in split_range(lo, hi, 2))
            answers.append(RangeAnswer(lo, hi, RANGE_SPLIT, parts=parts))
    ctx = deltas[0].context if with_context else None
    reply = RangeReply(3, 2, "ns", ctx, tuple(answers))
    wire = encode_message(reply)
    # The spliced encoding is the generic one, and decodes to the reply it came from.
    assert reply.to_wire() == unpack(wire)[2:]
    assert decode_message(wire) == reply


def test_value_of_the_other_type_is_refused() -> None:
    s = ORSet().join(ORSet().add("a", "x"))
    with pytest.raises(DecodeError, match="expected a lww_map value"):
        decode_value(through_wire(encode_value(s)), expected_type="lww_map")


@given(
    st.sampled_from([ORSet, LWWMap]),
    st.randoms(use_true_random=False),
    st.integers(0, 40),
    st.integers(1, 6),
    st.data(),
)
def test_a_shipped_range_reads_as_the_state_in_it_restricted_to_the_base(
    make_simulation: Callable[..., tuple[list[DotMap[Any]], Any]],
    kind: type[DotMap[Any]],
    rnd: random.Random,
    n_ops: int,
    n_answers: int,
    data: st.DataObject,
) -> None:
    """What a session applies of a range it received: the sender's entries in it, through
    the wire, with only the dots of the session's base (each entry's dots sorted)."""
    produced, _ = make_simulation(kind, rnd, n_ops)
    state = produced[-1] if produced else kind()
    dots = sorted(state.context)
    # The base covers every dot, or only some of them.
    base = CausalContext.from_dots(data.draw(st.sets(st.sampled_from(dots))) if dots else [])
    if data.draw(st.booleans()):
        base = state.context
    for lo, hi in split_range(0, HASH_SPACE, n_answers):
        inside = {k: e for k, e in state.entries.items() if lo <= key_hash(k) < hi}
        reply = RangeReply(
            1,
            0,
            "ns",
            None,
            (
                RangeAnswer(
                    lo,
                    hi,
                    RANGE_ENTRIES,
                    packed=PackedRange.of(kind(inside, state.context, is_delta=True)),
                ),
            ),
        )
        [answer] = decode_message(encode_message(reply)).answers
        assert answer.packed is not None and answer.packed.count == len(inside)
        shipped = ShippedEntries(answer.packed, base, now_ms=0, max_drift_ms=1 << 62)
        value = shipped.value(lo, hi)
        assert type(value) is kind and value.is_delta and value.context == base
        assert value.entries == {
            k: {d: p for d, p in e.items() if d in base} for k, e in inside.items()
        }
        checked = list(shipped.checked(lo, hi))
        assert [position for _, _, position, _, _ in checked] == sorted(
            key_position(k) for k in inside
        )
        for key, _, _, row, edig in checked:
            assert row == sorted(row, key=lambda d: (d[0], d[1]))
            assert int.from_bytes(edig, "big") == entry_hash(key, [Dot(d[0], d[1]) for d in row])
