"""The liveness threads' turns, driven by a fake clock and transport: ``Liveness.step``
(heartbeats and ticks) and ``write_view_if_due`` (what the member-view thread does when
it wakes). The directory's view is a real LMDB file; only time and the network are fakes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtstore.liveness import Liveness
from crdtstore.membership import MemberStatus
from crdtstore.membership.messages import Heartbeat
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.sync.messages import decode_message, encode_message
from transport import Delivery

TOPIC = b"\x00heartbeat\x00"


class FakeTransport:
    def __init__(self) -> None:
        self.arrived: list[Delivery] = []
        self.published: list[Heartbeat] = []

    def publish(self, topic: bytes, payload: bytes) -> None:
        assert topic == TOPIC
        msg = decode_message(payload)
        assert isinstance(msg, Heartbeat)
        self.published.append(msg)

    def recv_express(self, timeout: float | None) -> Delivery | None:
        return self.arrived.pop(0) if self.arrived else None

    def io_stall_ms(self) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def heartbeat(
    sender: str,
    incarnation: int = 1,
    suspects: dict[str, int] | None = None,
    via: str | None = None,
) -> Delivery:
    payload = encode_message(Heartbeat(sender, incarnation, suspects or {}))
    return Delivery("publish", (via or sender).encode(), TOPIC, payload, None)


@pytest.fixture
def view(tmp_path: Path) -> MemberViewStore:
    store = MemberViewStore.open_for_writing(tmp_path, Counter())
    yield store
    store.close()


def make(
    transport: FakeTransport,
    clock: Clock,
    view: MemberViewStore | None = None,
    on_news: Callable[[], None] | None = None,
) -> Liveness:
    live = Liveness(
        node_id="a",
        transport=transport,
        heartbeat_topic=TOPIC,
        heartbeat_interval_ms=100,
        suspect_after_ms=600,
        dead_after_ms=1500,
        view_interval_ms=1000,
        view=view,
        clock=clock,
        on_news=on_news,
    )
    live.raise_incarnation(1)
    return live


def test_heartbeats_that_arrived_while_the_thread_was_held_up_count_before_its_tick() -> None:
    transport, clock = FakeTransport(), Clock()
    live = make(transport, clock)
    transport.arrived.append(heartbeat("b"))
    live.step()
    assert [c.new for c in live.take_changes()] == [MemberStatus.ALIVE]
    # The thread was held up 1.5 s (more than the suspicion timeout, even stretched by the
    # late tick); b's heartbeat arrived meanwhile and waits in the pipe.
    clock.now = 1500
    transport.arrived.append(heartbeat("b"))
    live.step()
    assert live.status("b") is MemberStatus.ALIVE and live.take_changes() == []
    assert live.local_health == 1  # the late tick stretched its timeouts too


def test_a_silent_member_is_suspected_then_dead_and_the_view_says_so_at_once(
    view: MemberViewStore,
) -> None:
    transport, clock = FakeTransport(), Clock()
    live = make(transport, clock, view)
    transport.arrived.append(heartbeat("b"))
    live.step()  # a beat, a tick
    assert live.view_due()  # b joined
    live.write_view_if_due(0)
    _, rows = view.read()
    assert rows["b"].status is MemberStatus.ALIVE and rows["b"].last_heard_ms == 0
    statuses, due_at = [], []
    for now in range(100, 2600, 100):  # b silent from here on; ticks on time
        clock.now = now
        live.step()
        if live.view_due():
            due_at.append(now)
        live.write_view_if_due(now)
        stamp, rows = view.read()
        if not statuses or statuses[-1][1] is not rows["b"].status:
            statuses.append((now, rows["b"].status, rows["b"].since_ms, stamp))
    [(_, alive, _, _), (suspected_at, suspect, since, stamp), (dead_at, dead, dead_since, _)] = (
        statuses
    )
    assert (alive, suspect, dead) == (MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD)
    # Each change is due for the view as the tick that made it returns, not at the next
    # interval's write: 700 and 2300 are not multiples of the 1000 ms interval.
    assert (suspected_at, since, stamp.written_at_ms) == (700, 700, 700)
    assert dead_at == dead_since == 2300
    assert due_at == [700, 2300]  # and nothing else asked for a write before its interval
    assert [c.new for c in live.take_changes()] == [
        MemberStatus.ALIVE,
        MemberStatus.SUSPECT,
        MemberStatus.DEAD,
    ]
    _, logged = view.changes_after(0)
    assert [c.new for c in logged][-2:] == [MemberStatus.SUSPECT, MemberStatus.DEAD]


def test_last_heard_reaches_the_view_at_the_interval_not_at_every_heartbeat(
    view: MemberViewStore,
) -> None:
    transport, clock = FakeTransport(), Clock()
    live = make(transport, clock, view)
    writes = []
    for now in range(0, 2100, 100):
        clock.now = now
        transport.arrived.append(heartbeat("b"))
        live.step()
        live.write_view_if_due(now)
        stamp, rows = view.read()
        writes.append((stamp.written_at_ms, rows["b"].last_heard_ms))
    assert sorted(set(writes)) == [(0, 0), (1000, 1000), (2000, 2000)]
    assert live.stats["member_view_writes"] == 3  # one at each interval (b joined at 0)


def test_a_heartbeat_in_another_members_name_is_refused() -> None:
    transport, clock = FakeTransport(), Clock()
    live = make(transport, clock)
    transport.arrived.append(heartbeat("b", via="c"))
    live.step()
    assert live.status("b") is None
    assert live.stats["rejected_heartbeat_identity"] == 1


def test_being_suspected_is_refuted_by_the_next_heartbeat_and_stretches_timeouts() -> None:
    transport, clock = FakeTransport(), Clock()
    live = make(transport, clock)
    live.step()
    assert transport.published[-1].incarnation == 1
    transport.arrived.append(heartbeat("b", suspects={"a": 1}))
    clock.now = 100
    live.step()
    assert transport.published[-1].incarnation == 2
    assert live.take_refutation() == 2 and live.take_refutation() is None
    assert live.local_health == 1
    for now in range(200, 701, 100):  # on-time ticks for one suspicion timeout
        clock.now = now
        live.step()
        assert live.local_health == (1 if now < 700 else 0), now
    # A suspicion at an incarnation already refuted changes nothing.
    transport.arrived.append(heartbeat("b", suspects={"a": 1}))
    clock.now = 200
    live.step()
    assert live.incarnation == 2 and live.take_refutation() is None


def test_the_replicator_is_woken_when_a_turn_leaves_news_and_only_then() -> None:
    transport, clock = FakeTransport(), Clock()
    woken: list[int] = []
    live = make(transport, clock, on_news=lambda: woken.append(clock.now))
    live.add("b", 1, 0)
    transport.arrived.append(heartbeat("b"))
    live.turn()
    assert woken == []  # heard, still alive: nothing for the replicator
    while not woken and clock.now < 2_000:  # b silent: a tick suspects it
        clock.now += 100
        live.turn()
    assert woken == [700]  # at the first tick past suspect_after_ms, once
    assert [c.new for c in live.take_changes()] == [MemberStatus.SUSPECT]
    clock.now += 100
    live.turn()
    assert woken == [700]  # taken: no news left
