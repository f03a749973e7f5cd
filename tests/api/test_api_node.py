"""The public API: open, views, transactions, changes, bad input, threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore import Change, NodeSettings


@pytest.fixture
def node(tmp_path: Path) -> Any:
    with crdtstore.open(tmp_path / "n", node_id="n1") as n:
        yield n


def test_lww_map_is_a_mutable_mapping(node: Any) -> None:
    m = node.lww_map("cfg")
    m["a"] = 1
    m[b"b"] = {"x": [1, 2.5, None, True]}
    m[7] = "seven"
    assert m["a"] == 1 and m[b"b"] == {"x": [1, 2.5, None, True]} and m[7] == "seven"
    assert len(m) == 3 and set(m) == {"a", b"b", 7} and "a" in m and "zz" not in m
    assert dict(m.items()) == {"a": 1, b"b": {"x": [1, 2.5, None, True]}, 7: "seven"}
    assert sorted(map(str, m.values())) == sorted(
        map(str, [1, {"x": [1, 2.5, None, True]}, "seven"])
    )
    assert m.get("missing", "d") == "d"
    m["a"] = 2
    assert m["a"] == 2 and len(m) == 3
    del m["a"]
    with pytest.raises(KeyError):
        m["a"]
    with pytest.raises(KeyError):
        del m["a"]
    assert 1.5 not in m  # a key of the wrong type is simply not there


def test_reads_tell_keys_apart_that_python_finds_equal(
    node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads remember the row keys of the keys they read; 1 == True == 1.0 to a dict.
    m, s = node.lww_map("m"), node.or_set("s")
    m[1], m["1"], m[b"1"] = "int", "str", "bytes"
    s.add(1)
    for _ in range(2):  # the second round reads from what the first remembered
        assert (m[1], m["1"], m[b"1"]) == ("int", "str", "bytes")
        assert 1 in m and 1 in s and "1" not in s
        assert True not in m and 1.0 not in m and True not in s and 1.0 not in s
        with pytest.raises(crdtstore.InvalidValue):
            m[True]
        with pytest.raises(crdtstore.InvalidValue):
            m[1.0]
    monkeypatch.setattr(crdtstore.node.api, "ROW_KEY_MEMO_MAX", 3)
    for i in range(10):
        m[f"k{i}"] = i
    for _ in range(2):
        assert [m[f"k{i}"] for i in range(10)] == list(range(10))
        assert len(node._suffixes) <= 3


def test_or_set_is_a_mutable_set(node: Any) -> None:
    s = node.or_set("hosts")
    s.add("h1")
    s.add("h1")
    s.add(2)
    assert "h1" in s and 2 in s and "h3" not in s and len(s) == 2 and set(s) == {"h1", 2}
    s.discard("h1")
    s.discard("absent")
    assert set(s) == {2}
    with pytest.raises(KeyError):
        s.remove("absent")
    s.remove(2)
    assert len(s) == 0 and set(s) == set()


def test_transaction_is_one_commit_and_one_batch_per_namespace(node: Any) -> None:
    m, s = node.lww_map("m"), node.or_set("s")
    with node.transaction():
        for i in range(10):
            m[i] = i
            s.add(i)
        assert len(m) == 10 and m[3] == 3 and 3 in s  # reads see the transaction's writes
        del m[0]
    r = node.replica
    assert len(r.log_batches("m", "n1", 1, 11) or []) == 1
    assert len(r.log_batches("s", "n1", 1, 10) or []) == 1
    assert len(m) == 9


def test_compound_methods_are_one_commit_each_and_all_or_nothing(node: Any) -> None:
    # update, clear, pop, |= ...: one call, one commit, one delta batch; a bad value
    # halfway through an update writes nothing.
    m, s = node.lww_map("m"), node.or_set("s")
    r = node.replica
    m.update({i: i for i in range(10)}, extra=-1)
    assert len(r.log_batches("m", "n1", 1, 11) or []) == 1 and m["extra"] == -1
    with pytest.raises(crdtstore.InvalidValue):
        m.update({"fine": 1, "bad": object()})
    assert "fine" not in m and r.context("m").max_seq("n1") == 11
    assert m.setdefault("extra", 5) == -1 and m.setdefault("new", 5) == 5
    assert m.pop(3) == 3 and m.pop(3, "gone") == "gone"
    key, value = m.popitem()
    assert key not in m and value is not None
    m.clear()
    assert len(m) == 0 and len(r.log_batches("m", "n1", 15, 24) or []) == 1
    s |= {1, 2, 3, 4}
    assert len(r.log_batches("s", "n1", 1, 4) or []) == 1
    s -= {1}
    s &= {2, 3, 9}
    s ^= {3, 5}
    assert set(s) == {2, 5}
    assert s.pop() in {2, 5} and len(s) == 1
    s.clear()
    assert len(s) == 0


def test_set_operators_on_a_view_give_plain_sets(node: Any) -> None:
    s = node.or_set("s")
    s |= {1, 2, 3}
    assert s | {4} == {1, 2, 3, 4} and type(s | {4}) is set
    assert (s - {1}, s & {1, 9}, s ^ {3, 4}) == ({2, 3}, {1}, {1, 2, 4})
    assert set(s) == {1, 2, 3}  # the view itself is untouched


def test_exception_in_transaction_aborts_everything(node: Any) -> None:
    m = node.lww_map("m")
    m["keep"] = 1
    before = node.replica.context("m")
    with pytest.raises(RuntimeError), node.transaction():
        m["keep"] = 2
        m["new"] = 3
        node.or_set("created_inside").add(1)
        raise RuntimeError("boom")
    assert dict(m) == {"keep": 1}
    assert node.replica.context("m") == before
    assert "created_inside" not in node.namespaces()
    node.or_set("created_inside").add(1)  # the aborted name is free to be created again
    assert 1 in node.or_set("created_inside")


def test_a_put_wins_over_a_remote_write_with_a_clock_ahead(node: Any, tmp_path: Path) -> None:
    from crdtstore.crdt import LWWMap, make_timestamp
    from crdtstore.storage.replica import wall_ms
    from crdtstore.sync.messages import DeltaBatch, encode_message

    ahead = make_timestamp(wall_ms() + 30_000)
    delta = LWWMap().put("other", "k", "theirs", ahead)
    batch = DeltaBatch("m", "other", 1, 1, delta)
    node.replica.apply_batch(batch, encode_message(batch))
    m = node.lww_map("m")
    assert m["k"] == "theirs"
    m["k"] = "mine"
    assert m["k"] == "mine"


def test_changes_and_watch_see_local_and_remote_changes(node: Any) -> None:
    from crdtstore.crdt import ORSet
    from crdtstore.sync.messages import DeltaBatch, encode_message

    got: list[Change] = []
    done = threading.Event()
    handle = node.watch("s", lambda c: (got.append(c), done.set() if len(got) == 2 else None))
    feed = node.changes()
    s = node.or_set("s")
    s.add("local")
    batch = DeltaBatch("s", "peer", 1, 1, ORSet().add("peer", "remote"))
    node.replica.apply_batch(batch, encode_message(batch))
    assert feed.get(timeout=10) == Change("s", "local", False, True, "n1", "add")
    assert feed.get(timeout=10) == Change("s", "remote", False, True, "peer", "add")
    assert done.wait(10)
    assert got == [
        Change("s", "local", False, True, "n1", "add"),
        Change("s", "remote", False, True, "peer", "add"),
    ]
    handle.cancel()
    node.lww_map("m")["k"] = 1
    assert feed.get(timeout=10) == Change("m", "k", None, 1, "n1", "put")
    assert len(got) == 2  # cancelled: no more deliveries
    feed.close()
    assert feed.get(timeout=0.01) is None


def test_a_corrupt_journal_row_is_passed_and_later_changes_still_arrive(tmp_path: Path) -> None:
    # Watchers in every process read the journal: one bad row must not stall them all.
    from crdtstore.storage import journal, layout

    with crdtstore.open(tmp_path / "n", node_id="n1") as node:
        feed = node.changes("m")
        m = node.lww_map("m")
        m["a"] = 1
        assert feed.get(timeout=10) == Change("m", "a", None, 1, "n1", "put")
        replica = node.replica
        with replica.env.begin(write=True) as txn:
            db = replica.dbs["journal"]
            txn.put(layout.u64(journal.last_seq(txn, db) + 1), b"\xc1", db=db)
        m["b"] = 2
        assert feed.get(timeout=10) == Change("m", "b", None, 2, "n1", "put")
        assert replica.stats["journal_rows_corrupt"] == 1
        feed.close()


def test_threads_write_concurrently_without_loss(node: Any) -> None:
    s = node.or_set("s")

    def work(t: int) -> None:
        for i in range(50):
            if i % 5 == 0:
                with node.transaction():
                    s.add(t * 1000 + i)
                    s.add(t * 1000 + i + 500)
            else:
                s.add(t * 1000 + i)
            assert t * 1000 + i in s

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(s) == 4 * 60


def test_members_node_id_and_idempotent_close(tmp_path: Path) -> None:
    node = crdtstore.open(tmp_path / "n")
    [me] = node.members()
    assert (me.node_id, me.status, me.is_self, me.router) == (node.node_id, "alive", True, "")
    node.close()
    node.close()
    with pytest.raises(crdtstore.ClosedError):
        node.lww_map("m")


def test_settings_reject_unknown_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(crdtstore.InvalidValue, match="unknown setting"):
        crdtstore.open(tmp_path / "n", map_sise=1)
    with pytest.raises(crdtstore.InvalidValue, match="durability"):
        NodeSettings(durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(crdtstore.InvalidValue, match="max_key_bytes"):
        NodeSettings(max_key_bytes=10_000)
    assert NodeSettings.from_mapping({"journal_max_entries": 5}).journal_max_entries == 5
    assert not (tmp_path / "n").exists()


def test_identity_mismatch_on_reopen(tmp_path: Path) -> None:
    crdtstore.open(tmp_path / "n", node_id="a").close()
    with pytest.raises(crdtstore.IdentityMismatch):
        crdtstore.open(tmp_path / "n", node_id="b")


def test_journal_is_bounded(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", journal_max_entries=5) as node:
        m = node.lww_map("m")
        for i in range(20):
            m[i] = i
        first, rows = node.replica.journal_after(0, 100)
        assert [seq for seq, _ in rows] == list(range(16, 21)) and first == 16


def test_journal_is_trimmed_in_chunks_keeping_the_newest(tmp_path: Path) -> None:
    keep = 32  # trimmed once 32 // 16 = 2 rows more than that are held
    held = []
    with crdtstore.open(tmp_path / "n", journal_max_entries=keep) as node:
        m = node.lww_map("m")
        for i in range(1, 101):
            m[i] = i
            first, rows = node.replica.journal_after(0, 1000)
            seqs = [seq for seq, _ in rows]
            assert seqs == list(range(first, i + 1))  # contiguous, up to the newest commit
            held.append(len(seqs))
    assert min(held[keep:]) == keep and max(held) == keep + 2


def test_reading_a_namespace_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    # A misspelt name that is only read must not appear, here or (by replication) anywhere.
    with crdtstore.open(tmp_path / "n", node_id="n1") as node:
        node.lww_map("config")["k"] = 1
        before = node.replica.env.info()["last_txnid"]
        typo, hosts = node.lww_map("confgi"), node.or_set("hostz")
        assert typo.get("k", "default") == "default" and "k" not in typo
        assert len(typo) == 0 and list(typo) == [] and dict(typo.items()) == {}
        assert "h" not in hosts and len(hosts) == 0 and list(hosts) == []
        with node.transaction():
            assert typo.get("k") is None and len(hosts) == 0
        assert node.replica.env.info()["last_txnid"] == before  # no write transaction at all
        assert node.namespaces() == {"config": "lww_map"}
        with pytest.raises(crdtstore.TypeMismatch):
            node.or_set("config")
        typo["k"] = 2  # the first write creates it
        assert node.namespaces() == {"config": "lww_map", "confgi": "lww_map"}
        assert typo["k"] == 2
        with pytest.raises(crdtstore.TypeMismatch):
            node.or_set("confgi")
