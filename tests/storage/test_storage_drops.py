"""Dropping a namespace (crdtstore.storage.drops) on real LMDB directories: what a drop
frees, how a received drop is applied, and that nothing it dropped comes back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crdtstore.crdt import Dot
from crdtstore.errors import InvalidValue, StorageError
from crdtstore.storage import LMDBReplica, layout
from crdtstore.storage.drops import DROPS_NAMESPACE
from crdtstore.sync.fingerprint import HASH_SPACE
from crdtstore.sync.messages import decode_message

Make = Callable[..., LMDBReplica]
ALL = (0, HASH_SPACE)
REPO = Path(__file__).resolve().parents[2]


def local(replica: LMDBReplica, *ops: tuple[Any, ...]) -> Any:
    w = replica.begin_local()
    results = [getattr(w, name)(*args) for name, *args in ops]
    w.commit()
    return results[-1]


def drop(replica: LMDBReplica, ns: str) -> bool:
    done: bool = local(replica, ("drop_namespace", ns))
    return done


def ship(source: LMDBReplica, target: LMDBReplica, ns: str, origin: str) -> None:
    """Every batch ``source`` logs of ``origin`` in ``ns``, applied at ``target``."""
    top = source.context(ns).max_seq(origin)
    for raw in source.log_batches(ns, origin, 1, top) or []:
        target.apply_batch(decode_message(raw), raw)


def keys(replica: LMDBReplica, ns: str) -> set[Any]:
    return set(replica.read_range(ns, *ALL).entries)


def rows_of(replica: LMDBReplica, ns: str, table: str) -> int:
    """Rows of ``table`` (state, buckets or log) under namespace ``ns``'s id."""
    prefix = layout.ns_prefix(replica.namespace_id(ns, replica.namespaces()[ns]))
    db = replica.dbs[table]
    with replica.read_txn() as txn, txn.cursor(db=db) as cur:
        n, ok = 0, cur.set_range(prefix)
        while ok and bytes(cur.key()).startswith(prefix):
            n, ok = n + 1, cur.next()
    return n


def test_a_drop_frees_rows_buckets_and_logged_batches_and_journals_the_deletes(
    make_replica: Make,
) -> None:
    a = make_replica("a")
    local(a, *[("put", "cfg", f"k{i}", i) for i in range(500)])
    local(a, ("add", "hosts", "h1"))
    before = a.journal_last()
    assert rows_of(a, "cfg", "state") == 500 and rows_of(a, "cfg", "log") == 1
    ctx = a.context("cfg")

    assert drop(a, "cfg") is True

    assert keys(a, "cfg") == set()
    assert (rows_of(a, "cfg", "state"), rows_of(a, "cfg", "buckets")) == (0, 0)
    assert rows_of(a, "cfg", "log") == 0
    assert a.context("cfg") == ctx  # kept: it is what keeps the dropped writes out
    assert keys(a, "hosts") == {"h1"}  # another namespace is untouched
    assert set(a.read_range(DROPS_NAMESPACE, *ALL).entries) == {layout.pack(["cfg", "a"])}
    _, rows = a.journal_after(before, 100)
    deleted = {c.key for _, changes in rows for c in changes if c.namespace == "cfg"}
    assert deleted == {f"k{i}" for i in range(500)}
    assert {c.kind for _, changes in rows for c in changes if c.namespace == "cfg"} == {"delete"}
    assert a.dropped_namespaces() == {"cfg"}


def test_nothing_to_drop_is_false_and_writes_nothing(make_replica: Make) -> None:
    a = make_replica("a")
    assert drop(a, "nope") is False
    assert a.namespaces() == {}
    local(a, ("put", "cfg", "k", 1))
    assert drop(a, "cfg") is True
    assert drop(a, "cfg") is False  # nothing written since
    local(a, ("put", "cfg", "k2", 2))
    assert a.dropped_namespaces() == set()  # it holds an entry again
    assert drop(a, "cfg") is True and keys(a, "cfg") == set()


def test_a_drop_after_a_write_in_the_same_transaction_is_refused(make_replica: Make) -> None:
    a = make_replica("a")
    local(a, ("put", "cfg", "k", 1))
    w = a.begin_local()
    w.put("cfg", "j", 2)
    with pytest.raises(InvalidValue, match="written in this transaction"):
        w.drop_namespace("cfg")
    w.abort()
    assert keys(a, "cfg") == {"k"}


def test_a_received_drop_removes_what_the_dropper_saw_and_keeps_a_concurrent_write(
    make_replica: Make,
) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, ("put", "cfg", "seen", 1), ("put", "cfg", "also", 1))
    ship(a, b, "cfg", "a")
    local(b, ("put", "cfg", "concurrent", 2), ("put", "cfg", "seen", 3))  # a saw neither
    drop(a, "cfg")

    ship(a, b, DROPS_NAMESPACE, "a")
    assert b.apply_drops() == ["cfg"]
    ship(b, a, "cfg", "b")

    # b's overwrite of "seen" is concurrent to the drop: it survives, as "concurrent" does.
    assert keys(a, "cfg") == keys(b, "cfg") == {"concurrent", "seen"}
    assert a.read_range("cfg", *ALL).entries == b.read_range("cfg", *ALL).entries
    assert a.context("cfg") == b.context("cfg")
    assert b.apply_drops() == []  # applied once: the marker covers it


def test_dropped_writes_that_arrive_after_the_drop_do_not_come_back(make_replica: Make) -> None:
    """b hears of the drop before the writes it dropped: late batches, repairs and ranges
    from a replica that has not heard of it all find them removed."""
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    local(a, ("put", "cfg", "x", 1))
    local(a, ("put", "cfg", "y", 2))
    ship(a, c, "cfg", "a")  # c holds both, and never hears of the drop
    drop(a, "cfg")
    ship(a, b, DROPS_NAMESPACE, "a")
    assert b.apply_drops() == ["cfg"]  # b never held cfg: it is created, empty
    assert b.namespaces()["cfg"] == "lww_map" and keys(b, "cfg") == set()

    ship(c, b, "cfg", "a")  # the dropped batches, late (a repair serves the same bytes)
    assert keys(b, "cfg") == set()
    b.apply_range("cfg", *ALL, c.read_range("cfg", *ALL))  # a reconciliation with c
    assert keys(b, "cfg") == set()

    # The other way, c learns the removals from b's range and context.
    c.apply_range("cfg", *ALL, b.read_range("cfg", *ALL))
    assert keys(c, "cfg") == set()


def test_the_drop_applies_to_a_reopened_directory_once(make_replica: Make, tmp_path: Path) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, ("add", "s", "e1"), ("add", "s", "e2"))
    ship(a, b, "s", "a")
    drop(a, "s")
    ship(a, b, DROPS_NAMESPACE, "a")  # received; the role holder stops before applying it
    b.close()
    b = LMDBReplica(tmp_path / "b", "b")
    try:
        assert keys(b, "s") == {"e1", "e2"}
        assert b.apply_drops() == ["s"]
        assert keys(b, "s") == set()
    finally:
        b.close()
    b = LMDBReplica(tmp_path / "b", "b")
    try:
        assert b.apply_drops() == []  # the marker: no second scan
        assert b.stats["drops_applied"] == 0
    finally:
        b.close()


def test_a_malformed_drop_record_is_counted_and_changes_nothing(make_replica: Make) -> None:
    b = make_replica("b")
    local(b, ("put", "cfg", "k", 1))
    local(b, ("put", DROPS_NAMESPACE, b"bad", {"namespace": "cfg", "type": "lww_map"}))
    assert b.apply_drops() == []
    assert b.stats["drop_records_invalid"] == 1
    assert keys(b, "cfg") == {"k"}


def test_a_drop_of_another_type_is_refused_and_counted(make_replica: Make) -> None:
    a, b = make_replica("a"), make_replica("b")
    local(a, ("add", "ns", "e"))
    local(b, ("put", "ns", "k", 1))  # a type conflict between nodes: the drop cannot apply
    drop(a, "ns")
    ship(a, b, DROPS_NAMESPACE, "a")
    assert b.apply_drops() == []
    assert b.stats["drop_records_type_mismatch"] == 1
    assert keys(b, "ns") == {"k"}


def test_drops_of_two_nodes_join(make_replica: Make) -> None:
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    local(a, ("add", "s", "from-a"))
    local(b, ("add", "s", "from-b"))
    ship(a, c, "s", "a")
    ship(b, c, "s", "b")
    drop(a, "s")  # saw only its own element
    drop(b, "s")  # and b only its own
    ship(a, c, DROPS_NAMESPACE, "a")
    ship(b, c, DROPS_NAMESPACE, "b")
    assert c.apply_drops() == ["s"]
    assert keys(c, "s") == set()
    assert Dot("a", 1) in c.context("s") and Dot("b", 1) in c.context("s")


DROPPER = """
import sys
from crdtstore.storage import LMDBReplica
r = LMDBReplica(sys.argv[1])
w = r.begin_local()
print(w.drop_namespace("cfg"))
w.commit()
w = r.begin_local()
w.put("cfg", "after", 1)
w.commit()
r.close()
"""


def test_a_process_sharing_the_directory_sees_the_drop(make_replica: Make, tmp_path: Path) -> None:
    """Another process drops while this one holds the namespace's id in its cache: ids
    never change, so its reads and writes stay right."""
    a = make_replica("a")
    local(a, *[("put", "cfg", f"k{i}", i) for i in range(50)])
    assert len(keys(a, "cfg")) == 50  # the id and context are cached here now
    done = subprocess.run(
        [sys.executable, "-c", DROPPER, str(tmp_path / "a")],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.stdout.strip() == "True"
    assert keys(a, "cfg") == {"after"}
    local(a, ("put", "cfg", "mine", 2))
    assert keys(a, "cfg") == {"after", "mine"}
    assert a.dropped_namespaces() == set()


def test_a_drop_that_met_a_full_store_is_due_again_until_it_applies(
    make_replica: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed try commits nothing, so a caller that looks only when the directory
    changed would never look again on an idle node: the replica says the retry is due."""
    a, b = make_replica("a"), make_replica("b")
    local(a, ("put", "cfg", "k", 1))
    ship(a, b, "cfg", "a")
    drop(a, "cfg")
    ship(a, b, DROPS_NAMESPACE, "a")
    drops = b._drops
    real_write = drops._write

    def full(fn: Any) -> Any:
        raise StorageError("the map is full (simulated)")

    monkeypatch.setattr(drops, "_write", full)
    assert not b.drops_retry_due()
    assert b.apply_drops() == []
    assert b.drops_retry_due()
    assert keys(b, "cfg") == {"k"}
    monkeypatch.setattr(drops, "_write", real_write)
    assert b.apply_drops() == ["cfg"]
    assert not b.drops_retry_due()
    assert keys(b, "cfg") == set()
