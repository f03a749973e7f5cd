"""An idle engine: quiet between digests, and no writes when nothing changed.

The replicator waits for ``SyncEngine.quiet_until`` instead of ticking every few
milliseconds, so the engine must say precisely when a tick has work: never quiet while a
frame that may have moved a context, gap evidence, a session or a held batch waits; quiet
until the next digest otherwise. Trimming must not write (a durable commit) when a
namespace's context did not move since it was last bounded.
"""

from __future__ import annotations

from typing import Any

from crdtstore.sync.engine import DIGEST_TOPIC, Publish, Send, SyncEngine
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica

CFG = SyncSettings(digest_interval_ms=1000, repair_grace_ms=150, repair_timeout_ms=400)


class CountingReplica(MemoryReplica):
    """A memory replica that counts the log boundings asked of it (each one a write
    transaction on the LMDB replica)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.boundings = 0

    def bound_log(self, namespace: str, max_batches: int) -> int:
        self.boundings += 1
        return super().bound_log(namespace, max_batches)


def add(replica: MemoryReplica, element: Any) -> None:
    replica.mutate("s", "or_set", lambda st: st.add(replica.node_id, element))  # type: ignore[attr-defined]


def digest(engine: SyncEngine, now: int) -> bytes:
    [out] = [o for o in engine.on_tick(now) if isinstance(o, Publish) and o.topic == DIGEST_TOPIC]
    return out.data


def test_an_idle_engine_is_quiet_until_its_next_digest() -> None:
    a = SyncEngine("a", MemoryReplica("a"), CFG)
    a.add_peer("b")
    assert a.quiet_until() is None  # nothing ticked yet: a tick has work
    digest(a, 0)
    assert a.quiet_until() == CFG.digest_interval_ms
    assert a.on_tick(500) == []  # a tick while quiet does nothing (what skipping it saves)
    assert a.quiet_until() == CFG.digest_interval_ms


def test_an_idle_peers_digest_keeps_the_engine_quiet_and_a_gap_ends_the_quiet() -> None:
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    a, b = SyncEngine("a", ra, CFG), SyncEngine("b", rb, CFG)
    a.add_peer("b")
    b.add_peer("a")
    for (mine, engine), theirs in (((ra, a), b), ((rb, b), a)):  # both hold the namespace
        add(mine, mine.node_id)
        [batch] = engine.on_local_commit(0)
        theirs.on_message("", batch.data, 0)
    digest(a, 0)
    assert a.on_message("", digest(b, 0), 10) == []
    assert a.quiet_until() == CFG.digest_interval_ms  # same (empty) state: nothing to do
    add(rb, "x")  # b's next digest shows a seq that a lacks: a asks for the vector
    [ask] = a.on_message("", digest(b, 1000), 1010)
    assert isinstance(ask, Send)
    [vector] = b.on_message("a", ask.data, 1011)
    assert isinstance(vector, Send)
    a.on_message("b", vector.data, 1012)
    assert a.quiet_until() is None
    # ... and the ticks it needs then fetch the missing seq, once the grace has passed.
    sent = a.on_tick(1012 + CFG.repair_grace_ms)
    assert any(isinstance(o, Send) for o in sent), sent


def test_a_received_batch_ends_the_quiet_until_the_next_tick() -> None:
    # It may have moved a context (a gap in its cloud): the next tick looks.
    rb = MemoryReplica("b")
    a = SyncEngine("a", MemoryReplica("a"), CFG)
    b = SyncEngine("b", rb, CFG)
    a.add_peer("b")
    digest(a, 0)
    add(rb, "x")
    [batch] = [o for o in b.on_local_commit(5) if isinstance(o, Publish)]
    a.on_message("", batch.data, 10)
    assert a.quiet_until() is None
    a.on_tick(60)
    assert a.quiet_until() == CFG.digest_interval_ms


def test_a_gap_a_batch_left_keeps_the_engine_ticking_until_it_is_repaired() -> None:
    rb = MemoryReplica("b")
    a = SyncEngine("a", MemoryReplica("a"), CFG)
    b = SyncEngine("b", rb, CFG)
    a.add_peer("b")
    digest(a, 0)
    add(rb, "x")
    [first] = [o for o in b.on_local_commit(1) if isinstance(o, Publish)]  # lost on the way
    add(rb, "y")
    [second] = [o for o in b.on_local_commit(2) if isinstance(o, Publish)]
    a.on_message("", second.data, 10)
    for now in (60, 110, 160):
        a.on_tick(now)
        assert a.quiet_until() is None  # seq 1 of b is missing below the dot it holds
    a.on_message("", first.data, 200)
    a.on_tick(250)
    a.on_tick(300)
    assert a.quiet_until() == CFG.digest_interval_ms


def test_trimming_bounds_a_log_again_only_once_its_context_moved() -> None:
    ra = CountingReplica("a")
    a = SyncEngine("a", ra, CFG)
    add(ra, "x")
    a.on_local_commit(0)
    for i in range(3):
        digest(a, i * CFG.digest_interval_ms)
    assert ra.boundings == 1
    add(ra, "y")
    a.on_local_commit(3000)
    digest(a, 3000)
    digest(a, 4000)
    assert ra.boundings == 2
