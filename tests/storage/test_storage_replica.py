"""LMDBReplica against the Replica contract and, differentially, against the pure types."""

from __future__ import annotations

import gc
import hashlib
import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crdtstore import inspect
from crdtstore.codec import unpack
from crdtstore.crdt import CausalContext, Dot, DotMap, LWWMap, ORSet, join_entry, make_timestamp
from crdtstore.crdt.lwwmap import winner
from crdtstore.errors import (
    ClockDriftError,
    DecodeError,
    IdentityMismatch,
    InvalidValue,
    StorageError,
    TypeMismatch,
)
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica, layout, receive
from crdtstore.storage.replica import wall_ms
from crdtstore.sync.fingerprint import (
    HASH_SPACE,
    entry_hash,
    fingerprint,
    key_hash,
    key_position,
    split_range,
)
from crdtstore.sync.messages import DeltaBatch, PackedRange, decode_message, encode_message
from crdtstore.sync.shipped import ShippedEntries

Make = Callable[..., LMDBReplica]
ALL = (0, HASH_SPACE)


def received(value: DotMap[Any], base: CausalContext, max_drift_ms: int = 60_000) -> ShippedEntries:
    """``value``'s entries as a session hands them over: packed by the sender, unchecked,
    to be judged by the session's ``base``."""
    return ShippedEntries(PackedRange.of(value), base, wall_ms(), max_drift_ms)


def restricted(value: DotMap[Any], base: CausalContext) -> DotMap[Any]:
    """The pure meaning of a shipped range: its entries, with only the dots ``base``
    holds, as a delta carrying ``base``."""
    entries = {k: {d: p for d, p in e.items() if d in base} for k, e in value.entries.items()}
    return type(value)(entries, base, is_delta=True)


def batch_of(ns: str, origin: str, delta: DotMap[Any]) -> tuple[DeltaBatch, bytes]:
    seqs = [d.seq for d in delta.context if d.replica == origin]
    batch = DeltaBatch(ns, origin, min(seqs), max(seqs), delta)
    return batch, encode_message(batch)


def live(value: DotMap[Any]) -> dict[Any, dict[Dot, Any]]:
    return {k: dict(e) for k, e in value.entries.items() if e}


def state_of(replica: LMDBReplica, ns: str) -> dict[Any, dict[Dot, Any]]:
    return live(replica.read_range(ns, *ALL))


def local(replica: LMDBReplica, *ops: tuple[Any, ...]) -> None:
    w = replica.begin_local()
    for name, *args in ops:
        getattr(w, name)(*args)
    w.commit()


# -- examples that document the contract ---------------------------------------------------


HASH_CASES = ["a", b"a", 0, 48, -5, 2**40, "ключ", "user:1234", b"99", 12336]
"""Keys whose buckets hash all but one byte or, ending in two ASCII digits, all but two."""


def test_key_and_entry_hashes_equal_the_fingerprint_module() -> None:
    for key in HASH_CASES:
        ekey = layout.pack_key(key)
        assert layout.hash_encoded_key(ekey) == key_hash(key)
        assert layout.key_bucket(ekey) == key_hash(key) >> 56
        # Reconciliation order: the hash's first byte, then the key (a row key's suffix).
        position = key_hash(key).to_bytes(8, "big")[:1] + ekey
        assert layout.row_key(7, key_hash(key), ekey) == layout.ns_prefix(7) + position
        assert layout.row_key_suffix(ekey) == key_position(key) == position
        dots = [Dot("b", 3), Dot("a", 1)]
        assert layout.entry_hash_encoded(ekey, dots) == entry_hash(key, dots)


def test_a_write_puts_each_row_where_reconciliation_order_has_it(make_replica: Make) -> None:
    """Local writes place a row by keyhash.hash_key_encoding; reads, scans and fingerprints
    find it by the reconciliation order of the fingerprint module. Bucket counts must
    agree too."""
    a = make_replica("a")
    local(a, *[("add", "s", k) for k in HASH_CASES], *[("put", "m", k, 1) for k in HASH_CASES])
    for ns, tname in (("s", "or_set"), ("m", "lww_map")):
        prefix = layout.ns_prefix(a.namespace_id(ns, tname))
        for key in HASH_CASES:
            assert a.get_row(prefix + key_position(key)) is not None, (ns, key)
        buckets = [a.fingerprints(ns, [(b << 56, (b + 1) << 56)])[0][1] for b in range(256)]
        assert buckets == [sum(key_hash(k) >> 56 == b for k in HASH_CASES) for b in range(256)]


def test_one_commit_logs_one_batch_per_namespace(make_replica: Make) -> None:
    r = make_replica("a")
    local(r, ("put", "m", "k", 1), ("put", "m", "k", 2), ("put", "m", "j", 3), ("add", "s", "x"))
    assert r.context("m") == CausalContext({"a": 3})
    (raw,) = r.log_batches("m", "a", 1, 3) or []
    batch = decode_message(raw)
    assert (batch.namespace, batch.origin, batch.first, batch.last) == ("m", "a", 1, 3)
    # The batch is the join of the three deltas: applying it to an empty peer gives the state.
    assert live(LWWMap().join(batch.delta)) == state_of(r, "m")
    assert r.log_batches("s", "a", 1, 1) is not None
    assert r.namespaces() == {"m": "lww_map", "s": "or_set"}


def test_apply_batch_joins_logs_and_ignores_a_replay(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(b, ("add", "s", "x"), ("add", "s", "y"))
    (raw,) = b.log_batches("s", "b", 1, 2) or []
    batch = decode_message(raw)
    assert a.apply_batch(batch, raw) is True
    assert set(state_of(a, "s")) == {"x", "y"}
    assert a.log_batches("s", "b", 1, 2) == [raw]
    assert a.apply_batch(batch, raw) is False  # every dot already seen: nothing changes
    assert a.context("s") == b.context("s")


def test_remove_of_entry_both_sides_saw_is_not_lost(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, ("add", "s", "x"))
    (raw,) = a.log_batches("s", "a", 1, 1) or []
    b.apply_batch(decode_message(raw), raw)
    local(b, ("remove", "s", "x"))
    (raw2,) = b.log_batches("s", "b", 1, 1) or []
    assert a.apply_batch(decode_message(raw2), raw2)
    assert state_of(a, "s") == {}


def test_log_batches_covers_with_overlaps_and_reports_holes(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    for i in range(6):
        local(b, ("add", "s", i))
    raws = [b.log_batches("s", "b", i, i)[0] for i in range(1, 7)]  # type: ignore[index]
    for i in (0, 1, 2, 4, 5):  # seq 4 is missing
        a.apply_batch(decode_message(raws[i]), raws[i])
    assert a.log_batches("s", "b", 1, 3) == raws[:3]
    assert a.log_batches("s", "b", 2, 6) is None
    assert a.log_batches("s", "b", 5, 6) == raws[4:]
    assert a.log_batches("nope", "b", 1, 1) is None
    assert a.trim_log("s", "b", 2) == 2
    assert a.log_batches("s", "b", 1, 3) is None
    assert a.log_batches("s", "b", 3, 3) == raws[2:3]


def test_bound_log_drops_oldest_in_append_order(make_replica: Make) -> None:
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    local(b, ("add", "s", 1))
    local(c, ("add", "s", 2))
    local(b, ("add", "s", 3))
    rb1, rb2 = b.log_batches("s", "b", 1, 2) or []
    (rc1,) = c.log_batches("s", "c", 1, 1) or []
    for raw in (rb2, rc1, rb1):  # append order: b2, c1, b1
        a.apply_batch(decode_message(raw), raw)
    assert a.bound_log("s", 2) == 1
    assert a.log_batches("s", "b", 2, 2) is None
    assert a.log_batches("s", "c", 1, 1) == [rc1]
    assert a.log_batches("s", "b", 1, 1) == [rb1]
    assert a.bound_log("s", 2) == 0
    assert a.bound_log("s", 0) == 2
    assert a.log_batches("s", "b", 1, 1) is None


def _as_wire(encoded: bytes, version: int) -> bytes:
    """A delta batch of wire format 3 as format ``version`` (2 or 1) wrote it: the same,
    for a batch without runs (as the tests' batches are); ranges changed in 3, runs in 2."""
    assert encoded[:2] == b"\x97\x03"  # [version, kind, ...]
    return b"\x97" + bytes((version,)) + encoded[2:]


def _whole_key_hash(ekey: bytes) -> bytes:
    """The key hash up to format 5 (wire format 2): blake2b of the whole encoded key."""
    return hashlib.blake2b(ekey, digest_size=8).digest()


def _downgrade(path: Path, to: int) -> None:
    """Rewrite a directory the way format ``to`` (5, 4, 3, 2 or 1) stored it: state rows
    and bucket rows by the whole key's hash, logged batches of wire format 2 (for 5) or 1;
    up to 3, state rows keyed by all of that hash; for 2, the contexts in a table of their
    own; for 1, the log counts in meta as well."""
    env = lmdb.open(str(path), max_dbs=len(layout.TABLES) + 2)
    meta, order, state = env.open_db(b"meta"), env.open_db(b"logorder"), env.open_db(b"state")
    logdb, bucketdb = env.open_db(b"log"), env.open_db(b"buckets")
    with env.begin(write=True) as txn:
        for key, value in [(bytes(k), bytes(v)) for k, v in txn.cursor(db=logdb)]:
            head = len(value) - len(layout.unpack_log(value)[2])
            txn.put(key, value[:head] + _as_wire(value[head:], 2 if to == 5 else 1), db=logdb)
        rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=state)]
        txn.drop(state, delete=False)
        txn.drop(bucketdb, delete=False)
        buckets: dict[bytes, tuple[int, int]] = {}
        for key, value in rows:
            ekey = key[layout.ROW_EKEY :]
            khash = _whole_key_hash(ekey)
            txn.put(key[:4] + (khash if to <= 3 else khash[:1]) + ekey, value, db=state)
            fp, count = buckets.get(key[:4] + khash[:1], (0, 0))
            buckets[key[:4] + khash[:1]] = (fp ^ layout.row_hash(value), count + 1)
        for bkey, (fp, count) in buckets.items():
            txn.put(bkey, layout.BUCKET_ROW.pack(fp, count), db=bucketdb)
        txn.put(layout.META_FORMAT, layout.u64(to), db=meta)
    if to >= 3:
        env.close()
        return
    contexts = env.open_db(layout.V2_CONTEXT_TABLE)
    with env.begin(write=True) as txn:
        rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=order)]
        for key, value in rows:
            serial = layout.read_u64(key, 4)
            if serial == layout.CONTEXT_SERIAL:
                txn.delete(key, db=order)
                txn.put(key[:4], value, db=contexts)
            elif serial == layout.LOG_COUNT_SERIAL and to == 1:
                txn.delete(key, db=order)
                txn.put(layout.META_V1_LOG_COUNT + key[:4], value, db=meta)
        if to == 1:
            txn.put(layout.META_V1_LOG_SERIAL, layout.u64(99), db=meta)
        txn.put(layout.META_FORMAT, layout.u64(to), db=meta)
    env.close()


@pytest.mark.parametrize("old_format", [1, 2, 3, 4, 5])
def test_an_older_directory_is_migrated_on_open(tmp_path: Path, old_format: int) -> None:
    path = tmp_path / "old"
    a = LMDBReplica(path, "a")
    b = LMDBReplica(tmp_path / "b", "b")
    local(a, ("add", "s", 1))
    local(a, ("put", "m", "k", 1))
    w = a.begin_local()
    for i in range(100, 400):  # rows enough to fill pages, and int and str keys
        w.add("t", i) if i % 2 else w.put("n", f"key{i}", [i])
    w.commit()
    local(b, ("add", "s", 2))
    (raw,) = b.log_batches("s", "b", 1, 1) or []
    a.apply_batch(decode_message(raw), raw)
    contexts = {ns: a.context(ns) for ns in ("s", "m")}
    assert contexts["s"] == CausalContext({"a": 1, "b": 1})
    names = ("s", "m", "t", "n")
    states = {ns: state_of(a, ns) for ns in names}
    fingerprints = {ns: a.fingerprints(ns, split_range(*ALL, 16)) for ns in names}
    a.close()
    _downgrade(path, old_format)
    with pytest.raises(SystemExit, match=f"storage format {old_format}"):
        inspect.Snapshot(str(path))  # read-only: it cannot migrate, so it says so
    a = LMDBReplica(path, "a")
    with a.env.begin() as txn:
        meta = a.dbs["meta"]
        assert layout.read_u64(txn.get(layout.META_FORMAT, db=meta)) == layout.FORMAT_VERSION
        assert txn.get(layout.META_V1_LOG_SERIAL, db=meta) is None
        assert txn.get(layout.V2_CONTEXT_TABLE) is None  # the old table is gone
    assert {ns: a.context(ns) for ns in ("s", "m")} == contexts
    assert {ns: state_of(a, ns) for ns in names} == states
    assert {ns: a.fingerprints(ns, split_range(*ALL, 16)) for ns in names} == fingerprints
    suffix = layout.row_key_suffix(layout.pack_key("key102"))
    assert a.get_row(layout.ns_prefix(a.namespace_id("n", "lww_map")) + suffix) is not None
    local(a, ("add", "s", 3))  # logged after the migrated rows, in append order
    assert a.context("s") == CausalContext({"a": 2, "b": 1})
    assert a.bound_log("m", 1) == 0 and a.bound_log("s", 2) == 1
    assert a.log_batches("s", "a", 1, 1) is None  # the oldest went first
    logged = _as_wire(raw, 2 if old_format == 5 else 1)
    assert a.log_batches("s", "b", 1, 1) == [logged]  # served as it was logged,
    assert decode_message(logged) == decode_message(raw)  # and read as before
    assert a.bound_log("s", 0) == 2 and a.bound_log("m", 0) == 1
    assert a.context("s") == CausalContext({"a": 2, "b": 1})  # bounding the log kept it
    local(a, ("add", "s", 4))
    assert a.log_batches("s", "a", 3, 3) is not None
    a.close()
    b.close()
    snap = inspect.Snapshot(str(path))
    try:
        assert inspect.summary(snap)["namespaces"]["s"]["context"]["vv"] == {"a": 3, "b": 1}
    finally:
        snap.close()


Hashed = dict[str, list[tuple[int, Any, dict[Dot, Any]]]]
"""Per namespace: ``(key_hash(key), key, entry)`` of every live key of a replica that the
tests using it only read (so it is built, read and hashed once per module)."""


def hashed_state(replica: LMDBReplica) -> Hashed:
    return {
        ns: [(key_hash(k), k, e) for k, e in state_of(replica, ns).items()] for ns in ("s", "m")
    }


@pytest.fixture(scope="module")
def fingerprinted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LMDBReplica, Hashed]]:
    """A replica of 300 writes and a remove, with its state hashed (built once: the
    examples below vary only the ranges they read)."""
    r = LMDBReplica(tmp_path_factory.mktemp("fp") / "a", "a", NodeSettings(durability="async"))
    w = r.begin_local()
    for i in range(300):
        w.add("s", i) if i % 3 else w.put("m", i, i)
    w.remove("s", 4)
    w.commit()
    yield r, hashed_state(r)
    r.close()


@given(st.lists(st.integers(0, HASH_SPACE - 1), min_size=2, max_size=8))
def test_fingerprints_match_the_pure_definition(
    fingerprinted: tuple[LMDBReplica, Hashed], bounds: list[int]
) -> None:
    r, state = fingerprinted
    cuts = sorted({0, HASH_SPACE, *bounds})
    ranges = list(itertools.pairwise(cuts)) + split_range(0, HASH_SPACE, 16)
    for ns in ("s", "m"):
        want = [fingerprint((k, e) for h, k, e in state[ns] if lo <= h < hi) for lo, hi in ranges]
        assert r.fingerprints(ns, ranges) == want


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LMDBReplica, Hashed]]:
    """A replica with about 6 rows in every bucket of each namespace, with its state hashed
    (built once: the examples only read it)."""
    r = LMDBReplica(tmp_path_factory.mktemp("crowded") / "a", "a", NodeSettings(durability="async"))
    w = r.begin_local()
    for i in range(3000):
        w.add("s", i) if i % 2 else w.put("m", f"k{i}", i)
    w.commit()
    yield r, hashed_state(r)
    r.close()


BUCKET_WIDTH = HASH_SPACE >> 8


@given(
    bucket=st.integers(0, 254),
    offsets=st.lists(st.integers(0, 2 * BUCKET_WIDTH - 1), min_size=2, max_size=6, unique=True),
    gaps=st.booleans(),
)
@example(bucket=0, offsets=[0, BUCKET_WIDTH // 3], gaps=False)  # from a bucket's start
@example(bucket=7, offsets=[BUCKET_WIDTH // 3, BUCKET_WIDTH], gaps=False)  # to its end
@example(bucket=7, offsets=[5, 9], gaps=False)  # inside it
@example(bucket=3, offsets=[0, BUCKET_WIDTH * 3 // 2], gaps=False)  # a whole bucket, half one
@example(bucket=3, offsets=[BUCKET_WIDTH // 2, BUCKET_WIDTH * 2], gaps=False)  # the mirror
def test_ranges_that_cut_buckets_read_and_apply_only_their_keys(
    crowded: tuple[LMDBReplica, Hashed], bucket: int, offsets: list[int], gaps: bool
) -> None:
    # A bucket's rows are in key order, so a range that cuts it picks its keys by hash.
    ranges = list(itertools.pairwise(sorted(bucket * BUCKET_WIDTH + o for o in offsets)))
    ranges = ranges[::2] if gaps else ranges
    replica, state = crowded
    with tempfile.TemporaryDirectory() as tmp:
        target = LMDBReplica(Path(tmp) / "b", "b", NodeSettings(durability="async"))
        try:
            for ns in ("s", "m"):
                inside = [{k: e for h, k, e in state[ns] if lo <= h < hi} for lo, hi in ranges]
                assert replica.fingerprints(ns, ranges) == [fingerprint(i.items()) for i in inside]
                for (lo, hi), want in zip(ranges, inside, strict=True):
                    shipped = replica.read_range(ns, lo, hi)
                    assert live(shipped) == want
                    assert replica.read_range_packed(ns, lo, hi, None) == PackedRange.of(shipped)
                    target.apply_range(ns, lo, hi, shipped)
                assert state_of(target, ns) == {k: e for i in inside for k, e in i.items()}
        finally:
            target.close()


def test_apply_range_tells_removed_there_from_not_yet_seen(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, ("add", "s", "both"), ("add", "s", "mine"))
    for raw in a.log_batches("s", "a", 1, 1) or []:
        b.apply_batch(decode_message(raw), raw)
    local(b, ("remove", "s", "both"), ("add", "s", "theirs"))
    shipped = b.read_range("s", *ALL)
    a.apply_range("s", *ALL, shipped)
    # "both" was removed at b (its dot is in b's context); "mine" b has not seen: kept.
    assert set(state_of(a, "s")) == {"mine", "theirs"}
    # Only the dots received joined the context so far; merge_context adds the rest.
    assert Dot("b", 1) not in a.context("s")
    a.merge_context("s", shipped.context)
    assert a.context("s") == a.context("s").join(b.context("s"))
    assert Dot("b", 1) in a.context("s")


def test_a_packed_range_is_the_encoded_read_range_and_stops_past_its_budget(
    make_replica: Make,
) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, *[("put", "m", f"k{i}", {"v": "x" * 100, "i": i}) for i in range(20)])
    local(b, ("put", "m", "k3", "theirs"), ("add", "s", 7), ("add", "s", b"e"))
    a.apply_batch(*batch_of("m", "b", b.read_range("m", *ALL)))
    local(a, ("delete", "m", "k4"), ("add", "s", "x"), ("remove", "s", "x"), ("add", "s", 9))
    for ns in ("m", "s"):
        for lo, hi in [ALL, *split_range(*ALL, 4)]:
            packed = a.read_range_packed(ns, lo, hi, None)
            assert packed is not None
            expected = a.read_range(ns, lo, hi)
            assert (packed.type_name, packed.count) == (expected.type_name, len(expected.entries))
            # What a receiver checks it against: order, range, types (checked() raises).
            got = ShippedEntries(packed, expected.context, wall_ms(), 1000).value(lo, hi)
            assert live(got) == live(expected)
            assert packed == PackedRange.of(expected)  # as the in-memory replica packs it
            assert a.read_range_packed(ns, lo, hi, len(packed.data)) == packed
    whole = a.read_range_packed("m", *ALL, None)
    assert whole is not None and len(whole.data) > 20 * 100
    assert a.read_range_packed("m", *ALL, len(whole.data) - 1) is None
    empty = a.read_range_packed("m", 0, 1, 10**9)  # a range holding nothing
    assert empty is not None and empty.count == 0 and unpack(empty.data) == []


def test_apply_range_rejects_a_key_outside_the_range(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(b, ("add", "s", "x"))
    h = key_hash("x")
    with pytest.raises(InvalidValue):
        a.apply_range("s", h + 1, HASH_SPACE, b.read_range("s", *ALL))
    assert a.namespaces() == {}  # nothing was written, not even the namespace


def test_remote_timestamp_too_far_ahead_is_rejected(make_replica: Make) -> None:
    a = make_replica("a", max_clock_drift_ms=1000)
    future = make_timestamp(wall_ms() + 10_000)
    delta = LWWMap().put("b", "k", "v", future)
    batch, raw = batch_of("m", "b", delta)
    with pytest.raises(ClockDriftError):
        a.apply_batch(batch, raw)
    assert a.stats["rejected_clock_drift"] == 1
    assert a.namespaces() == {}


def test_a_received_range_is_checked_where_it_is_applied(make_replica: Make) -> None:
    """A range's entries are checked only when the session applies them: a key outside
    its range, or a timestamp too far ahead, refuses the whole session's apply, writing
    nothing (not even the namespace)."""
    a, b = make_replica("a"), make_replica("b")
    local(b, ("add", "s", "x"))
    shipped = b.read_range("s", *ALL)
    with pytest.raises(DecodeError, match="outside its range"):
        a.apply_ranges(
            "s",
            [(key_hash("x") + 1, HASH_SPACE, received(shipped, shipped.context))],
            shipped.context,
        )
    future = LWWMap().put("b", "k", "v", make_timestamp(wall_ms() + 10_000))
    with pytest.raises(ClockDriftError):
        a.apply_ranges("m", [(*ALL, received(future, future.context, 1000))], future.context)
    assert a.namespaces() == {}


@pytest.mark.parametrize(
    ("op", "garbage"),
    [
        ("put", b"\xc1"),  # not msgpack
        ("put", layout.pack({"a": 1})),  # not a list of dots
        ("put", layout.pack([])),  # no dot
        ("put", layout.pack([["a"]])),  # a dot without its seq, stamp and value
        ("put", layout.pack([["a", 1, "noon", 1]])),  # a stamp that is not a number
        ("put", layout.pack([[["a"], 1, 5, 1]])),  # a replica that is not a string
        ("put", layout.pack([["a", "one", 5, 1]])),  # a seq that is not a number
        ("put", layout.pack([["a", 1, 5, 1], 7])),  # a good dot, then one that is no list
        ("add", b"\xc1"),
        ("add", layout.pack([["a"]])),
        ("add", layout.pack([["a", 1], [{"b": 1}, 2]])),  # a good dot, then a bad replica
        ("add", layout.pack([["a", None]])),  # a seq that is not a number
        ("delete", layout.pack([["a", "one", 5, 1]])),
        ("remove", layout.pack([[["a"], 1]])),
    ],
)
def test_a_write_over_a_corrupt_row_fails_and_leaves_it_as_it_was(
    make_replica: Make, op: str, garbage: bytes
) -> None:
    # The write replaces the row and reads the old one in one step: on a corrupt old row
    # it must put it back, so the transaction can go on as if the write never happened.
    r = make_replica("a")
    ns, tname = ("m", "lww_map") if op in ("put", "delete") else ("s", "or_set")
    args: tuple[Any, ...] = (1,) if op == "put" else ()
    other = next(j for j in range(100) if key_hash(j) >> 56 != key_hash("k") >> 56)
    for key in ("k", other):  # a delete or remove needs something to take away
        local(r, ("put", ns, key, 1) if tname == "lww_map" else ("add", ns, key))
    rkey = layout.ns_prefix(r.namespace_id(ns, tname)) + layout.row_key_suffix(layout.pack_key("k"))
    with r.env.begin(write=True, db=r.dbs["state"]) as txn:
        corrupt = bytes(txn.get(rkey))[:8] + garbage
        txn.put(rkey, corrupt)
    bucket = key_hash("k") >> 56 << 56
    here = [(bucket, bucket + (1 << 56))]
    before = r.fingerprints(ns, here)
    w = r.begin_local()
    with pytest.raises(DecodeError):
        getattr(w, op)(ns, "k", *args)
    getattr(w, op)(ns, other, *args)
    w.commit()
    assert r.get_row(rkey) == corrupt
    assert r.fingerprints(ns, here) == before
    (raw,) = r.log_batches(ns, "a", 3, 3) or []
    assert list(decode_message(raw).delta.entries) == [other]


@pytest.mark.parametrize(
    "garbage",
    [
        layout.pack([["b", "one", 5, 1]]),  # a seq that is not a number
        layout.pack([[["b"], 1, 5, 1]]),  # a replica that is not a string
        layout.pack([5]),  # a dot that is no list
        layout.pack([["b", 1, "noon", 1]]),  # a stamp that is not a number
    ],
)
def test_a_received_key_over_a_corrupt_row_fails_and_changes_nothing(
    make_replica: Make, garbage: bytes
) -> None:
    # A DecodeError, not whatever the join tripped on: the engine then applies the other
    # batches of a group one by one.
    a, b = make_replica("a"), make_replica("b")
    local(a, ("put", "m", "k", 1))
    local(b, ("put", "m", "k", 2))
    rkey = layout.ns_prefix(b.namespace_id("m", "lww_map")) + layout.row_key_suffix(
        layout.pack_key("k")
    )
    with b.env.begin(write=True, db=b.dbs["state"]) as txn:
        corrupt = bytes(txn.get(rkey))[:8] + garbage
        txn.put(rkey, corrupt)
    (raw,) = a.log_batches("m", "a", 1, 1) or []
    shipped = a.read_range("m", *ALL)
    with pytest.raises(DecodeError):
        b.apply_batches([(decode_message(raw), raw)])
    with pytest.raises(DecodeError):
        b.apply_ranges("m", [(*ALL, received(shipped, shipped.context))], shipped.context)
    assert b.get_row(rkey) == corrupt
    assert b.context("m") == CausalContext({"b": 1})


def test_stamps_increase_and_follow_the_wall_clock_within_a_transaction(tmp_path: Path) -> None:
    """A transaction reads the clock at its first stamp and every 64th after, counting up
    between: stamps stay unique and increasing across transactions, are never below the
    clock read at the start, and a clock that moves on is followed within 64 stamps (a
    long transaction's writes do not keep its first millisecond)."""
    now = [1_000_000]
    replica = LMDBReplica(tmp_path / "n", "n", NodeSettings(), now_ms=lambda: now[0])
    try:
        w = replica.begin_local()
        stamps = []
        for i in range(200):
            if i == 10:
                now[0] += 5_000
            stamps.append(w.put("m", i, i))
        w.commit()
        assert stamps == sorted(set(stamps))
        assert stamps[0] >= make_timestamp(1_000_000)
        moved = [i for i, ts in enumerate(stamps) if ts >= make_timestamp(1_005_000)]
        assert moved and moved[0] <= 10 + 64
        aborted = replica.begin_local()
        aborted.put("m", 0, "gone")
        aborted.abort()
        w = replica.begin_local()
        later = w.put("m", 1, "again")  # the clock stands still: counted on from the last
        w.commit()
        assert later == stamps[-1] + 1  # stored stamps only: the aborted one did not count
        assert replica.clock.last == later
    finally:
        replica.close()


def test_a_finished_write_is_freed_without_the_cyclic_collector(make_replica: Make) -> None:
    # A batch's transaction holds its ops, events and delta: left in a reference cycle,
    # each one waits for the cyclic collector, which then took a tenth of a batch's time.
    r = make_replica("a")
    gc.collect()
    gc.disable()
    try:
        w = r.begin_local()
        for i in range(50):
            w.put("m", i, i)
            w.add("s", i)
        w.delete("m", 3)
        w.commit()
        w = r.begin_local()
        w.put("m", 1, 2)
        w.abort()
        del w
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_type_mismatch_and_identity_and_format_are_checked(tmp_path: Path) -> None:
    with LMDBReplica(tmp_path / "d", "a") as r:
        r.ensure_namespace("m", "lww_map")
        with pytest.raises(TypeMismatch):
            r.ensure_namespace("m", "or_set")
        batch, raw = batch_of("m", "b", ORSet().add("b", 1))
        with pytest.raises(TypeMismatch):
            r.apply_batch(batch, raw)
    with pytest.raises(IdentityMismatch):
        LMDBReplica(tmp_path / "d", "other")
    with LMDBReplica(tmp_path / "d") as r:
        assert r.node_id == "a"
    env = lmdb.open(str(tmp_path / "d"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(layout.META_FORMAT, layout.u64(99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="format version 99"):
        LMDBReplica(tmp_path / "d")


def test_generated_node_id_is_persisted(tmp_path: Path) -> None:
    with LMDBReplica(tmp_path / "d") as r:
        first = r.node_id
    assert len(first) == 8
    with LMDBReplica(tmp_path / "d") as r:
        assert r.node_id == first


def test_unwritable_location_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open node directory"):
        LMDBReplica(tmp_path / "file" / "node")


# -- differential: LMDBReplica versus the pure values ----------------------------------------

KEYS = st.one_of(st.integers(0, 4), st.sampled_from(["a", "b"]), st.just(b"x"))
VALUES = st.one_of(st.integers(-3, 3), st.text(max_size=2), st.lists(st.integers(0, 2), max_size=2))
LOCAL = st.one_of(
    st.tuples(st.just("put"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("add"), KEYS),
    st.tuples(st.just("remove"), KEYS),
)
OPS = st.one_of(
    st.tuples(st.just("local"), st.lists(LOCAL, min_size=1, max_size=4)),
    st.tuples(st.just("peer"), LOCAL),
    st.tuples(st.just("deliver"), st.integers(0, 50)),
    st.tuples(st.just("deliver_many"), st.lists(st.integers(0, 50), min_size=1, max_size=4)),
    st.tuples(st.just("pull")),
    st.tuples(st.just("range"), st.integers(0, 15), st.integers(1, 16)),
    # A range that cuts a bucket just at a key (below, at or above its hash).
    st.tuples(st.just("range_at"), KEYS, st.integers(-1, 1), st.integers(1, HASH_SPACE >> 6)),
    st.tuples(st.just("merge")),
    st.tuples(st.just("ranges"), st.integers(1, 15), st.booleans(), st.integers(0, 2)),
)


def ns_of(kind: str) -> str:
    return "m" if kind in ("put", "delete") else "s"


def mirror_range(state: DotMap[Any], lo: int, hi: int, shipped: DotMap[Any]) -> DotMap[Any]:
    """The Replica contract's apply_range, on pure values."""
    entries = dict(state.entries)
    keys = {k for k in state.entries if lo <= key_hash(k) < hi} | set(shipped.entries)
    received: list[Dot] = []
    for key in keys:
        theirs = shipped.entries.get(key, {})
        received.extend(theirs)
        joined = join_entry(state.entries.get(key, {}), state.context, theirs, shipped.context)
        if joined:
            entries[key] = joined
        else:
            entries.pop(key, None)
    return type(state)(entries, state.context.join(CausalContext.from_dots(received)))


@given(st.lists(OPS, max_size=25))
# A received removal empties a row (an event is due), a received write replaces one.
@example(ops=[("peer", ("put", 0, 0)), ("deliver", 0), ("peer", ("delete", 0)), ("deliver", 1)])
@example(ops=[("peer", ("add", 0)), ("deliver", 0), ("peer", ("remove", 0)), ("deliver", 1)])
@example(ops=[("local", [("put", 0, 1)]), ("pull",), ("peer", ("put", 0, 2)), ("deliver", 0)])
@example(ops=[("peer", ("add", 0)), ("peer", ("remove", 0)), ("deliver_many", [0, 1, 0])])
# Ranges received into empty ranges, then a context that does not hold their base: the
# dots taken must join our context all the same.
@example(ops=[("peer", ("add", 0)), ("ranges", 1, False, 1)])
# One commit, two batches: the second's context (it names the first put) joins the first's.
@example(
    ops=[
        ("peer", ("put", 0, 0)),
        ("peer", ("put", 1, 0)),
        ("peer", ("delete", 0)),
        ("deliver_many", [1, 2]),
    ]
)
def test_lmdb_replica_equals_the_pure_values(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        replica = LMDBReplica(Path(tmp) / "a", "a", NodeSettings(durability="async"))
        try:
            run_differential(replica, ops)
        finally:
            replica.close()


def looks(value: DotMap[Any], key: Any) -> tuple[Any, Any]:
    """``(identity, value)`` a reader sees of ``key``: the LWW winner's dot and value, or an
    element's presence. A change event is due exactly when the identity changes."""
    entry = value.entries.get(key, {})
    if isinstance(value, ORSet):
        return bool(entry), bool(entry)
    won = winner(entry)
    return (None, None) if won is None else (won[0], won[1][1])


def events_due(before: dict[str, DotMap[Any]], after: dict[str, DotMap[Any]]) -> list[Any]:
    due = []
    for ns in ("m", "s"):
        for key in set(before[ns].entries) | set(after[ns].entries):
            (was_id, was), (now_id, now) = looks(before[ns], key), looks(after[ns], key)
            if was_id != now_id:
                due.append((ns, key, was, now))
    return sorted(due, key=repr)


def run_differential(replica: LMDBReplica, ops: list[tuple[Any, ...]]) -> None:
    mine: dict[str, DotMap[Any]] = {"m": LWWMap(), "s": ORSet()}
    peer: dict[str, DotMap[Any]] = {"m": LWWMap(), "s": ORSet()}
    queue: list[tuple[DeltaBatch, bytes]] = []
    peer_ts = make_timestamp(wall_ms())
    journaled = replica.journal_last()
    for op in ops:
        before = dict(mine)
        due: list[Any] = []
        if op[0] == "local":
            w = replica.begin_local()
            for kind, key, *value in op[1]:
                ns = ns_of(kind)
                state = mine[ns]
                if kind == "put":
                    ts = w.put(ns, key, value[0])
                    assert ts > max((p[0] for p in state.dots(key).values()), default=0)
                    delta = state.put("a", key, value[0], ts)  # type: ignore[attr-defined]
                elif kind == "delete":
                    w.delete(ns, key, only_if_present=False)
                    delta = state.delete("a", key)  # type: ignore[attr-defined]
                elif kind == "add":
                    w.add(ns, key)
                    delta = state.add("a", key)  # type: ignore[attr-defined]
                else:
                    w.remove(ns, key, only_if_present=False)
                    delta = state.remove("a", key)  # type: ignore[attr-defined]
                mine[ns] = state.join(delta)
            w.commit()
            for ns in ("m", "s"):
                # The one logged batch of the commit turns the state before into the state after.
                first, last = before[ns].context.max_seq("a") + 1, mine[ns].context.max_seq("a")
                if last >= first:
                    (raw,) = replica.log_batches(ns, "a", first, last) or [b""]
                    batch = decode_message(raw)
                    assert (batch.first, batch.last) == (first, last)
                    assert before[ns].join(batch.delta) == mine[ns]
        elif op[0] == "peer":
            kind, key, *value = op[1]
            ns = ns_of(kind)
            state = peer[ns]
            if kind == "put":
                peer_ts += 1
                delta = state.put("b", key, value[0], peer_ts)  # type: ignore[attr-defined]
            else:
                delta = getattr(
                    state, {"delete": "delete", "add": "add", "remove": "remove"}[kind]
                )("b", key)
            peer[ns] = state.join(delta)
            queue.append(batch_of(ns, "b", delta))
        elif op[0] == "deliver" and queue:
            # As the engine hands it over: decoded from the wire, its rows checked there
            # (deliver_many applies batches made from their deltas).
            batch, raw = queue[op[1] % len(queue)]
            ns = batch.namespace
            seen = all(Dot("b", s) in mine[ns].context for s in range(batch.first, batch.last + 1))
            assert replica.apply_batch(decode_message(raw), raw) is (not seen)
            if not seen:
                mine[ns] = mine[ns].join(batch.delta)
        elif op[0] == "deliver_many" and queue:
            picks = [queue[i % len(queue)] for i in op[1]]  # one commit, repeats included
            fresh = []
            for batch, _ in picks:
                ns = batch.namespace
                ctx = mine[ns].context
                fresh.append(
                    not all(Dot("b", s) in ctx for s in range(batch.first, batch.last + 1))
                )
                if fresh[-1]:
                    step = dict(mine)
                    mine[ns] = mine[ns].join(batch.delta)
                    due.extend(events_due(step, mine))  # each batch's, as if one by one
            assert replica.apply_batches(picks) == fresh
        elif op[0] == "pull":
            peer = {ns: peer[ns].join(mine[ns]) for ns in peer}
        elif op[0] in ("range", "range_at"):
            if op[0] == "range":
                lo, hi = sorted((op[1], op[2]))
                lo, hi = lo * HASH_SPACE // 16, max(hi, lo + 1) * HASH_SPACE // 16
            else:
                lo = min(max(key_hash(op[1]) + op[2], 0), HASH_SPACE - 1)
                hi = min(lo + op[3], HASH_SPACE)
            for ns in ("m", "s"):
                keys = [k for k in peer[ns].entries if lo <= key_hash(k) < hi]
                shipped = peer[ns].restrict(keys)
                replica.apply_range(ns, lo, hi, shipped)
                mine[ns] = mirror_range(mine[ns], lo, hi, shipped)
        elif op[0] == "ranges":
            # A session's end: disjoint ranges and a context in one step. The peer's whole
            # context covers every dot shipped; an empty one covers none of them.
            cut = op[1] * HASH_SPACE // 16
            for ns in ("m", "s"):
                context = peer[ns].context if op[2] else CausalContext()
                staged = []
                for lo, hi in ((0, cut), (cut, HASH_SPACE)):
                    shipped = peer[ns].restrict(
                        [k for k in peer[ns].entries if lo <= key_hash(k) < hi]
                    )
                    if op[3]:
                        # As a session applies a range it received: the sender's packed
                        # entries, checked as they are written (as rows where we hold
                        # none), restricted to the session's base (all of the sender's
                        # context, or part of it).
                        base = shipped.context if op[3] == 1 else CausalContext({"b": op[1]})
                        staged.append((lo, hi, received(shipped, base)))
                        shipped = restricted(shipped, base)
                    else:
                        staged.append((lo, hi, shipped))
                    mine[ns] = mirror_range(mine[ns], lo, hi, shipped)
                replica.apply_ranges(ns, staged, context)
                mine[ns] = type(mine[ns])(mine[ns].entries, mine[ns].context.join(context))
        elif op[0] == "merge":
            for ns in ("m", "s"):
                if ns in replica.namespaces():
                    replica.merge_context(ns, peer[ns].context)
                    mine[ns] = type(mine[ns])(
                        mine[ns].entries, mine[ns].context.join(peer[ns].context)
                    )
        _, rows = replica.journal_after(journaled, 1000)
        if op[0] != "local":  # a local transaction reports each of its mutations
            got = [(c.namespace, c.key, c.old, c.new) for _, changes in rows for c in changes]
            want = due if op[0] == "deliver_many" else events_due(before, mine)
            assert sorted(got, key=repr) == sorted(want, key=repr)
        journaled = rows[-1][0] if rows else journaled
        for ns in ("m", "s"):
            if ns in replica.namespaces():
                assert state_of(replica, ns) == live(mine[ns])
                assert replica.context(ns) == mine[ns].context
                want = fingerprint(live(mine[ns]).items())
                assert replica.fingerprints(ns, [ALL]) == [want]
                # Ranges cut at every key held, most of them inside a bucket, asked at once.
                cuts = sorted({0, HASH_SPACE, *(key_hash(k) for k in mine[ns].entries)})
                ranges = list(itertools.pairwise(cuts))
                assert replica.fingerprints(ns, ranges) == [
                    fingerprint((k, e) for k, e in live(mine[ns]).items() if lo <= key_hash(k) < hi)
                    for lo, hi in ranges
                ]


@given(
    st.integers(1, 30),
    st.integers(0, 30),
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 40)), max_size=20),
)
def test_commit_context_encoding_equals_the_codec(first: int, n: int, observed: list[Any]) -> None:
    from crdtstore.codec import encode_context
    from crdtstore.storage.outbox import encode_dots

    # A commit's batch context: what it observed, less its own run (implied on the wire).
    last = first + n - 1
    whole = CausalContext.from_dots([Dot(r, s) for r, s in observed]).with_run("a", first, last)
    want = encode_context(whole.without_run("a", first, last))
    by_replica: dict[str, list[int]] = {}
    for r, s in observed:
        by_replica.setdefault(r, []).append(s)
    got = encode_dots("a", first, last, by_replica)
    assert decode_context_of(got) == decode_context_of(want) and got[0] == want[0]
    assert sorted(map(tuple, got[1])) == sorted(map(tuple, want[1]))
    assert decode_context_of(got).with_run("a", first, last) == whole


def decode_context_of(obj: Any) -> CausalContext:
    from crdtstore.codec import decode_context

    return decode_context(obj)


def test_a_large_range_apply_journals_its_events_in_rows_of_one_commit(
    make_replica: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receive, "EVENTS_PER_JOURNAL_ROW", 8)
    a, b = make_replica("a"), make_replica("b")
    keys = [f"k{i}/" for i in range(50)]  # 50 prefixes: the keys spread over the 16 ranges
    local(b, *[("put", "m", k, i) for i, k in enumerate(keys)])
    ranges = [(lo, hi, b.read_range("m", lo, hi)) for lo, hi in split_range(*ALL, 16)]
    before = a.journal_last()
    a.apply_ranges("m", ranges, b.context("m"))
    _, rows = a.journal_after(before, 1000)
    events = [c for _, changes in rows for c in changes]
    assert len(rows) >= 50 // 16 and max(len(changes) for _, changes in rows) < 50
    assert sorted(c.key for c in events) == sorted(keys)
    assert {(c.old, c.origin) for c in events} == {(None, "b")}
    assert state_of(a, "m") == state_of(b, "m")


@pytest.mark.parametrize("checked", [False, True], ids=["decoded", "as-received"])
@pytest.mark.parametrize(
    ("stamps", "base_holds"),
    [((5, 7), "xy"), ((7, 5), "xy"), ((6, 6), "xy"), ((5, 7), "x"), ((5, 7), "")],
)
def test_a_range_of_concurrent_writes_shows_its_winner(
    make_replica: Make, checked: bool, stamps: tuple[int, int], base_holds: str
) -> None:
    """A shipped key holding two concurrent writes becomes one row with both (of those the
    session's base holds), and its change event names the LWW winner: greatest timestamp,
    then greatest writer. Two writers the receiver has never heard of, as only ranges from
    a third node can bring."""
    ts = make_timestamp(wall_ms())
    x = LWWMap().put("x", "k", "from-x", ts + stamps[0])
    y = LWWMap().put("y", "k", "from-y", ts + stamps[1])
    both = x.join(y)
    base = CausalContext({r: 1 for r in base_holds})
    shipped: Any = received(both, base) if checked else restricted(both, base)
    a = make_replica("a")
    before = a.journal_last()
    a.apply_ranges("m", [(0, HASH_SPACE, shipped)], base)
    want = restricted(both, base)
    assert state_of(a, "m") == live(want)
    assert a.context("m") == base
    won = winner(want.entries["k"])
    _, rows = a.journal_after(before, 10)
    events = [(c.key, c.old, c.new) for _, changes in rows for c in changes]
    assert events == ([] if won is None else [("k", None, won[1][1])])


def test_a_commit_journals_its_events_in_order_grouped(make_replica: Make) -> None:
    # A received key changed by c, b, then c again in one apply (a group per run of one
    # origin), a new key, then a local transaction over two namespaces: every change of a
    # key in the order it happened, each naming its origin.
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    local(b, ("put", "m", "k", "b1"), ("put", "m", "nb", 1))
    (b1,) = b.log_batches("m", "b", 1, 2) or []
    a.apply_batch(decode_message(b1), b1)
    c.apply_batch(decode_message(b1), b1)
    local(c, ("put", "m", "k", "c1"), ("put", "m", "nc", 1))
    (c1,) = c.log_batches("m", "c", 1, 2) or []
    b.apply_batch(decode_message(c1), c1)
    local(b, ("put", "m", "k", "b2"))
    (b2,) = b.log_batches("m", "b", 3, 3) or []
    c.apply_batch(decode_message(b2), b2)
    local(c, ("put", "m", "k", "c2"))
    (c2,) = c.log_batches("m", "c", 3, 3) or []
    before = a.journal_last()
    a.apply_batches([(decode_message(w), w) for w in (c1, b2, c2)])
    w = a.begin_local()
    w.put("m", "k", "a1")
    w.add("s", 1)
    w.put("m", "k", "a2")
    w.add("s", 2)
    w.delete("m", "k")
    w.commit()
    _, rows = a.journal_after(before, 10)
    events = [
        (c.namespace, c.key, c.old, c.new, c.origin, c.kind) for _, changes in rows for c in changes
    ]
    assert events == [
        ("m", "k", "b1", "c1", "c", "put"),
        ("m", "nc", None, 1, "c", "put"),
        ("m", "k", "c1", "b2", "b", "put"),
        ("m", "k", "b2", "c2", "c", "put"),
        ("m", "k", "c2", "a1", "a", "put"),
        ("m", "k", "a1", "a2", "a", "put"),
        ("m", "k", "a2", None, "a", "delete"),
        ("s", 1, False, True, "a", "add"),
        ("s", 2, False, True, "a", "add"),
    ]
    from crdtstore.storage import journal

    with a.env.begin() as txn:  # one group per namespace and run of one origin
        stored = [journal.stored_groups(v) for _, v in txn.cursor(db=a.dbs["journal"])][-2:]
    assert [[g[:2] for g in row] for row in stored] == [
        [["m", "c"], ["m", "b"], ["m", "c"]],
        [["m", "a"], ["s", "a"]],
    ]


def test_a_journal_row_of_format_4_still_reads(make_replica: Make) -> None:
    # Format 4 wrote one list per event; a directory migrated to 5 may still hold some.
    from crdtstore.storage import journal

    a = make_replica("a")
    with a.env.begin(write=True) as txn:
        db = a.dbs["journal"]
        txn.put(
            layout.u64(journal.last_seq(txn, db) + 1), layout.pack([["m", "k", 1, 2, "b"]]), db=db
        )
    local(a, ("put", "m", "k", 3))
    _, rows = a.journal_after(0, 10)
    assert [(c.key, c.old, c.new, c.origin) for _, changes in rows for c in changes] == [
        ("k", 1, 2, "b"),
        ("k", None, 3, "a"),
    ]


@given(
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 8)),
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 20)), max_size=20),
    st.sampled_from("ab"),
    st.integers(1, 20),
    st.integers(0, 6),
)
def test_a_batch_is_known_applied_exactly_when_the_context_holds_its_run(
    vv: dict[str, int], cloud: list[tuple[str, int]], origin: str, first: int, n: int
) -> None:
    ctx = CausalContext(vv, [Dot(r, s) for r, s in cloud])
    last = first + n
    want = all(Dot(origin, s) in ctx for s in range(first, last + 1))
    assert receive.holds_run(ctx, origin, first, last) == want
