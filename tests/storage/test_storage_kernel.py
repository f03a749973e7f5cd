"""The byte-level kernel (crdtstore.storage.kernel, crdtstore.keyhash) against the pure
specification: the values of crdtstore.crdt and the hashes of crdtstore.sync.fingerprint.

Differential properties (Hypothesis): the same inputs give the same rows, hashes and
values. Rows are written in a real LMDB file, each example in a write transaction that is
aborted after.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext, Dot, LWWMap, ORSet, join_entry, make_timestamp
from crdtstore.crdt.lwwmap import winner
from crdtstore.errors import DecodeError
from crdtstore.keyhash import (
    bucket_part,
    continue_entry_hash,
    dot_packer,
    entry_digest,
    hash_key_encoding,
    new_hash,
)
from crdtstore.storage import kernel, layout
from crdtstore.sync.fingerprint import encode_key, entry_hash, key_hash

KEYS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=12),
    st.binary(max_size=12),
    # Strings ending in a decimal id: their last two digits are not in their bucket.
    st.builds(lambda p, n: f"{p}{n}", st.text(max_size=6), st.integers(0, 10**6)),
)
REPLICAS = st.sampled_from(["a", "b", "c", "ü"])
SEQS = st.integers(1, 12)


def bucket_by_the_rule(ekey: bytes) -> bytes:
    """The bucket rule, stated again: all but the last byte, or all but the last two when
    both are ASCII digits and a byte comes before them."""
    if len(ekey) >= 3 and ekey[-2:].isdigit():
        return ekey[:-2]
    return ekey[:-1]


# -- hashes ----------------------------------------------------------------------------------


@given(KEYS, st.lists(st.tuples(REPLICAS, SEQS), unique=True, max_size=4))
def test_key_and_entry_hashes_equal_the_fingerprint_module(key: Any, dots: list[Any]) -> None:
    ekey = encode_key(key)
    assert bucket_part(ekey) == bucket_by_the_rule(ekey)
    h, bucket, _ = hash_key_encoding(ekey)
    assert bucket[0] == key_hash(key) >> 56
    assert int.from_bytes(h.digest(), "big") & ((1 << 56) - 1) == key_hash(key) & ((1 << 56) - 1)
    ordered = sorted(Dot(r, s) for r, s in dots)
    want = entry_hash(key, ordered).to_bytes(8, "big")
    if ordered:
        assert continue_entry_hash(h, ordered) == want == entry_digest(ekey, ordered)
    assert layout.hash_encoded_key(ekey) == key_hash(key)


@given(REPLICAS, SEQS)
def test_an_own_dot_hashes_as_any_dot(replica: str, seq: int) -> None:
    tag, pack = dot_packer(replica)
    by_rule, own = new_hash(), new_hash()
    continue_entry_hash(by_rule, [(replica, seq)])
    own.update(pack(tag, seq))
    assert own.digest() == by_rule.digest()


# -- entries as rows and as pure values --------------------------------------------------------

# A dot's payload never changes: every (replica, seq) has one, as in the pure values.
NOW = 1_700_000_000_000  # ms: a stamp of these days is packed as a uint64


def payload(replica: str, seq: int) -> tuple[int, Any]:
    return make_timestamp(NOW + seq * 7 % 5, seq % 3), f"{replica}{seq}"


DOTS = st.sets(st.tuples(REPLICAS, SEQS), max_size=4)


@st.composite
def sides(draw: st.DrawFn) -> tuple[set[Any], CausalContext]:
    """Live dots of one key, and a context that holds them and maybe more."""
    live = draw(DOTS)
    seen = draw(DOTS) | live
    vv = draw(st.dictionaries(REPLICAS, st.integers(0, 6), max_size=2))
    return live, CausalContext(vv).join(CausalContext.from_dots(Dot(*d) for d in seen))


def stored(dots: set[Any], stamped: bool) -> list[list[Any]]:
    """Dots in a row's form, in (replica, seq) order."""
    return [[r, s, *payload(r, s)] if stamped else [r, s] for r, s in sorted(dots)]


def pure(dots: set[Any], stamped: bool) -> dict[Dot, Any]:
    return {Dot(r, s): payload(r, s) if stamped else None for r, s in dots}


def as_entry(rows: list[list[Any]], stamped: bool) -> dict[Dot, Any]:
    return {Dot(d[0], d[1]): (d[2], d[3]) if stamped else None for d in rows}


@given(sides(), sides(), st.booleans(), st.none() | st.tuples(REPLICAS, SEQS, SEQS))
def test_join_dots_is_join_entry(
    mine: tuple[set[Any], CausalContext],
    theirs: tuple[set[Any], CausalContext],
    stamped: bool,
    run: tuple[str, int, int] | None,
) -> None:
    (my_dots, my_ctx), (their_dots, their_ctx) = mine, theirs
    if not my_dots:
        return  # a row holds a dot at least: keys without one take unseen_dots
    if run is not None:
        run = (run[0], min(run[1:]), max(run[1:]))  # a batch's own dots, first..last
    spec_ctx = their_ctx if run is None else their_ctx.with_run(*run)
    want = join_entry(pure(my_dots, stamped), my_ctx, pure(their_dots, stamped), spec_ctx)
    row = stored(my_dots, stamped)
    got = kernel.join_dots(row, my_ctx, stored(their_dots, stamped), their_ctx, run)
    assert as_entry(row if got is None else got, stamped) == want
    if got:
        new = kernel.pack_row(encode_key("k"), got)
        assert new[:8] == entry_hash("k", want).to_bytes(8, "big")
        assert msgpack.unpackb(new[8:]) == stored({(d.replica, d.seq) for d in want}, stamped)


@given(sides(), sides(), st.booleans())
def test_unseen_dots_is_join_entry_with_nothing_held(
    mine: tuple[set[Any], CausalContext], theirs: tuple[set[Any], CausalContext], stamped: bool
) -> None:
    my_ctx, (their_dots, their_ctx) = mine[1], theirs
    want = join_entry({}, my_ctx, pure(their_dots, stamped), their_ctx)
    assert as_entry(kernel.unseen_dots(stored(their_dots, stamped), my_ctx), stamped) == want


@given(DOTS.filter(bool))
def test_the_winning_dot_is_lwwmap_winner(dots: set[Any]) -> None:
    won = winner(pure(dots, stamped=True))
    assert won is not None
    got = kernel.winning_dot(stored(dots, stamped=True))
    assert (Dot(got[0], got[1]), (got[2], got[3])) == won
    assert kernel.winning_value(stored(dots, stamped=True)) == won[1][1]


# -- own rows, written in LMDB ------------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> Iterator[lmdb.Environment]:
    with tempfile.TemporaryDirectory() as tmp:
        environment = lmdb.open(str(Path(tmp) / "kernel"), map_size=1 << 24)
        yield environment
        environment.close()


@given(
    key=KEYS,
    held=DOTS,
    seq=SEQS,
    ts=st.integers(make_timestamp(NOW), make_timestamp(NOW + 2)),
    value=st.one_of(st.integers(), st.text(max_size=4), st.none()),
    stamped=st.booleans(),
)
def test_an_own_row_is_what_the_pure_mutator_leaves(
    env: lmdb.Environment, key: Any, held: set[Any], seq: int, ts: int, value: Any, stamped: bool
) -> None:
    """A local put or add over a row holding ``held``: the row written is the entry the
    pure put or add leaves, byte for byte the row of those dots; a put's stamp is above
    the stamps it replaces."""
    me = "me"
    ekey = encode_key(key)
    rkey = layout.row_key(1, key_hash(key), ekey)
    pack = msgpack.Packer(use_bin_type=True).pack
    own = kernel.OwnDots(me, pack)
    before = pure(held, stamped)
    state = (LWWMap if stamped else ORSet)(
        {key: before} if before else {}, CausalContext.from_dots(before)
    )
    txn = env.begin(write=True)
    try:
        if held:
            txn.put(rkey, kernel.pack_row(ekey, stored(held, stamped)))
        h = hash_key_encoding(ekey)[0]
        if stamped:
            old, dots, digest, new, stamp = kernel.write_stamped(
                txn, rkey, h, own, seq, ts, pack(value)
            )
            assert stamp == max([ts, *(p[0] + 1 for p in before.values())])
            delta = state.put(me, key, value, stamp)  # type: ignore[attr-defined]
        else:
            old, dots, digest, new = kernel.write_own(txn, rkey, h, own, seq)
            delta = state.add(me, key)  # type: ignore[attr-defined]
        row = digest + new
        assert txn.get(rkey) == row
    finally:
        txn.abort()
    assert (old is None) == (not held)
    assert as_entry(dots, stamped) == before
    after = state.join(delta).entries[key]
    ((dot, written),) = after.items()  # the pure mutator's dot: the next of ``me``
    assert dot.replica == me
    want = [[me, seq, *written]] if stamped else [[me, seq]]
    assert row == kernel.pack_row(ekey, want)


@pytest.mark.parametrize("stamped", [True, False])
def test_an_own_write_over_a_corrupt_row_leaves_it(env: lmdb.Environment, stamped: bool) -> None:
    rkey, corrupt = b"\0\0\0\1k", bytes(8) + msgpack.packb([["a", "one"]])
    own = kernel.OwnDots("me", msgpack.Packer().pack)
    txn = env.begin(write=True)
    try:
        txn.put(rkey, corrupt)
        h = hash_key_encoding(b"k")[0]
        with pytest.raises(DecodeError):
            if stamped:
                kernel.write_stamped(txn, rkey, h, own, 1, make_timestamp(NOW), b"\x01")
            else:
                kernel.write_own(txn, rkey, h, own, 1)
        assert txn.get(rkey) == corrupt
    finally:
        txn.abort()


# -- bucket checksums ---------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 5), st.none() | DOTS.filter(bool)), max_size=20))
def test_tallies_sum_to_the_fingerprint_of_the_rows_left(changes: list[Any]) -> None:
    """Any sequence of row replacements, tallied, moves each bucket by the XOR and count
    of the rows it ends with (``fingerprint``: XOR of entry hashes, count of live keys)."""
    rows: dict[int, bytes] = {}
    buckets: dict[int, list[int]] = {}
    for key, dots in changes:
        new = None if dots is None else kernel.pack_row(encode_key(key), stored(dots, False))
        code = key_hash(key) >> 56
        kernel.tally(buckets, code, rows.get(key), new)
        if new is None:
            rows.pop(key, None)
        else:
            rows[key] = new
    for code in {key_hash(key) >> 56 for key, _ in changes}:
        held = [row for key, row in rows.items() if key_hash(key) >> 56 == code]
        want = 0
        for row in held:
            want ^= layout.row_hash(row)
        assert tuple(buckets.get(code, (0, 0))) == (want, len(held))
