"""The sync engine's parts on their own: each owns a piece of policy, tested without the
engine around it (the engine's behaviour is pinned by the other tests of this package)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from crdtstore.crdt import CausalContext
from crdtstore.membership.messages import Hello
from crdtstore.sync.delivery import CausalBuffer, applied, causally_ready
from crdtstore.sync.engine import Send, SyncEngine
from crdtstore.sync.liveness import LivenessCheck
from crdtstore.sync.messages import DeltaBatch, RangeQuery, decode_message, encode_message
from crdtstore.sync.peers import PeerDigests
from crdtstore.sync.reconcile import (
    ASKING_PHASES,
    ENDINGS,
    TRANSITIONS,
    Event,
    Phase,
    Session,
)
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.repair import RepairScheduler
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica


def _batches(ops: list[tuple[str, int]]) -> list[tuple[DeltaBatch, bytes]]:
    """Origin w doing ``ops`` ("add" / "remove", element) in turn: a remove's context
    names the add it removes."""
    w = MemoryReplica("w")
    out = []
    for op, element in ops:
        batch = w.mutate("s", "or_set", lambda s, op=op, e=element: getattr(s, op)("w", e))
        out.append((batch, encode_message(batch)))
    return out


# -- range sessions: the state machine -----------------------------------------------------


def test_every_phase_moves_only_along_the_transition_table() -> None:
    for phase in Phase:
        for event in Event:
            session = Session(1, "p", "ns", started=0, phase=phase)
            allowed = TRANSITIONS.get(phase, {})
            if event in allowed:
                assert session.fire(event) is allowed[event]
            else:
                with pytest.raises(RuntimeError, match=event.value):
                    session.fire(event)
                assert session.phase is phase


def test_asking_phases_end_only_through_applying_or_abandoning() -> None:
    final = {phase for phase in Phase if phase not in TRANSITIONS}
    assert final == set(ENDINGS), "each final phase is counted"
    assert set(TRANSITIONS) == ASKING_PHASES | {Phase.APPLYING}
    for phase in ASKING_PHASES:
        ends = {TRANSITIONS[phase][e] for e in (Event.EXHAUSTED, Event.PEER_GONE)}
        assert ends == {Phase.ABANDONED}
        assert TRANSITIONS[phase][Event.RESOLVED] is Phase.APPLYING
    # Only the apply decides between a merge and nothing.
    assert set(TRANSITIONS[Phase.APPLYING].values()) == {Phase.DONE, Phase.FAILED}


def test_only_the_opening_query_asks_for_the_senders_context() -> None:
    cfg = SyncSettings(range_leaf_entries=1, range_fanout=2, range_ship_to_empty=False)
    sender, asker = MemoryReplica("s"), MemoryReplica("a")
    for i in range(8):
        sender.mutate("set", "or_set", lambda st, i=i: st.add("s", i))  # type: ignore[attr-defined]
    s_engine, a_engine = SyncEngine("s", sender, cfg), SyncEngine("a", asker, cfg)
    s_engine.add_peer("a")
    a_engine.add_peer("s")
    [query] = a_engine.on_message("", s_engine.greet("a")[0].data, 0)
    phases, wanted = [], []
    while isinstance(query, Send):
        msg = decode_message(query.data)
        assert isinstance(msg, RangeQuery)
        session = a_engine.ranges.session("set")
        assert session is not None
        phases.append(session.phase)
        wanted.append(msg.want_context)
        [reply] = s_engine.on_message("a", query.data, 0)
        answer = a_engine.on_message("s", reply.data, 0)
        query = answer[0] if answer else None
    assert wanted == [True] + [False] * (len(wanted) - 1) and len(wanted) > 2
    assert phases == [Phase.OPENING] + [Phase.NARROWING] * (len(phases) - 1)
    assert a_engine.sessions() == {} and asker.value("set") == sender.value("set")


# -- causal delivery -----------------------------------------------------------------------


def test_the_buffer_yields_held_batches_as_they_become_ready() -> None:
    (add0, d0), (add1, _), (rm1, drm1) = _batches([("add", 0), ("add", 1), ("remove", 1)])
    stats: Counter[str] = Counter()
    buffer = CausalBuffer(SyncSettings(), stats, Rejections("r", stats, 1000))
    ctx = CausalContext().with_run("w", 1, 1)  # add0 applied, add1 not
    assert not causally_ready(rm1, ctx) and causally_ready(add1, ctx)
    buffer.hold(rm1, drm1, 0)
    buffer.hold(rm1, drm1, 5)  # a duplicate keeps the first arrival
    assert buffer.held("s") == 1 and stats["batches_waiting"] == 1
    assert list(buffer.ready("s", lambda ns: ctx)) == []
    contexts = {"s": ctx.with_run("w", 2, 2)}  # add1 arrived
    assert list(buffer.ready("s", contexts.__getitem__)) == [(rm1, drm1)]
    assert buffer.held("s") == 0
    # Already covered by the context: dropped, not yielded.
    buffer.hold(add0, d0, 0)
    assert list(buffer.ready("s", contexts.__getitem__)) == [] and buffer.held("s") == 0
    assert applied(add0, contexts["s"])


def test_the_buffer_drops_what_waited_too_long_or_does_not_fit() -> None:
    frames = _batches([("add", 0), ("remove", 0), ("add", 1), ("remove", 1)])
    (_, _), (rm0, drm0), (_, _), (rm1, drm1) = frames
    stats: Counter[str] = Counter()
    cfg = SyncSettings(max_waiting_batches=1, max_wait_ms=100)
    buffer = CausalBuffer(cfg, stats, Rejections("r", stats, 1000))
    buffer.hold(rm0, drm0, 0)
    buffer.hold(rm1, drm1, 0)  # over the count bound
    assert buffer.held("s") == 1 and stats["waiting_overflow"] == 1
    buffer.expire(99)
    assert buffer.held("s") == 1
    buffer.expire(100)
    assert buffer.held("s") == 0 and stats["waiting_expired"] == 1


# -- repair scheduling ---------------------------------------------------------------------


def test_repairs_go_to_the_origin_first_then_to_the_others_in_turn() -> None:
    cfg = SyncSettings(repair_grace_ms=100, repair_timeout_ms=50)
    replica = MemoryReplica("me")
    replica.ensure_namespace("s", "or_set")
    stats: Counter[str] = Counter()
    repairs = RepairScheduler("me", replica, cfg, stats, iter(range(1, 100)))
    peers = PeerDigests("me")
    for peer in ("b", "o", "a"):
        peers.add(peer)
        peers.record(peer, {"s": {"o": 5}})
    repairs.observe("s", "o", 5, 0)
    assert repairs.schedule(99, peers, ()) == []  # within the grace: maybe in flight
    asked = []
    now = 100
    for _ in range(4):
        [request] = repairs.schedule(now, peers, ())
        assert isinstance(request, Send)
        asked.append(request.peer)
        now += cfg.repair_timeout_ms
        repairs.expire(now)
    assert asked == ["o", "a", "b", "o"]
    assert stats["repair_timeouts"] == 4
    assert repairs.schedule(now, peers, {"s"}) == []  # the namespace is reconciling


# -- liveness ------------------------------------------------------------------------------


def test_a_namespace_behind_without_progress_is_reconciled_with_peers_in_turn() -> None:
    cfg = SyncSettings(stuck_after_ms=1000)
    replica = MemoryReplica("me")
    replica.ensure_namespace("s", "or_set")
    peers = PeerDigests("me")
    peers.add("near")
    peers.add("far")
    peers.record("near", {"s": {"o": 3}})
    peers.record("far", {"s": {"o": 9}})
    check = LivenessCheck("me", replica, cfg, Counter())

    def stuck(now: int, reconciling: Any = ()) -> list[tuple[str, str]]:
        return list(check.stuck(now, peers, reconciling, lambda ns, now: True, lambda ns: 0))

    assert stuck(0) == [] and check.behind()["s"] == {"since": 0, "missing": 9, "progress_at": 0}
    assert stuck(999) == []
    assert stuck(1000) == [("s", "far")]  # furthest ahead first
    assert stuck(1999) == []  # another full bound before the next
    assert stuck(2000) == [("s", "near")]
    assert stuck(5000, reconciling={"s"}) == []  # a running session is progress
    assert stuck(5999) == []
    check.drift_refused("o", 6000)  # deferred on purpose: not lacking, not behind
    assert stuck(6000) == [] and check.behind() == {}


# -- dispatch ------------------------------------------------------------------------------


def test_a_frame_of_another_protocol_on_the_sync_channel_is_counted_not_raised() -> None:
    engine = SyncEngine("r", MemoryReplica("r"))
    engine.add_peer("p")
    hello = encode_message(Hello("p", "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7201", None, False))
    assert engine.on_message("p", hello, 0) == []
    assert engine.on_message("", hello, 0) == []
    assert engine.stats["rejected_invalid"] == 2


def test_the_engine_holds_no_hook_into_its_callers_thread() -> None:
    # A long step's heartbeat hook is passed with the call that triggers the step
    # (on_message / on_messages ``progress``), never kept on the engine.
    engine = SyncEngine("r", MemoryReplica("r"))
    assert not any("keepalive" in name for name in vars(engine))


def test_repair_does_not_ask_again_for_runs_held_for_their_dependencies() -> None:
    from crdtstore.sync.repair import _without

    assert _without([(1, 10)], []) == [(1, 10)]
    assert _without([(1, 10)], [(3, 4), (7, 7)]) == [(1, 2), (5, 6), (8, 10)]
    assert _without([(1, 10), (20, 30)], [(0, 2), (9, 21), (30, 40)]) == [(3, 8), (22, 29)]
    assert _without([(5, 6)], [(1, 10)]) == []
