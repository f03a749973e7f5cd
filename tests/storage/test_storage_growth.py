"""The map grows by itself; at its limit a write fails cleanly; async durability flushes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore.codec import encode_value, pack
from crdtstore.errors import StorageError
from crdtstore.storage import LMDBReplica
from crdtstore.sync.fingerprint import HASH_SPACE


def test_tiny_map_grows_transparently(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", map_size=64 * 1024) as node:
        m = node.lww_map("m")
        with node.transaction():  # growth in the middle of a transaction replays it
            for i in range(3000):
                m[i] = "v" * 100
        for i in range(3000, 3200):
            m[i] = "w" * 100
        assert node.stats["map_grown"] >= 1
        assert len(m) == 3200
        assert m[10] == "v" * 100 and m[3100] == "w" * 100
    with crdtstore.open(tmp_path / "n", map_size=64 * 1024) as node:
        assert len(node.lww_map("m")) == 3200


def test_growth_mid_transaction_replays_adds_without_gaps(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="a", map_size=64 * 1024) as node:
        s = node.or_set("s")
        with node.transaction():
            for i in range(3000):
                s.add(f"element-{i:05d}-" + "x" * 60)
        assert node.stats["map_grown"] >= 1
        assert len(s) == 3000
        # Replayed mutations consume the same dots: the context is exactly a:1..3000.
        ctx = node._replica.context("s")
        assert ctx.vv == {"a": 3000} and not ctx.cloud


def test_another_process_growing_the_map_is_adopted(tmp_path: Path, spawn: Any) -> None:
    path = str(tmp_path / "n")
    with crdtstore.open(path, map_size=64 * 1024) as node:
        m = node.lww_map("m")
        m["before"] = 1
        child = spawn(
            """
import sys, crdtstore
with crdtstore.open(sys.argv[1], map_size=64 * 1024) as node:
    m = node.lww_map("m")
    with node.transaction():
        for i in range(3000):
            m[i] = "x" * 200
    print(node.stats["map_grown"], flush=True)
""",
            path,
        )
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert int(out) >= 1
        assert len(m) == 3001  # reading picks up the grown map
        m["after"] = 2
        assert node.stats["map_adopted"] >= 1
        assert m[2999] == "x" * 200


def test_full_map_at_its_limit_raises_and_keeps_the_file_consistent(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", map_size=256 * 1024, max_map_size=512 * 1024) as node:
        m = node.lww_map("m")
        m["kept"] = "yes"
        with pytest.raises(StorageError, match="max_map_size"), node.transaction():
            for i in range(10_000):
                m[i] = "v" * 200
        assert list(m.items()) == [("kept", "yes")]
        m["still"] = "writable"
    with crdtstore.open(tmp_path / "n") as node:
        assert dict(node.lww_map("m")) == {"kept": "yes", "still": "writable"}


def test_async_durability_flushes_and_close_flushes(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", durability="async", flush_interval_ms=5) as node:
        m = node.lww_map("m")
        for i in range(50):
            m[i] = i
    with crdtstore.open(tmp_path / "n") as node:
        assert len(node.lww_map("m")) == 50


class _CountedRanges:
    """Ranges for ``apply_ranges`` that count how often the replica iterates them."""

    def __init__(self, ranges: list[Any]) -> None:
        self.ranges, self.passes = ranges, 0

    def __iter__(self) -> Any:
        self.passes += 1
        return iter(self.ranges)


@pytest.mark.parametrize("hinted", [False, True])
def test_a_size_hint_makes_room_before_a_large_apply(
    make_replica: Callable[..., LMDBReplica], hinted: bool
) -> None:
    """A bootstrap's one transaction that fills the map is run again after every doubling;
    told the ranges' wire size, the replica grows the map first and runs it once."""
    b = make_replica("b")
    local = b.begin_local()
    for i in range(3000):
        local.put("m", f"key-{i}", "v" * 100)
    local.commit()
    shipped = b.read_range("m", 0, HASH_SPACE)
    wire = len(pack(encode_value(shipped)))
    a = make_replica("a", map_size=256 * 1024)
    ranges = _CountedRanges([(0, HASH_SPACE, shipped)])
    a.apply_ranges("m", ranges, shipped.context, wire if hinted else 0)
    assert len(a.read_range("m", 0, HASH_SPACE).entries) == 3000
    assert a.stats["map_grown"] >= 1
    assert (ranges.passes == 1) is hinted, ranges.passes


def _overwrite(replica: LMDBReplica, rounds: int, keys: int = 2000, per_txn: int = 100) -> None:
    """Issue 22's soak pattern: every key overwritten each round, ``per_txn`` a commit."""
    for r in range(rounds):
        for start in range(0, keys, per_txn):
            w = replica.begin_local()
            for k in range(start, start + per_txn):
                w.put("m", f"key-{k:06d}", f"{r:06d}-{'v' * 30}")
            w.commit()


def _bytes_of(replica: LMDBReplica, table: str) -> int:
    from crdtstore.storage.tables import table_bytes

    with replica.read_txn() as txn:
        return table_bytes(txn, replica.dbs[table])


def test_the_delta_log_stays_under_its_byte_bound_without_a_replicator(tmp_path: Path) -> None:
    # No peer acknowledges, no trimmer runs: only the byte bound keeps the log in check.
    from crdtstore.settings import NodeSettings

    bound = 512 * 1024
    settings = NodeSettings(log_max_bytes=bound, durability="async")
    with LMDBReplica(tmp_path / "n", "n1", settings) as r:
        held = []
        for _ in range(8):
            _overwrite(r, 1)
            held.append(_bytes_of(r, "log"))
        assert max(held) <= bound
        top = r.context("m").vv["n1"]
        # The newest batches stay, contiguous, up to the last commit: repairs still work.
        newest = r.log_batches("m", "n1", top - 99, top)
        assert newest is not None and len(newest) == 1
        assert r.log_batches("m", "n1", 1, 100) is None  # the oldest went


def test_the_file_stops_growing_under_endless_overwrites(tmp_path: Path) -> None:
    # The file (pages LMDB ever used) must level off: the freed journal and log pages are
    # reused. Bounds are small here so it does within a few rounds.
    from crdtstore.settings import NodeSettings

    settings = NodeSettings(
        log_max_bytes=256 * 1024, journal_max_bytes=128 * 1024, durability="async"
    )
    with LMDBReplica(tmp_path / "n", "n1", settings) as r:
        used = []
        for _ in range(30):
            _overwrite(r, 1)
            used.append(r.env.info()["last_pgno"])
        live = _bytes_of(r, "state") + _bytes_of(r, "buckets")
        # Unbounded, the log and journal alone would take about 30 times their first
        # round's pages; bounded, the file holds live state, the two bounds, and the
        # copies of pages that commits still in flight may need.
        assert (used[-1] + 1) * r.env.stat()["psize"] < live + 2 * (256 + 128) * 1024
        assert used[-1] - used[9] < (used[9] - used[0]) // 4  # it levels off
