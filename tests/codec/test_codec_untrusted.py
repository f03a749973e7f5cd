"""Untrusted bytes: the decoders raise DecodeError and nothing else, and never build a
value that breaks an invariant (every live dot in the context, no dot live at two keys,
valid keys, no empty entry in a state).

Inputs: random bytes, truncations, bit flips and structural mutations of valid
encodings, nesting beyond ``max_depth``, huge declared lengths, msgpack ext types, and
hand-made wire objects for each rule (version, kind, dots outside the context, duplicate
keys, a dot at two keys, bools where ints are expected). Valid encodings still decode.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstore.codec import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MAX_CLOUD_DOTS,
    check_depth,
    decode_value,
    pack,
    unpack,
)
from crdtstore.crdt import CausalContext, Dot, DotMap, check_key
from crdtstore.errors import DecodeError
from crdtstore.sync.messages import (
    DeltaBatch,
    PackedRange,
    RangeQuery,
    RangeReply,
    RangeSummary,
    decode_message,
    encode_message,
)
from crdtstore.sync.shipped import ShippedEntries

MANY = settings(max_examples=400)


def assert_sound(value: DotMap[Any]) -> None:
    owner: dict[Dot, Any] = {}
    for key, entry in value.entries.items():
        check_key(key)
        assert entry or value.is_delta, f"state with an empty entry at {key!r}"
        for dot in entry:
            assert dot in value.context, f"live dot {dot} outside the context"
            assert owner.setdefault(dot, key) == key, f"dot {dot} live at two keys"


def check_shipped(packed: PackedRange, lo: int, hi: int) -> None:
    """Check a shipped range as a session applies it; only DecodeError may escape, and
    what it yields must be sound (every base holds every dot here: nothing is dropped)."""
    shipped = ShippedEntries(packed, CausalContext(), now_ms=0, max_drift_ms=1 << 62)
    try:
        value = shipped.value(lo, hi)
    except DecodeError:
        return
    assert_sound(type(value)(value.entries, _covering(value), is_delta=True))


def _covering(value: DotMap[Any]) -> CausalContext:
    return CausalContext.from_dots(d for e in value.entries.values() for d in e)


def decode_all_ways(data: bytes) -> None:
    """Feed ``data`` to every decoder; only DecodeError may escape, results must be sound."""
    try:
        msg = decode_message(data)
    except DecodeError:
        pass
    else:
        if isinstance(msg, DeltaBatch):
            assert_sound(msg.delta)
        if isinstance(msg, RangeReply):
            for answer in msg.answers:
                if answer.packed is not None:
                    check_shipped(answer.packed, answer.lo, answer.hi)
    try:
        value = decode_value(unpack(data))
    except DecodeError:
        pass
    else:
        assert_sound(value)
    # As a shipped range's entries (of either type, holding as many as it seems to).
    try:
        items = unpack(data)
    except DecodeError:
        items = []
    count = len(items) if isinstance(items, list) else 0
    for type_name in ("or_set", "lww_map"):
        check_shipped(PackedRange(type_name, count, data), 0, 1 << 64)


# -- byte-level attacks -------------------------------------------------------------------


@MANY
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    decode_all_ways(data)


@MANY
@given(st.data())
def test_truncated_valid_encodings_are_refused(
    valid_encodings: list[bytes], data: st.DataObject
) -> None:
    wire = data.draw(st.sampled_from(valid_encodings))
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        unpack(wire[:cut])
    decode_all_ways(wire[:cut])


@MANY
@given(st.data())
def test_bit_flipped_valid_encodings_raise_only_decode_error(
    valid_encodings: list[bytes], data: st.DataObject
) -> None:
    wire = bytearray(data.draw(st.sampled_from(valid_encodings)))
    for bit in data.draw(st.lists(st.integers(0, len(wire) * 8 - 1), min_size=1, max_size=4)):
        wire[bit // 8] ^= 1 << (bit % 8)
    decode_all_ways(bytes(wire))


# Any msgpack value, with the types and extremes that confuse typed readers.
wild = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 63), (1 << 64) - 1),
        st.sampled_from([0, 1, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -(1 << 63)]),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from(["", "a", "delta", "or_set", "lww_map", "x" * 129]),
        st.binary(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 9)), inner, max_size=4),
    ),
    max_leaves=10,
)


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            out += paths(item, (*prefix, i))
    elif isinstance(obj, dict):
        for k, item in obj.items():
            out += paths(item, (*prefix, k))
    return out


def replace_at(obj: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(obj, list):
        return [replace_at(x, rest, new) if i == head else x for i, x in enumerate(obj)]
    return {k: replace_at(v, rest, new) if k == head else v for k, v in obj.items()}


@MANY
@given(st.data())
def test_structurally_mutated_encodings_raise_only_decode_error(
    valid_encodings: list[bytes], data: st.DataObject
) -> None:
    obj = unpack(data.draw(st.sampled_from(valid_encodings)))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(obj)))
        how = data.draw(st.sampled_from(["replace", "drop", "duplicate"]))
        if how == "replace" or not where:
            obj = replace_at(obj, where, data.draw(wild))
            continue
        parent_path, last = where[:-1], where[-1]
        parent = obj
        for step in parent_path:
            parent = parent[step]
        if isinstance(parent, list):
            items = list(parent)
            if how == "drop":
                del items[last]
            else:
                items.insert(last, items[last])
            obj = replace_at(obj, parent_path, items)
    try:
        wire = pack(obj)
    except DecodeError:  # e.g. a NaN-free float is fine, but nothing else should fail here
        return
    decode_all_ways(wire)


def test_valid_encodings_still_decode(valid_encodings: list[bytes]) -> None:
    decoded_messages = ranges = 0
    for wire in valid_encodings:
        obj = unpack(wire)
        if not obj or isinstance(obj[0], list):  # a shipped range's entries
            for type_name in ("or_set", "lww_map"):
                packed = PackedRange(type_name, len(obj), wire)
                try:
                    ShippedEntries(packed, CausalContext(), 0, 1 << 62).value(0, 1 << 64)
                except DecodeError:
                    continue  # of the other type
                ranges += 1
        elif obj[0] == FORMAT_VERSION:
            assert_sound(decode_message(wire).delta)
            decoded_messages += 1
        else:
            assert_sound(decode_value(obj))
    assert decoded_messages > 0
    assert ranges >= 16  # each read as its own type (an empty one as either)


# -- limits -------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"  # [[[...[]...]]]


@pytest.mark.parametrize("depth", [DEFAULT_LIMITS.max_depth + 1, 100, 5_000, 200_000])
def test_nesting_beyond_max_depth_is_refused(depth: int) -> None:
    with pytest.raises(DecodeError):
        unpack(nested(depth))
    decode_all_ways(nested(depth))


def test_nesting_at_max_depth_is_accepted() -> None:
    assert unpack(nested(DEFAULT_LIMITS.max_depth)) is not None


@pytest.mark.parametrize(
    ("value", "depth"),
    [([], 1), ({"a": 1, "b": "x"}, 1), ([1, [2]], 2), ({"a": {"b": []}}, 3), ([[], 1], 2)],
)
def test_check_depth_counts_flat_and_nested_containers_alike(value: Any, depth: int) -> None:
    """Flat containers take a shortcut; the limit is the same for them as for the rest."""
    check_depth(value, depth)
    with pytest.raises(DecodeError, match="max_depth"):
        check_depth(value, depth - 1)


def test_deep_payload_inside_a_valid_message_is_refused(valid_encodings: list[bytes]) -> None:
    deep: Any = []
    for _ in range(DEFAULT_LIMITS.max_depth):
        deep = [deep]
    value = ["lww_map", True, [{"a": 1}, []], [["k", [["a", 1, 5, deep]]]]]
    with pytest.raises(DecodeError, match="max_depth"):
        decode_message(pack([FORMAT_VERSION, "delta", "ns", "a", 1, 1, value]))


HUGE_HEADERS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 items
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xdc\xff\xff",  # array16 of 65535 items, none present
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xdd\x00\x0f\x42\x41",  # array32 just over max_container_len
]


@pytest.mark.parametrize("header", HUGE_HEADERS, ids=lambda h: h.hex())
def test_huge_declared_lengths_are_refused_without_allocating(header: bytes) -> None:
    for data in (header, header + b"\x00" * 64, b"\x97\x01\xa5delta" + header):
        with pytest.raises(DecodeError):
            unpack(data)
        decode_all_ways(data)


def test_message_over_max_bytes_is_refused() -> None:
    from crdtstore.codec import DecodeLimits

    with pytest.raises(DecodeError, match="max_bytes"):
        decode_message(pack([FORMAT_VERSION, "delta", "x" * 100]), DecodeLimits(max_bytes=50))


EXT_ENCODINGS = [
    b"\xd4\x05\x00",  # fixext1, type 5
    b"\xd6\xff\x00\x00\x00\x01",  # fixext4, type -1: the msgpack timestamp
    b"\xd7\xff" + b"\x00" * 8,  # fixext8 timestamp
    b"\xc7\x00\x05",  # ext8 of length 0: passes max_ext_len=0, must still be refused
    b"\xc7\x0c\xff" + b"\x00" * 12,  # ext8 timestamp96
    b"\xc8\x00\x01\x07\x00",  # ext16
]


@pytest.mark.parametrize("ext", EXT_ENCODINGS, ids=lambda e: e.hex())
def test_ext_types_are_refused_anywhere(ext: bytes) -> None:
    # Alone, and as the payload of an otherwise valid LWW delta batch.
    inner = b"\x94" + pack("a") + pack(1) + pack(5) + ext  # ["a", 1, 5, <ext>]
    entry = b"\x92" + pack("k") + b"\x91" + inner
    value = b"\x94" + pack("lww_map") + pack(True) + pack([{"a": 1}, []]) + b"\x91" + entry
    message = b"\x97" + pack(FORMAT_VERSION) + pack("delta") + pack("ns") + pack("a")
    message += pack(1) + pack(1) + value
    for data in (ext, message, value):
        with pytest.raises(DecodeError):
            unpack(data)
        decode_all_ways(data)


# -- rules of the typed decoders ------------------------------------------------------------


def batch(value: Any, first: Any = 1, last: Any = 1, version: Any = FORMAT_VERSION) -> bytes:
    return pack([version, "delta", "ns", "a", first, last, value])


def lww(ctx: Any, entries: Any, delta: Any = True) -> list[Any]:
    return ["lww_map", delta, ctx, entries]


GOOD_CTX = [{"a": 2}, []]
GOOD = lww(GOOD_CTX, [["k", [["a", 1, 5, "v"]]], ["j", [["a", 2, 6, "w"]]]])


def test_the_hand_made_baseline_is_valid() -> None:
    msg = decode_message(batch(GOOD, 1, 2))
    assert msg.delta.get("k") == "v" and msg.delta.get("j") == "w"


def test_range_messages_of_an_older_key_order_are_refused_and_its_batches_read() -> None:
    """Wire format 3 moved keys between key-hash ranges (``fingerprint.key_hash``): a range
    of format 2 names other keys, and a reconciliation with it would never agree. Its
    delta batches name keys, not ranges, and old logs serve them as they are."""
    query = RangeQuery(7, 1, "ns", True, (RangeSummary(0, 1 << 63, 12345, 3),))
    wire = encode_message(query)
    assert wire[:2] == b"\x97\x03"  # [version, kind, ...]
    assert decode_message(wire) == query
    for version in (1, 2):
        for old in (b"\x97" + bytes((version,)) + wire[2:], pack([version, "range_r"])):
            with pytest.raises(DecodeError, match="key-hash ranges of another key order"):
                decode_message(old)
        assert decode_message(batch(GOOD, 1, 2, version=version)).delta.get("k") == "v"


BAD_MESSAGES = {
    "wrong version": batch(GOOD, version=FORMAT_VERSION + 1),
    "version as string": batch(GOOD, version="1"),
    "no kind": pack([FORMAT_VERSION]),
    "unknown kind": pack([FORMAT_VERSION, "gossip", "ns"]),
    "kind as int": pack([FORMAT_VERSION, 1, "ns"]),
    "not a list": pack({"version": FORMAT_VERSION}),
    "live dot outside context": batch(lww([{"a": 1}, []], [["k", [["a", 2, 5, "v"]]]])),
    "live dot outside cloud": batch(lww([{}, [["a", 3]]], [["k", [["a", 2, 5, "v"]]]]), 3, 3),
    "duplicate keys": batch(lww(GOOD_CTX, [["k", [["a", 1, 5, "v"]]], ["k", [["a", 2, 6, "w"]]]])),
    "dot live at two keys": batch(
        lww(GOOD_CTX, [["k", [["a", 1, 5, "v"]]], ["j", [["a", 1, 5, "v"]]]])
    ),
    "bool seq in dot": batch(lww(GOOD_CTX, [["k", [["a", True, 5, "v"]]]])),
    "bool timestamp": batch(lww(GOOD_CTX, [["k", [["a", 1, False, "v"]]]])),
    "bool in version vector": batch(lww([{"a": True}, []], [])),
    "bool first seq": batch(GOOD, first=True),
    "bool key": batch(lww(GOOD_CTX, [[True, [["a", 1, 5, "v"]]]])),
    "int is_delta": batch(lww(GOOD_CTX, [], delta=1)),
    "float key": batch(lww(GOOD_CTX, [[1.5, [["a", 1, 5, "v"]]]])),
    "key beyond int64": batch(lww(GOOD_CTX, [[1 << 63, [["a", 1, 5, "v"]]]])),
    "negative timestamp": batch(lww(GOOD_CTX, [["k", [["a", 1, -5, "v"]]]])),
    "zero seq dot": batch(lww(GOOD_CTX, [["k", [["a", 0, 5, "v"]]]])),
    "empty replica id": batch(lww([{"": 1}, []], [])),
    "replica id too long": batch(lww([{"r" * 129: 1}, []], [])),
    "state in a delta batch": batch(lww(GOOD_CTX, [["k", [["a", 1, 5, "v"]]]], delta=False)),
    # The origin cannot have observed its own seqs beyond its batch's last one (its own
    # first..last, implied, are all a batch's context must name of it).
    "context beyond the batch's range": batch(
        lww([{"a": 3}, []], [["k", [["a", 1, 5, "v"]]]]), 1, 2
    ),
    "empty batch range": batch(GOOD, 2, 1),
    "unknown crdt type": batch(["g_counter", True, GOOD_CTX, []]),
    "unhashable crdt type": batch([["or_set"], True, GOOD_CTX, []]),
    "set dot with payload": batch(["or_set", True, GOOD_CTX, [["k", [["a", 1, 5, "v"]]]]]),
    "stamped dot without value": batch(lww(GOOD_CTX, [["k", [["a", 1, 5]]]])),
    "extra trailing bytes": batch(GOOD, 1, 2) + b"\x00",
    "context not a pair": batch(lww([{"a": 2}], [])),
    "vv not a map": batch(lww([[["a", 2]], []], [])),
    # Runs of the cloud, [replica, first, last]: first < last, both seqs, a replica id.
    "run that is one seq": batch(lww([{"a": 2}, [["a", 5, 5]]], []), 6, 6),
    "run that goes down": batch(lww([{"a": 2}, [["a", 7, 5]]], []), 8, 8),
    "run beyond the largest seq": batch(lww([{"a": 2}, [["a", 5, 1 << 63]]], []), 6, 6),
    "bool in a run": batch(lww([{"a": 2}, [["a", True, 5]]], []), 6, 6),
    "run of an empty replica id": batch(lww([{"a": 2}, [["", 4, 5]]], []), 6, 6),
    "cloud item of four": batch(lww([{"a": 2}, [["a", 4, 5, 6]]], []), 7, 7),
    "live dot outside a run": batch(lww([{}, [["a", 3, 5]]], [["k", [["a", 2, 5, "v"]]]]), 6, 6),
    # A run is three numbers, its dots a Dot each in memory: one too long is refused
    # before any is built (built, this one would never finish).
    "run of more dots than a cloud may hold": batch(lww([{}, [["b", 2, 1 << 62]]], []), 1, 1),
    "runs together of more dots than a cloud may hold": batch(
        lww([{}, [["b", 2, 1 + MAX_CLOUD_DOTS // 2], ["c", 2, 2 + MAX_CLOUD_DOTS // 2]]], []),
        1,
        1,
    ),
}


@pytest.mark.parametrize("wire", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_each_broken_rule_raises_decode_error(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(wire)


def test_state_with_an_empty_entry_is_refused() -> None:
    with pytest.raises(DecodeError, match="empty entry"):
        decode_value(unpack(pack(["or_set", False, [{"a": 1}, []], [["k", []]]])))
    # In a delta the same empty entry means "these dots of k were removed": valid.
    assert dict(decode_value(["or_set", True, [{"a": 1}, []], [["k", []]]]).entries) == {"k": {}}


@pytest.mark.parametrize("version", [True, 1.0], ids=["bool", "float"])
def test_version_of_the_wrong_type_is_refused(version: Any) -> None:
    with pytest.raises(DecodeError):
        decode_message(batch(GOOD, 1, 2, version=version))


def test_bit_layout_of_huge_headers_is_what_the_test_claims() -> None:
    # Guard the hand-written headers above against typos: they declare what they say.
    assert struct.unpack(">I", HUGE_HEADERS[0][1:])[0] == 2**32 - 1
    assert struct.unpack(">I", HUGE_HEADERS[-1][1:])[0] == DEFAULT_LIMITS.max_container_len + 1


def _nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def _carriers(payload: Any) -> list[Callable[[], Any]]:
    """Decoding a delta batch, and checking a range reply's entries as a session applies
    them, each carrying one LWW key with ``payload``."""
    from crdtstore.crdt import LWWMap
    from crdtstore.sync.fingerprint import HASH_SPACE
    from crdtstore.sync.messages import RANGE_ENTRIES, RangeAnswer, encode_message

    ctx = CausalContext({"a": 1})
    value = LWWMap({"k": {Dot("a", 1): (5, payload)}}, ctx, is_delta=True)
    answer = RangeAnswer(0, HASH_SPACE, RANGE_ENTRIES, packed=PackedRange.of(value))
    reply = encode_message(RangeReply(1, 0, "m", ctx, (answer,)))

    def apply_range() -> Any:
        [got] = decode_message(reply).answers
        return ShippedEntries(got.packed, ctx, 0, 1 << 62).value(0, HASH_SPACE)

    return [lambda: decode_message(encode_message(DeltaBatch("m", "a", 1, 1, value))), apply_range]


def test_values_are_held_to_the_same_depth_in_every_message() -> None:
    from crdtstore.codec import MAX_VALUE_DEPTH

    # The deepest value allowed arrives whole in a batch and in a range reply alike (they
    # hold it at different depths), one level more is refused in both.
    for receive in _carriers(_nested(MAX_VALUE_DEPTH)):
        receive()
    for receive in _carriers(_nested(MAX_VALUE_DEPTH + 1)):
        with pytest.raises(DecodeError, match="nesting deeper"):
            receive()
    # A map payload with a container as a key (a tuple packs as an array) is refused too.
    for receive in _carriers({"a": [{(1, 2): 3}]}):
        with pytest.raises(DecodeError):
            receive()
