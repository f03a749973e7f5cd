"""A shipped range's entries, checked where they are applied (crdtstore.sync.shipped).

A baseline range that passes, then each rule broken by hand: every break raises
DecodeError (ClockDriftError for the clock), and the checks agree with the value path.
"""

from __future__ import annotations

from typing import Any

import pytest

from crdtstore.codec import MAX_VALUE_DEPTH, pack
from crdtstore.crdt import CausalContext, Dot, LWWMap, ORSet, make_timestamp
from crdtstore.errors import ClockDriftError, DecodeError
from crdtstore.sync.fingerprint import HASH_SPACE, encode_key, entry_hash, key_hash, key_position
from crdtstore.sync.messages import PackedRange
from crdtstore.sync.shipped import ShippedEntries

NOW = 1_700_000_000_000
TS = make_timestamp(NOW)
BASE = CausalContext({"a": 10, "b": 10})


def in_order(*keys: Any) -> list[Any]:
    return sorted(keys, key=key_position)


def lww(entries: list[Any], count: int | None = None) -> ShippedEntries:
    data = pack(entries)
    n = len(entries) if count is None else count
    return ShippedEntries(PackedRange("lww_map", n, data), BASE, NOW, 1000)


def baseline() -> list[Any]:
    k1, k2, k3 = in_order("x", "y12", 7)  # y12: a bucket of all but two digits
    return [
        [k1, [["a", 1, TS, "v1"]]],
        [k2, [["b", 2, TS + 1, {"nested": [1, 2]}], ["a", 2, TS, None]]],
        [k3, [["a", 3, TS, b"bytes"]]],
    ]


def test_the_baseline_passes_with_each_entry_in_its_row_form() -> None:
    got = list(lww(baseline()).checked(0, HASH_SPACE))
    assert [key for key, *_ in got] == [e[0] for e in baseline()]
    for key, ekey, position, dots, edig in got:
        assert ekey == encode_key(key)
        assert position == key_position(key)
        assert dots == sorted(dots, key=lambda d: (d[0], d[1]))
        assert int.from_bytes(edig, "big") == entry_hash(key, [Dot(d[0], d[1]) for d in dots])
    assert got[1][3] == [["a", 2, TS, None], ["b", 2, TS + 1, {"nested": [1, 2]}]]


def _broken(rule: str) -> tuple[list[Any], int | None, tuple[int, int]]:
    """The baseline with ``rule`` broken: entries, declared count, range."""
    entries, count, bounds = baseline(), None, (0, HASH_SPACE)
    if rule == "out of order":
        entries[0], entries[1] = entries[1], entries[0]
    elif rule == "repeated key":
        entries.insert(1, [entries[0][0], [["b", 9, TS, 1]]])
    elif rule == "outside its range":
        bounds = (key_hash(entries[0][0]) + 1, HASH_SPACE)
    elif rule == "outside its range, at its end":
        bounds = (0, key_hash(entries[-1][0]))
    elif rule == "outside its range, in a bucket below":
        bounds = (((key_hash(entries[0][0]) >> 56) + 1) << 56, HASH_SPACE)
    elif rule == "count":
        count = 4
    elif rule == "dot at two keys":
        entries[2][1] = [["a", 1, TS, "again"]]
    elif rule == "same dot twice in an entry":
        entries[0][1] = [["a", 1, TS, "v"], ["a", 1, TS, "v"]]
    elif rule == "dot width":
        entries[0][1] = [["a", 1, TS]]
    elif rule == "seq 0":
        entries[0][1] = [["a", 0, TS, "v"]]
    elif rule == "bool seq":
        entries[0][1] = [["a", True, TS, "v"]]
    elif rule == "empty replica":
        entries[0][1] = [["", 1, TS, "v"]]
    elif rule == "negative timestamp":
        entries[0][1] = [["a", 1, -1, "v"]]
    elif rule == "deep value":
        deep: Any = 0
        for _ in range(MAX_VALUE_DEPTH + 1):
            deep = [deep]
        entries[0][1] = [["a", 1, TS, deep]]
    elif rule == "list as key":
        entries[0][0] = [1, 2]
    elif rule == "entry shape":
        entries[0] = [entries[0][0]]
    elif rule == "not a list":
        entries = {"not": "a list"}  # type: ignore[assignment]
        count = 1
    return entries, count, bounds


RULES = [
    "out of order",
    "repeated key",
    "outside its range",
    "outside its range, at its end",
    "outside its range, in a bucket below",
    "count",
    "dot at two keys",
    "same dot twice in an entry",
    "dot width",
    "seq 0",
    "bool seq",
    "empty replica",
    "negative timestamp",
    "deep value",
    "list as key",
    "entry shape",
    "not a list",
]


@pytest.mark.parametrize("rule", RULES)
def test_each_broken_rule_raises_decode_error(rule: str) -> None:
    entries, count, (lo, hi) = _broken(rule)
    shipped = lww(entries, count)
    with pytest.raises(DecodeError):
        list(shipped.checked(lo, hi))
    with pytest.raises(DecodeError):
        shipped.value(lo, hi)


def test_a_timestamp_too_far_ahead_raises_clock_drift() -> None:
    entries = baseline()
    entries[2][1] = [["a", 3, make_timestamp(NOW + 1001), "from the future"]]
    with pytest.raises(ClockDriftError, match="max_clock_drift_ms=1000"):
        list(lww(entries).checked(0, HASH_SPACE))
    entries[2][1] = [["a", 3, make_timestamp(NOW + 1000, 65535), "at the limit"]]
    assert len(list(lww(entries).checked(0, HASH_SPACE))) == 3


def test_only_the_dots_of_the_base_are_taken() -> None:
    entries = baseline()
    entries[0][1] = [["a", 11, TS, "after the base"], ["b", 3, TS, "in it"]]
    value = lww(entries).value(0, HASH_SPACE)
    assert isinstance(value, LWWMap) and value.context == BASE and value.is_delta
    assert value.entries[entries[0][0]] == {Dot("b", 3): (TS, "in it")}
    # A key none of whose dots the base holds stays, empty: the delta's meaning of "the
    # sender no longer holds what the base saw of it".
    entries[0][1] = [["c", 1, TS, "unknown writer"]]
    assert lww(entries).value(0, HASH_SPACE).entries[entries[0][0]] == {}


def test_an_or_set_range_is_read_as_one() -> None:
    k1, k2 = in_order("p", b"q")
    packed = PackedRange("or_set", 2, pack([[k1, [["a", 1]]], [k2, [["b", 1], ["a", 2]]]]))
    value = ShippedEntries(packed, BASE, NOW, 1000).value(0, HASH_SPACE)
    assert isinstance(value, ORSet) and set(value) == {"p", b"q"}
    with pytest.raises(DecodeError):  # the LWW-map's dots are not an OR-Set's
        list(
            ShippedEntries(PackedRange("or_set", 3, pack(baseline())), BASE, NOW, 1).checked(
                0, HASH_SPACE
            )
        )
