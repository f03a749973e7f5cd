"""The change journal: event kinds, local and remote, and its bounds by count, bytes and
age, on real LMDB files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from crdtstore.crdt import LWWMap, ORSet, make_timestamp
from crdtstore.settings import NodeSettings
from crdtstore.storage import Change, LMDBReplica, layout
from crdtstore.storage.replica import wall_ms
from crdtstore.storage.tables import table_bytes
from crdtstore.sync.messages import DeltaBatch, encode_message


def events(replica: LMDBReplica, after: int = 0) -> list[Change]:
    _, rows = replica.journal_after(after, 100_000)
    return [c for _, changes in rows for c in changes]


def kinds(replica: LMDBReplica, after: int = 0) -> list[tuple[Any, Any, Any, str]]:
    return [(c.key, c.old, c.new, c.kind) for c in events(replica, after)]


def apply(replica: LMDBReplica, ns: str, origin: str, first: int, delta: Any) -> None:
    batch = DeltaBatch(ns, origin, first, first, delta)
    assert replica.apply_batch(batch, encode_message(batch))


def journal_bytes(replica: LMDBReplica) -> int:
    with replica.read_txn() as txn:
        return table_bytes(txn, replica.dbs["journal"])


def test_set_to_none_and_deleted_are_different_kinds(tmp_path: Path) -> None:
    with LMDBReplica(tmp_path / "n", "n1") as r:
        w = r.begin_local()
        w.put("m", "k", 1)
        w.put("m", "k", None)
        w.delete("m", "k")
        w.add("s", "e")
        w.remove("s", "e")
        w.commit()
        assert kinds(r) == [
            ("k", None, 1, "put"),
            ("k", 1, None, "put"),
            ("k", None, None, "delete"),
            ("e", False, True, "add"),
            ("e", True, False, "remove"),
        ]


def test_remote_changes_carry_their_kinds(tmp_path: Path) -> None:
    with LMDBReplica(tmp_path / "n", "n1") as r:
        ts = make_timestamp(wall_ms(), 0)
        m = LWWMap()
        d1 = m.put("peer", "k", None, ts)  # a remote write of None: a put, not a delete
        apply(r, "m", "peer", 1, d1)
        m = m.join(d1)
        apply(r, "m", "peer", 2, m.delete("peer", "k"))
        s = ORSet()
        d3 = s.add("peer", "e")
        apply(r, "s", "peer", 1, d3)
        apply(r, "s", "peer", 2, s.join(d3).remove("peer", "e"))
        assert kinds(r) == [
            ("k", None, None, "put"),
            ("k", None, None, "delete"),
            ("e", False, True, "add"),
            ("e", True, False, "remove"),
        ]
        assert {c.origin for c in events(r)} == {"peer"}


def test_a_row_of_an_older_format_still_reads_with_inferred_kinds(tmp_path: Path) -> None:
    with LMDBReplica(tmp_path / "n", "n1") as r:
        old = [["m", "n1", ["a", None, 1, "a", 1, None]], ["s", "n1", ["e", False, True]]]
        with r.env.begin(write=True) as txn:
            txn.put(layout.u64(1), msgpack.packb(old), db=r.dbs["journal"])
        assert kinds(r) == [
            ("a", None, 1, "put"),
            ("a", 1, None, "delete"),
            ("e", False, True, "add"),
        ]


def test_journal_bytes_stay_under_the_bound_whatever_the_commit_size(tmp_path: Path) -> None:
    # The pattern: many keys overwritten, 100 per commit. The count bound alone
    # would keep 10,000 such commits; the byte bound must hold the table to its pages.
    bound = 256 * 1024
    settings = NodeSettings(journal_max_bytes=bound)
    with LMDBReplica(tmp_path / "n", "n1", settings) as r:
        held = []
        for round_ in range(60):
            w = r.begin_local()
            for i in range(100):
                w.put("m", f"key-{(round_ * 100 + i) % 1000}", "v" * 40 + str(round_))
            w.commit()
            held.append(journal_bytes(r))
        first, rows = r.journal_after(0, 100_000)
        assert max(held) <= bound
        assert first > 1  # it did trim
        assert len(rows) > 1 and rows[-1][0] == 60  # and keeps the newest commits
        assert [seq for seq, _ in rows] == list(range(first, 61))


def test_the_newest_row_stays_even_over_the_byte_bound(tmp_path: Path) -> None:
    settings = NodeSettings(journal_max_bytes=4096)
    with LMDBReplica(tmp_path / "n", "n1", settings) as r:
        for round_ in range(3):
            w = r.begin_local()
            for i in range(200):
                w.put("m", i, f"{round_}" * 100)  # rows of overflow pages
            w.commit()
        first, rows = r.journal_after(0, 10)
        assert first == 3 and [seq for seq, _ in rows] == [3]
        assert len(rows[0][1]) == 200


def test_rows_older_than_the_age_bound_are_trimmed(tmp_path: Path) -> None:
    now = [1_000_000]
    settings = NodeSettings(journal_max_age_ms=10_000)
    with LMDBReplica(tmp_path / "n", "n1", settings, now_ms=lambda: now[0]) as r:
        w = r.begin_local()
        w.put("m", "x", 0)
        w.commit()
        assert r.journal_after(0, 100)[0] == 1
        now[0] += 5_000  # younger than the bound: stays
        w = r.begin_local()
        w.put("m", "y", 0)
        w.commit()
        assert r.journal_after(0, 100)[0] == 1
        now[0] += 10_000  # the first row is 15 s old, the second 10 s: at the bound,
        # and trimming goes 1/16 below a bound once one is passed, so both go
        w = r.begin_local()
        w.put("m", "z", 0)
        w.commit()
        first, rows = r.journal_after(0, 100)
        assert [seq for seq, _ in rows] == [3] and first == 3
