"""Named examples of the protocol's subtle cases, each on a deterministic simulator."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from crdtstore.codec import pack, unpack
from crdtstore.crdt import CausalContext, Dot, LWWMap, ORSet
from crdtstore.errors import InvalidValue
from crdtstore.sync.engine import DIGEST_TOPIC, Publish, Send, SyncEngine
from crdtstore.sync.fingerprint import HASH_SPACE
from crdtstore.sync.messages import (
    DeltaBatch,
    Digest,
    DigestSummary,
    PackedRange,
    RepairRequest,
    decode_message,
    encode_message,
)
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica
from crdtstore.testing.simulator import Faults, Simulator

FAST = SyncSettings(
    digest_interval_ms=200,
    repair_grace_ms=300,
    repair_timeout_ms=500,
    range_session_timeout_ms=500,
    range_fanout=4,
    range_leaf_entries=2,
)


def settings(**changes: Any) -> SyncSettings:
    fields = {name: getattr(FAST, name) for name in FAST.__dataclass_fields__}
    return SyncSettings(**{**fields, **changes})


def elements(value: Any) -> frozenset[Any]:
    assert isinstance(value, ORSet)
    return value.elements()


def total(sim: Simulator, stat: str) -> int:
    return sum(n.engine.stats[stat] for n in sim.nodes.values())


def test_log_trimmed_gap_is_repaired_by_range_reconciliation() -> None:
    sim = Simulator(2, seed=1, settings=settings(max_log_batches=5))
    sim.add("n1", "s", "n1's")  # n1 holds data: it will not bootstrap, it repairs
    assert sim.run_until_quiescent(10_000)
    sim.partition({"n0"})
    for i in range(30):
        sim.add("n0", "s", i)
    for i in range(0, 30, 3):
        sim.remove("n0", "s", i)
    sim.run(1000)  # n0's digest rounds bound its log to 5 batches
    assert sim.replica("n0").log_length("s") <= 5
    assert sim.run_until_quiescent(30_000)
    assert elements(sim.values("s")["n1"]) == {i for i in range(30) if i % 3} | {"n1's"}
    assert sim.engine("n1").stats["log_gaps"] >= 1
    assert sim.engine("n1").stats["range_sessions_completed"] >= 1


def test_new_empty_node_bootstraps_by_range_reconciliation() -> None:
    sim = Simulator(3, seed=2, settings=FAST)
    sim.partition({"n0", "n1"})  # n2 is new: it has seen nothing
    for i in range(60):
        sim.add(f"n{i % 2}", "s", i)
    sim.run(1_000)
    assert sim.run_until_quiescent(30_000)
    newcomer = sim.engine("n2").stats
    assert newcomer["range_sessions_completed"] >= 1
    assert newcomer["repairs_requested"] == 0  # not replayed from the log
    assert elements(sim.values("s")["n2"]) == set(range(60))


def test_remove_both_sides_saw_survives_range_reconciliation() -> None:
    # The naive "ship what the other has not seen" would keep x on n1: both saw its add.
    sim = Simulator(2, seed=3, settings=settings(max_log_batches=0))
    sim.add("n0", "s", "x")
    sim.add("n0", "s", "y")
    assert sim.run_until_quiescent(10_000)
    assert elements(sim.values("s")["n1"]) == {"x", "y"}
    sim.partition({"n0"})
    sim.remove("n0", "s", "x")
    sim.run(1000)
    assert sim.run_until_quiescent(30_000)
    assert elements(sim.values("s")["n1"]) == {"y"}
    assert sim.engine("n1").stats["range_sessions_completed"] >= 1


def _pump(a: SyncEngine, b: SyncEngine, out: list[Any], now: int, limit: int) -> int:
    """Deliver direct messages between two engines for at most ``limit`` hops."""
    hops = 0
    queue = [(a.node_id, o) for o in out]
    engines = {a.node_id: a, b.node_id: b}
    while queue and hops < limit:
        src, o = queue.pop(0)
        if isinstance(o, Send):
            hops += 1
            dst = engines[o.peer]
            queue.extend((dst.node_id, x) for x in dst.on_message(src, o.data, now))
    return hops


def test_partial_range_context_does_not_lose_adds() -> None:
    # A session of many rounds (tiny leaves, not shipping whole to the empty asker), so it
    # can be interrupted with some ranges staged and others not.
    cfg = settings(
        range_leaf_entries=1,
        range_fanout=2,
        range_max_query_ranges=2,
        range_ship_to_empty=False,
    )
    sender, asker = MemoryReplica("s"), MemoryReplica("a")
    for _ in range(2):  # each second add replaces the first: a delta with a dependency
        for i in range(40):
            sender.mutate("set", "or_set", lambda st, i=i: st.add("s", i))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    digest = next(o for o in s_engine.on_tick(0) if isinstance(o, Publish))
    start = a_engine.on_message("", digest.data, 0)
    assert a_engine.sessions() == {"set": "s"}
    _pump(a_engine, s_engine, start, 0, limit=40)  # interrupted midway
    assert a_engine.sessions() == {"set": "s"}, "the session must still be unfinished"
    assert a_engine.stats["ranges_staged"] > 0, "some ranges must have been shipped"
    ctx = asker.context("set")
    received = {d for e in asker.value("set").entries.values() for d in e}
    assert set(ctx) <= received, "context merged before every range was resolved"
    for attempt in range(1, cfg.range_session_retries + 2):  # the sender stays silent
        a_engine.on_tick(attempt * cfg.range_session_timeout_ms)
    assert a_engine.sessions() == {}
    assert a_engine.stats["range_sessions_abandoned"] == 1
    # The adds not yet shipped arrive later as deltas: none may be dropped as "seen".
    for seq in range(1, 81):
        [data] = sender.log_batches("set", "s", seq, seq) or []
        a_engine.on_message("", data, 0)
    assert asker.value("set") == sender.value("set")  # no lost add, no revived replaced dot


def _bootstrap_rounds(ship_to_empty: bool) -> tuple[int, SyncEngine, MemoryReplica]:
    cfg = settings(range_leaf_entries=4, range_fanout=4, range_ship_to_empty=ship_to_empty)
    sender, asker = MemoryReplica("s"), MemoryReplica("a")
    for i in range(500):
        sender.mutate("set", "or_set", lambda st, i=i: st.add("s", i))  # type: ignore[attr-defined]
    sender.mutate("set", "or_set", lambda st: st.remove("s", 7))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    digest = next(o for o in s_engine.on_tick(0) if isinstance(o, Publish))
    _pump(a_engine, s_engine, a_engine.on_message("", digest.data, 0), 0, limit=10_000)
    assert asker.value("set") == sender.value("set")
    return s_engine.stats["range_queries_served"], a_engine, asker


def test_empty_asker_gets_whole_ranges_in_one_round() -> None:
    rounds, engine, _ = _bootstrap_rounds(ship_to_empty=True)
    assert rounds == 1, engine.stats
    assert engine.stats["range_sessions_completed"] == 1
    slow_rounds, _, _ = _bootstrap_rounds(ship_to_empty=False)
    assert slow_rounds > 3  # the tree walk it replaces: 4-way splits down to 4 entries


def _bootstrap_reply_sizes(reply_bytes: int, values: dict[str, str]) -> tuple[list[int], Any]:
    cfg = settings(range_max_reply_bytes=reply_bytes)
    sender, asker = MemoryReplica("s"), MemoryReplica("a")
    for ts, (key, value) in enumerate(sorted(values.items()), start=1):
        sender.mutate("m", "lww_map", lambda st, k=key, v=value, t=ts: st.put("s", k, v, t))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    sizes: list[int] = []
    queue = [("a", o) for o in a_engine.on_message("", s_engine.greet("a")[0].data, 0)]
    while queue:
        src, o = queue.pop(0)
        assert isinstance(o, Send)
        if src == "s":
            sizes.append(len(o.data))
        dst = a_engine if o.peer == "a" else s_engine
        queue.extend((dst.node_id, x) for x in dst.on_message(src, o.data, 0))
    assert asker.value("m") == sender.value("m")
    return sizes, s_engine.stats


def test_range_replies_stay_within_their_byte_budget() -> None:
    values = {f"k{i}": "v" * 50_000 for i in range(40)}  # 2 MB in all
    sizes, stats = _bootstrap_reply_sizes(200_000, values)
    assert len(sizes) > 5 and stats["ranges_over_reply_bytes"] > 0
    assert max(sizes) < 200_000 + 10_000  # the budget, plus a reply's framing
    whole, _ = _bootstrap_reply_sizes(8 * 1024 * 1024, values)
    assert max(whole) > 2_000_000  # control: without the bound it all comes in one reply


def test_a_value_larger_than_the_reply_budget_still_arrives() -> None:
    values = {"big": "x" * 300_000, **{f"k{i}": "v" * 1_000 for i in range(30)}}
    sizes, _ = _bootstrap_reply_sizes(100_000, values)  # converges (checked inside)
    assert max(sizes) > 300_000  # that range went alone, whatever its size


def test_node_never_requests_namespace_outside_topics() -> None:
    topics = {"n0": {"a", "b"}, "n1": {"a"}, "n2": {"a", "b"}}
    sim = Simulator(3, seed=4, settings=FAST, topics=topics, record=True)
    sim.set_faults(Faults(drop=0.3))
    for i in range(20):
        sim.add("n0", "a", i)
        sim.add("n2", "b", i)
        sim.run(50)
    assert sim.run_until_quiescent(30_000)
    assert "b" not in sim.replica("n1").namespaces()
    assert elements(sim.values("b")["n0"]) == set(range(20))
    assert sim.wire is not None
    for src, _, data in sim.wire:
        msg = decode_message(data)
        if src == "n1" and not isinstance(msg, (Digest, DigestSummary)):
            assert msg.namespace != "b", msg
        if src == "n1" and isinstance(msg, (Digest, DigestSummary)):
            assert {item[0] for item in msg.namespaces} <= {"a"}
    # Asked directly, n1 neither answers nor accepts anything about b.
    n1 = sim.engine("n1")
    assert n1.on_message("n0", encode_message(RepairRequest(1, "b", "n2", 1, 5)), sim.now) == []
    writer = MemoryReplica("n2")  # a well-formed batch of b from n2, as n2 would publish it
    writer.mutate("b", "or_set", lambda st: st.add("n2", 99))  # type: ignore[attr-defined]
    batch = writer.log_batches("b", "n2", 1, 1)
    assert batch
    n1.on_message("", batch[0], sim.now)
    assert n1.stats["rejected_topic"] >= 2
    assert "b" not in sim.replica("n1").namespaces()


def test_forged_own_origin_batch_rejected() -> None:
    sim = Simulator(2, seed=5, settings=FAST)
    sim.add("n0", "s", "real")
    assert sim.run_until_quiescent(10_000)
    before = sim.replica("n0").value("s")
    forged_state = ORSet({}, sim.context("n0", "s"))
    forged = forged_state.add("n0", "evil")  # what n1 could craft in n0's name
    batch = DeltaBatch("s", "n0", 2, 2, forged)
    out = sim.engine("n0").on_message("", encode_message(batch), sim.now)
    assert out == []
    assert sim.engine("n0").stats["rejected_own_origin"] == 1
    assert sim.replica("n0").value("s") == before


def test_future_timestamp_batch_deferred_then_applied() -> None:
    drift = 5_000
    sim = Simulator(2, seed=6, settings=settings(max_clock_drift_ms=drift))
    sim.nodes["n0"].clock_offset_ms = 3 * drift  # n0's clock runs 15 s ahead
    sim.put("n0", "m", "k", "from the future")
    sim.run(5_000)
    assert sim.engine("n1").stats["rejected_clock_drift"] >= 1
    assert "m" not in sim.replica("n1").namespaces() or sim.values("m")["n1"].get("k") is None
    sim.run(15_000)  # local time catches up to within the drift bound
    assert sim.run_until_quiescent(30_000)
    value = sim.values("m")["n1"]
    assert isinstance(value, LWWMap)
    assert value.get("k") == "from the future"


def test_idle_digest_cost_constant() -> None:
    def digest_bytes(entries: int) -> float:
        sim = Simulator(3, seed=7, settings=FAST)
        state = ORSet(
            {i: {Dot("n0", 300 + i): None} for i in range(entries)},
            # Same seq magnitudes whatever the size: only the state grows.
            CausalContext({"n0": 300 + entries, "n1": 500}),
        )
        for node in sim.nodes:
            sim.replica(node).load_state("s", state)
        sim.run(1_000)
        sim.reset_counters()
        sim.run(10_000)
        assert set(sim.messages) == {"digest_h"}, sim.messages  # idle: nothing else moves
        return sim.bytes["digest_h"] / sim.messages["digest_h"]

    small, large = digest_bytes(300), digest_bytes(30_000)
    assert small == large


def test_range_entries_newer_than_base_wait_for_their_deltas() -> None:
    # Dots the sender gains after the base snapshot must not be taken from a range: their
    # deltas replaced dots the base does not hold, which would then come back to life.
    cfg = settings(
        range_leaf_entries=1,
        range_fanout=2,
        range_max_query_ranges=2,
        range_ship_to_empty=False,  # several rounds: the sender changes between them
    )
    sender, asker = MemoryReplica("s"), MemoryReplica("a")
    for i in range(20):
        sender.mutate("set", "or_set", lambda st, i=i: st.add("s", i))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    digest = next(o for o in s_engine.on_tick(0) if isinstance(o, Publish))
    out = a_engine.on_message("", digest.data, 0)
    _pump(a_engine, s_engine, out, 0, limit=2)  # the base context is now fixed
    for _ in range(2):  # two more adds of every key after the base: 21..40, 41..60
        for i in range(20):
            sender.mutate("set", "or_set", lambda st, i=i: st.add("s", i))  # type: ignore[attr-defined]
    session = a_engine.ranges.session("set")
    assert session is not None
    query = Send("s", session.query)
    _pump(a_engine, s_engine, [query], 0, limit=1_000)
    assert a_engine.stats["range_sessions_completed"] == 1
    for seq in range(1, 61):  # the deltas, in order, as repair would deliver them
        [data] = sender.log_batches("set", "s", seq, seq) or []
        a_engine.on_message("", data, 0)
    assert asker.value("set") == sender.value("set")


def _bootstrap_into(
    asker: Any, progress: Callable[[], None] | None = None
) -> tuple[MemoryReplica, Any]:
    """An empty ``asker`` reconciles 600 keys (with removals) from a sender, in replies of
    at most 64 entries; returns the sender and the asker engine's stats. The asker takes
    its frames as a replicator hands them over (``on_messages``), with ``progress``."""
    cfg = settings(range_max_reply_entries=64)
    sender = MemoryReplica("s")
    for i in range(600):
        sender.mutate("m", "lww_map", lambda st, i=i: st.put("s", f"k{i}", i, i + 1))  # type: ignore[attr-defined]
    for i in range(0, 600, 7):
        sender.mutate("m", "lww_map", lambda st, i=i: st.delete("s", f"k{i}"))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    queue = [("a", o) for o in a_engine.on_message("", s_engine.greet("a")[0].data, 0)]
    while queue:
        src, o = queue.pop(0)
        assert isinstance(o, Send)
        if o.peer == "a":
            answer = a_engine.on_messages([(src, o.data, None)], 0, progress=progress)
            queue.extend(("a", x) for x in answer)
        else:
            queue.extend(("s", x) for x in s_engine.on_message(src, o.data, 0))
    assert a_engine.stats["range_sessions_completed"] == 1
    return sender, a_engine.stats


@pytest.mark.parametrize("where", ["lmdb", "memory"])
def test_a_session_applies_the_ranges_it_received_when_it_ends(
    make_replica: Callable[..., Any], where: str
) -> None:
    """Every shipped range is kept as its bytes until the session ends, then checked and
    applied: by the LMDB replica straight into rows, by the memory replica as values."""
    asker = make_replica("a", node_id="a") if where == "lmdb" else MemoryReplica("a")
    calls: list[int] = []
    sender, stats = _bootstrap_into(asker, lambda: calls.append(1))
    assert stats["ranges_staged"] >= 600 // 64, stats
    # Between the ranges as they are applied: a long apply keeps its node alive.
    assert len(calls) == stats["ranges_staged"] == stats["ranges_applied"]
    want = {k: dict(e) for k, e in sender.value("m").entries.items() if e}
    got = {k: dict(e) for k, e in asker.read_range("m", 0, HASH_SPACE).entries.items()}
    assert got == want and len(got) == 600 - len(range(0, 600, 7))
    assert asker.context("m") == sender.context("m")


class _CountingReplica(MemoryReplica):
    """Counts commits; ``refuse`` names a batch (origin, first) that cannot be applied."""

    def __init__(self, node_id: str, refuse: tuple[str, int] | None = None) -> None:
        super().__init__(node_id)
        self.commits: list[int] = []
        self.refuse = refuse

    def apply_batch(self, batch: DeltaBatch, encoded: bytes) -> bool:
        if (batch.origin, batch.first) == self.refuse:
            raise InvalidValue("refused by the test")
        return super().apply_batch(batch, encoded)

    def apply_batches(self, batches: Any) -> list[bool]:
        if any((b.origin, b.first) == self.refuse for b, _ in batches):
            raise InvalidValue("refused by the test")
        self.commits.append(len(batches))
        return super().apply_batches(batches)


def _frames(ops: list[tuple[str, int]]) -> list[bytes]:
    """The batches of origin w doing ``ops`` ("add" / "remove", element) in turn; a
    remove's context names the add it removes, so it cannot be applied before it."""
    w = MemoryReplica("w")
    out = []
    for op, element in ops:
        batch = w.mutate("s", "or_set", lambda s, op=op, e=element: getattr(s, op)("w", e))
        out.append(encode_message(batch))
    return out


def test_queued_batches_are_applied_in_one_commit_even_out_of_order() -> None:
    add0, add1, rm1, add2 = _frames([("add", 0), ("add", 1), ("remove", 1), ("add", 2)])
    r = _CountingReplica("r")
    engine = SyncEngine("r", r, FAST)
    # The remove arrives before the add it removes: it waits, then joins the same commit.
    engine.on_messages([("", f, "w") for f in (rm1, add0, add1)], 0)
    assert r.commits == [3] and elements(r.value("s")) == {0}
    assert engine.stats["batches_waiting"] == 1
    engine.on_messages([("", f, "w") for f in (add2, add0)], 0)
    assert r.commits == [3, 1] and elements(r.value("s")) == {0, 2}
    assert engine.stats["batches_applied"] == 4 and engine.stats["duplicates"] == 1


def test_a_digest_among_queued_batches_does_not_cut_their_commit() -> None:
    """The digest is handled after the batches, which share one commit (before, a digest
    between them split the group: one commit before it, one after)."""
    add0, add1, add2 = _frames([("add", 0), ("add", 1), ("add", 2)])
    peer = SyncEngine("p", MemoryReplica("p"), FAST)
    digests = [
        o.data for o in peer.on_tick(10_000) if isinstance(o, Publish) and o.topic == DIGEST_TOPIC
    ]
    assert len(digests) == 1
    r = _CountingReplica("r")
    engine = SyncEngine("r", r, FAST)
    engine.on_messages(
        [("", add0, "w"), ("", digests[0], "p"), ("", add1, "w"), ("", add2, "w")], 0
    )
    assert r.commits == [3] and elements(r.value("s")) == {0, 1, 2}
    assert engine.stats["batch_group_commits"] == 1 and engine.stats["batches_applied"] == 3


def test_a_batch_that_cannot_be_applied_keeps_only_itself_and_what_follows_it_out() -> None:
    frames = _frames([("add", 0), ("add", 1), ("remove", 1), ("add", 2)])
    r = _CountingReplica("r", refuse=("w", 2))
    engine = SyncEngine("r", r, FAST)
    engine.on_messages([("", f, "w") for f in frames], 0)
    assert r.commits == []  # the group failed: each was tried alone
    assert elements(r.value("s")) == {0, 2}  # add 1 refused; the remove of 1 waits for it
    assert engine.stats["rejected_invalid"] == 1 and engine.stats["batches_waiting"] == 1
    r.refuse = None
    engine.on_messages([("", frames[1], "w")], 0)  # its repair, say
    assert elements(r.value("s")) == {0, 2}
    assert r.context("s") == CausalContext({"w": 4})  # the remove was applied too


class _BadRangeSender(MemoryReplica):
    """Ships its first ``bad`` ranges with two entries swapped (out of reconciliation
    order), as a buggy or hostile sender might: only the apply at a session's end sees it."""

    def __init__(self, node_id: str, bad: int) -> None:
        super().__init__(node_id)
        self.bad = bad

    def read_range_packed(self, namespace: str, lo: int, hi: int, max_bytes: int | None) -> Any:
        packed = super().read_range_packed(namespace, lo, hi, max_bytes)
        if packed is None or packed.count < 2 or self.bad == 0:
            return packed
        self.bad -= 1
        entries = unpack(packed.data)
        entries[0], entries[1] = entries[1], entries[0]
        return PackedRange(packed.type_name, packed.count, pack(entries))


def test_a_session_whose_entries_break_a_rule_changes_nothing_and_is_retried_later() -> None:
    cfg = settings(range_max_reply_entries=64)
    sender, asker = _BadRangeSender("s", bad=1), MemoryReplica("a")
    for i in range(300):
        sender.mutate("m", "lww_map", lambda st, i=i: st.put("s", f"k{i}", i, i + 1))  # type: ignore[attr-defined]
    sender.bound_log("m", 0)  # so that only a session can bring the keys, not repair
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    greeting = s_engine.greet("a")[0].data

    def bootstrap(now: int) -> None:
        queue = [("a", o) for o in a_engine.on_message("", greeting, now)]
        while queue:
            src, o = queue.pop(0)
            dst = a_engine if o.peer == "a" else s_engine
            queue.extend((dst.node_id, x) for x in dst.on_message(src, o.data, now))

    bootstrap(0)
    assert a_engine.stats["range_sessions_abandoned"] == 1, a_engine.stats
    assert a_engine.stats["rejected_range_invalid"] == 1
    assert a_engine.stats["range_sessions_completed"] == 0
    assert "m" not in asker.namespaces() or not asker.context("m")  # nothing applied
    bootstrap(cfg.range_session_timeout_ms - 1)  # too soon: not started again
    assert a_engine.stats["range_sessions_started"] == 1
    bootstrap(cfg.range_session_timeout_ms)  # the sender now ships good ranges
    assert a_engine.stats["range_sessions_completed"] == 1, a_engine.stats
    assert asker.value("m") == sender.value("m")


def _interleaved_writers_while_one_node_is_down(sim: Simulator) -> None:
    """n0 and n1 take turns writing a shared key (each write observes the other's last
    one, so each origin's batches depend on the other's) while n2 is down, and n2 comes
    back while both peers' logs still hold everything it missed."""
    sim.put("n0", "m", "k", 0)
    sim.run(1500)  # n2's digests show "m": the peers keep its gap in their logs
    sim.crash("n2")
    for i in range(200):
        writer = ("n0", "n1")[i % 2]
        sim.put(writer, "m", "shared", i)
        sim.put(writer, "m", f"own-{writer}", i)
        sim.run(5)
    sim.run(1000)
    sim.restart("n2")


def _converged_within(sim: Simulator, bound_ms: int) -> int | None:
    """Simulated ms until all replicas are equal, or None past ``bound_ms``."""
    start = sim.now
    while sim.now - start <= bound_ms:
        sim.run(100)
        if sim.converged():
            return sim.now - start
    return None


def test_restarted_node_catches_up_when_writers_share_keys() -> None:
    # Repair replies used to join any run of logged batches into one frame: n0's frame
    # then needed n1's seqs up to ~200, n1's needed n0's, and n2 held both forever.
    sim = Simulator(["n0", "n1", "n2"], seed=1, settings=SyncSettings())
    _interleaved_writers_while_one_node_is_down(sim)
    took = _converged_within(sim, 10_000)
    assert took is not None, sim.engine("n2").stats
    assert sim.engine("n2").stats["stuck_fallbacks"] == 0  # repair did it, not the net
    assert sim.engine("n2").stats["range_sessions_started"] == 0
    assert sim.engine("n0").stats["repairs_served"] > 0


def test_repair_reply_frames_need_only_what_their_first_batch_observed() -> None:
    sim = Simulator(["n0", "n1", "n2"], seed=1, settings=SyncSettings())
    _interleaved_writers_while_one_node_is_down(sim)
    engine = sim.engine("n0")
    request = RepairRequest(7, "m", "n0", 2, 201)
    [reply] = engine.on_message("n2", encode_message(request), sim.local_ms("n0"))
    assert isinstance(reply, Send)
    frames = [decode_message(b) for b in decode_message(reply.data).batches]
    log = sim.replica("n0")
    assert frames[0].first == 2 and all(
        a.last + 1 == b.first for a, b in itertools.pairwise(frames)
    )
    for frame in frames:
        [first] = [decode_message(b) for b in log.log_batches("m", "n0", frame.first, frame.first)]
        foreign = {d for d in frame.rest if d.replica != "n0"}
        assert foreign <= set(first.rest), (frame.first, frame.last)
    assert len(frames) > 10  # the writers' turns keep the log from joining into a few
    # Writes that observe nothing new of another origin still travel joined.
    solo = Simulator(["n0", "n1"], seed=1, settings=SyncSettings())
    solo.put("n0", "m", "k", 0)
    solo.run(1500)
    solo.crash("n1")
    for i in range(50):
        solo.put("n0", "m", "k", i)
        solo.run(20)
    [reply] = solo.engine("n0").on_message(
        "n1", encode_message(RepairRequest(8, "m", "n0", 2, 51)), solo.local_ms("n0")
    )
    [joined] = [decode_message(b) for b in decode_message(reply.data).batches]
    assert (joined.first, joined.last) == (2, 51)


def _join_every_run(engine: SyncEngine) -> None:
    """Make ``engine`` serve repairs as it did before the fix: every logged run of an
    origin joined into one frame, whatever its batches observed."""

    def join_all(ns: str, logged: Any, origin: str) -> list[bytes]:
        batches = [decode_message(b) for b in logged]
        delta = batches[0].delta
        for b in batches[1:]:
            delta = delta.join(b.delta)
        first, last = batches[0].first, batches[-1].last
        return [encode_message(DeltaBatch(ns, origin, first, last, delta))]

    engine.repair_server.coalesce_runs = join_all  # type: ignore[method-assign]


def test_a_replica_that_makes_no_progress_falls_back_to_ranges_within_the_bound() -> None:
    cfg = SyncSettings()
    sim = Simulator(["n0", "n1", "n2"], seed=1, settings=cfg)
    for node in ("n0", "n1"):
        _join_every_run(sim.engine(node))  # repair can no longer make progress
    _interleaved_writers_while_one_node_is_down(sim)
    sim.run(cfg.repair_grace_ms + 2 * cfg.digest_interval_ms)
    n2 = sim.engine("n2")
    behind = n2.behind()
    assert set(behind) == {"m"} and behind["m"]["missing"] > 0, behind
    assert n2.stats["stuck_fallbacks"] == 0 and n2.stats["batches_waiting"] > 0
    # The bound: no progress for stuck_after_ms, checked at each digest, plus one session.
    bound = cfg.stuck_after_ms + 2 * cfg.digest_interval_ms + cfg.range_session_timeout_ms
    assert _converged_within(sim, bound) is not None, n2.stats
    assert n2.stats["stuck_fallbacks"] == 1
    assert n2.stats["range_sessions_completed"] == 1
    sim.run(2 * cfg.digest_interval_ms)
    assert n2.behind() == {}


def test_a_held_batch_is_dropped_after_max_wait_ms() -> None:
    cfg = settings(max_wait_ms=1000, digest_interval_ms=100)
    add0, add1, rm1 = _frames([("add", 0), ("add", 1), ("remove", 1)])
    engine = SyncEngine("r", MemoryReplica("r"), cfg)
    engine.on_messages([("", f, "w") for f in (add0, rm1)], 0)  # rm1 needs add1
    assert engine.stats["batches_waiting"] == 1
    engine.on_tick(cfg.max_wait_ms - 1)
    assert engine.stats["waiting_expired"] == 0
    engine.on_tick(cfg.max_wait_ms + cfg.digest_interval_ms)
    assert engine.stats["waiting_expired"] == 1
    engine.on_messages([("", add1, "w")], 2000)  # what it needed, too late: not applied
    assert elements(engine.replica.value("s")) == {0, 1}


def test_held_batches_are_bounded_in_bytes() -> None:
    frames = _frames([("add", 0), ("add", 1), ("remove", 1), ("add", 2), ("remove", 2)])
    add0, _, rm1, _, rm2 = frames
    engine = SyncEngine("r", MemoryReplica("r"), settings(max_waiting_bytes=len(rm1)))
    engine.on_messages([("", f, "w") for f in (add0, rm1, rm2)], 0)
    assert engine.stats["batches_waiting"] == 1 and engine.stats["waiting_overflow"] == 1
