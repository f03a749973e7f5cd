"""Group commit (crdtstore.storage.group) on real LMDB directories: who shares a commit,
what a failing mutation leaves, what a group logs, and crash safety under concurrent
writers killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore.crdt import CausalContext, LWWMap
from crdtstore.crdt.hlc import LOGICAL_BITS, MAX_TIMESTAMP
from crdtstore.errors import ClosedError, InvalidValue, StorageError
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica, LocalWrite
from crdtstore.storage.group import GroupCommit
from crdtstore.storage.local import Committed
from crdtstore.sync.messages import decode_message

Make = Callable[..., LMDBReplica]


def put(key: Any, value: Any) -> Callable[[LocalWrite], int]:
    return lambda w: w.put("m", key, value)


def held(r: LMDBReplica) -> dict[Any, Any]:
    value = r.read_range("m", 0, 1 << 64)
    assert isinstance(value, LWWMap)
    return dict(value.items())


def queued(r: LMDBReplica, *fns: Callable[[LocalWrite], Any]) -> list[Future[Any]]:
    """Queue ``fns`` and commit them as one group (no other thread is writing)."""
    futures = [r.group.submit(fn) for fn in fns]
    r.group.lead()
    return futures


# -- who shares a commit ----------------------------------------------------------------------


def test_a_writer_alone_commits_at_once_and_alone(make_replica: Make) -> None:
    r = make_replica("a")
    for i in range(3):
        r.group.run(put(f"k{i}", i))
        assert r.stats["group_commits"] == i + 1  # one commit per call: no waiting for company
    assert r.stats["group_commit_writes"] == 3
    # Each call its own delta batch, as before group commit.
    assert [decode_message(b).first for b in r.log_batches("m", "a", 1, 3) or []] == [1, 2, 3]
    assert held(r) == {"k0": 0, "k1": 1, "k2": 2}


def test_writers_arriving_during_a_commit_share_the_next(make_replica: Make) -> None:
    """While a transaction holds LMDB's writer lock, eight threads write: the first leads
    and waits for the lock, the others queue behind it; once the lock is free the leader
    takes the queue, and all eight commit together."""
    r = make_replica("a")
    hold = r.begin_local()  # the writer lock, as a transaction() or another process holds it
    hold.put("m", "held", 0)
    threads = [threading.Thread(target=r.group.run, args=(put(f"k{i}", i),)) for i in range(8)]
    for t in threads:
        t.start()
    wait = threading.Event()
    for _ in range(2000):  # bounded poll: all eight queued (the leader waits for the lock)
        if len(r.group._queue) == 8:
            break
        wait.wait(0.01)
    assert len(r.group._queue) == 8
    hold.commit()
    for t in threads:
        t.join(timeout=30)
    assert r.stats["group_commits"] == 1 and r.stats["group_commit_writes"] == 8
    assert held(r) == {"held": 0, **{f"k{i}": i for i in range(8)}}


def test_a_write_arriving_while_the_leader_applies_joins_its_group(make_replica: Make) -> None:
    r = make_replica("a")
    late: list[Future[Any]] = []

    def first(w: LocalWrite) -> int:
        late.append(r.group.submit(put("late", 2)))  # arrives mid-apply, as from a thread
        return w.put("m", "first", 1)

    (done,) = queued(r, first)
    assert done.result() and late[0].done() and late[0].result()
    assert r.stats["group_commits"] == 1 and r.stats["group_commit_writes"] == 2
    assert held(r) == {"first": 1, "late": 2}


# -- a failing mutation fails alone ----------------------------------------------------------------


def test_a_bad_value_fails_only_its_own_caller(make_replica: Make) -> None:
    r = make_replica("a")
    ok1, bad, ok2 = queued(r, put("a", 1), put("b", object()), put("c", 3))
    assert ok1.result() > 0 and ok2.result() > 0
    with pytest.raises(InvalidValue):
        bad.result()
    assert r.stats["group_commits"] == 1
    assert held(r) == {"a": 1, "c": 3}
    # The group's seqs have no hole where the bad value was: 1 and 2, one batch.
    assert r.context("m") == CausalContext({"a": 2})


def test_a_mutation_that_wrote_then_raised_is_rolled_back_alone(make_replica: Make) -> None:
    r = make_replica("a")

    def half_done(w: LocalWrite) -> None:
        w.put("m", "half", 1)
        raise RuntimeError("a bug after a write")

    first, broken, last = queued(r, put("a", 1), half_done, put("c", 3))
    with pytest.raises(RuntimeError):
        broken.result()
    assert first.result() and last.result()
    assert held(r) == {"a": 1, "c": 3}
    assert r.context("m") == CausalContext({"a": 2})


def test_a_mutation_that_created_a_namespace_then_failed_leaves_no_namespace(
    tmp_path: Path,
) -> None:
    """The put into a new namespace fails after creating it (its stamp overflows the
    hybrid clock): the group's other writes commit, the namespace does not."""
    overflow = threading.Event()

    def clock() -> int:
        if overflow.is_set():
            overflow.clear()  # once: the put into "fresh" reads the clock first
            return (MAX_TIMESTAMP >> LOGICAL_BITS) + 1
        return time.time_ns() // 1_000_000

    r = LMDBReplica(tmp_path / "a", "a", NodeSettings(), now_ms=clock)
    try:
        r.group.run(put("before", 0))
        overflow.set()
        bad, ok = queued(r, lambda w: w.put("fresh", "k", 1), put("a", 1))
        with pytest.raises(InvalidValue, match="overflow"):
            bad.result()
        assert ok.result() > 0
        assert r.stats["group_commits"] == 2
        assert dict(r.namespaces()) == {"m": "lww_map"}
        assert held(r) == {"before": 0, "a": 1}
        # The name is free still: another type may take it.
        r.group.run(lambda w: w.add("fresh", "x"))
        assert dict(r.namespaces()) == {"m": "lww_map", "fresh": "or_set"}
    finally:
        r.close()


def test_a_broken_transaction_fails_the_whole_group_and_writes_nothing(
    make_replica: Make,
) -> None:
    r = make_replica("a")
    r.group.run(put("before", 0))

    def breaks(w: LocalWrite) -> None:
        w.abort()  # as an LMDB error does: the transaction is gone
        raise StorageError("the transaction failed")

    futures = queued(r, put("a", 1), breaks, put("c", 3))
    for f in futures:
        with pytest.raises(StorageError):
            f.result()
    assert held(r) == {"before": 0}


def test_a_closed_replica_fails_queued_writes(make_replica: Make) -> None:
    r = make_replica("a")
    future = r.group.submit(put("a", 1))
    r.close()
    r.group.lead()
    with pytest.raises(ClosedError):
        future.result()


def test_a_failed_flush_fails_its_writers_but_still_wakes_the_watchers(
    make_replica: Make,
) -> None:
    """The group committed (every reader sees it), then its flush failed: each writer is
    told, and the commit hooks (watchers, publication) run as for any commit."""
    r = make_replica("a")
    seen: list[Committed] = []

    def failing_flush(ticket: int) -> None:
        raise StorageError(f"committed, but flushing it to disk failed (ticket {ticket})")

    group = GroupCommit(r.begin_local, failing_flush, r.stats, after=seen.append)
    futures = [group.submit(put(k, i)) for i, k in enumerate("ab")]
    group.lead()
    for f in futures:
        with pytest.raises(StorageError, match="flushing"):
            f.result()
    assert len(seen) == 1 and seen[0].namespaces == ("m",) and seen[0].changed
    assert held(r) == {"a": 0, "b": 1}
    assert r.stats["group_flush_errors"] == 1


def test_settle_waits_for_a_group_in_flight_that_took_its_write(make_replica: Make) -> None:
    """A thread's group took a queued write and is still applying when settle() is called
    with the queue empty: settle() returns only once that write is settled (an AsyncNode
    closes the node once it returns; lead() alone returned at once)."""
    r = make_replica("a")
    applying, release = threading.Event(), threading.Event()

    def slow(w: LocalWrite) -> int:
        applying.set()
        assert release.wait(timeout=60)  # bounded only so a broken test ends
        return w.put("m", "slow", 0)

    hold = r.begin_local()  # the writer lock: the thread leads, and waits for it
    leader = threading.Thread(target=r.group.run, args=(slow,))
    leader.start()
    poll = threading.Event()
    for _ in range(2000):  # bounded poll: the leader is queued
        if r.group._queue:
            break
        poll.wait(0.01)
    future = r.group.submit(put("queued", 1))
    hold.abort()  # the leader takes both, and applies slow() first
    assert applying.wait(timeout=30)
    assert not r.group._queue
    outcome: list[bool] = []

    def settle() -> None:
        r.group.settle()
        outcome.append(future.done())

    waiter = threading.Thread(target=settle)
    waiter.start()
    for _ in range(2000):  # bounded poll: settle() returned, or waits for the flight
        if not waiter.is_alive() or r.group._settling:
            break
        poll.wait(0.01)
    release.set()
    waiter.join(timeout=30)
    leader.join(timeout=30)
    assert outcome == [True]
    assert future.result() > 0 and held(r) == {"slow": 0, "queued": 1}


# -- what a group logs -----------------------------------------------------------------------


def test_a_group_is_one_delta_batch_that_rebuilds_its_state(make_replica: Make) -> None:
    r, peer = make_replica("a"), make_replica("b")
    r.group.run(put("k", 0))
    queued(r, put("k", 1), put("j", 2), lambda w: w.add("s", "x"), put("k", 3))
    assert r.context("m") == CausalContext({"a": 4})
    raws = r.log_batches("m", "a", 1, 4) or []
    assert [(b.first, b.last) for b in map(decode_message, raws)] == [(1, 1), (2, 4)]
    for raw in raws:  # a peer applying the two batches in order holds the same state
        assert peer.apply_batch(decode_message(raw), raw)
    assert held(peer) == held(r) == {"k": 3, "j": 2}
    assert r.log_batches("s", "a", 1, 1) is not None


def test_a_transaction_stays_a_commit_of_its_own(tmp_path: Path) -> None:
    """A transaction() running while other threads write single puts: its writes are one
    batch holding exactly them, and a transaction that raises writes nothing."""
    with crdtstore.open(tmp_path / "n", node_id="a") as node:
        m = node.lww_map("m")
        stop = threading.Event()

        def single(i: int) -> None:
            n = 0
            while not stop.is_set():
                m[f"single-{i}-{n}"] = n
                n += 1

        writers = [threading.Thread(target=single, args=(i,)) for i in range(4)]
        for t in writers:
            t.start()
        try:
            with node.transaction():
                for k in range(5):
                    m[f"tx-{k}"] = k
            with pytest.raises(ZeroDivisionError), node.transaction():
                m["tx-aborted"] = 1
                raise ZeroDivisionError
        finally:
            stop.set()
            for t in writers:
                t.join()
        top = node.replica.context("m").max_seq("a")
        batches = [decode_message(b) for b in node.replica.log_batches("m", "a", 1, top) or []]
        mine = [b for b in batches if any(str(k).startswith("tx-") for k in b.delta.entries)]
        assert len(mine) == 1
        assert set(mine[0].delta.entries) == {f"tx-{k}" for k in range(5)}
        assert mine[0].last - mine[0].first == 4
        assert "tx-aborted" not in m


# -- crash safety under concurrent writers -----------------------------------------------------


WRITERS = """
import sys, threading, crdtstore
path, start, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
with crdtstore.open(path, node_id="w") as node:
    m = node.lww_map("m")
    print("ready", flush=True)

    def write(t):
        i = start
        while True:
            m[f"{t}-{i}"] = [t, i]
            with lock:  # printed only after the call returned: acknowledged
                print(t, i, "ok", flush=True)
            i += 1

    for t in range(threads):
        threading.Thread(target=write, args=(t,), daemon=True).start()
    threading.Event().wait()
"""


def test_acknowledged_concurrent_writes_survive_sigkill(
    tmp_path: Path, spawn: Any, lines: Any
) -> None:
    path = str(tmp_path / "node")
    acked: list[tuple[int, int]] = []
    for round_ in range(6):
        child = spawn(WRITERS, path, str(round_ * 1_000_000), "8")
        out = lines(child)
        out.expect("ready")
        for _ in range(40 + 30 * round_):  # the kill lands at a different point each round
            t, i, _ = out.expect("").split()
            acked.append((int(t), int(i)))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        for line in out.rest():  # the kill may cut the last line short: not acknowledged
            if line.endswith(" ok"):
                t, i, _ = line.split()
                acked.append((int(t), int(i)))
        with crdtstore.open(path, node_id="w") as node:
            m = node.lww_map("m")
            missing = [(t, i) for t, i in acked if m.get(f"{t}-{i}") != [t, i]]
            assert not missing, f"acknowledged writes lost: {missing[:10]}"
    assert len({t for t, _ in acked}) == 8
