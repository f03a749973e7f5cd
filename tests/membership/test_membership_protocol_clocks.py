"""Clock readings on the overlay's probes: their wire forms, what the protocol makes of
them, and a simulated cluster in which every node, neighbour or not, finds the clock that
runs ahead (``crdtstore.testing.netsim`` gives that node a skewed clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdtstore.codec import FORMAT_VERSION, pack
from crdtstore.errors import DecodeError
from crdtstore.membership.protocol import (
    ClockReading,
    Command,
    MembershipProtocol,
    ProtocolSettings,
    Send,
)
from crdtstore.membership.wire import MAX_CLOCK_MS, Ack, Contact, Neighbor, Ping, PingReq
from crdtstore.sync.messages import decode_message, encode_message
from crdtstore.testing.netsim import MAX_CLOCK_DRIFT_MS, NetSim

SETTINGS = ProtocolSettings()
HOUR_MS = 3_600_000


def contact(node_id: str) -> Contact:
    return Contact(node_id, f"tcp://{node_id}:1", f"tcp://{node_id}:2", None, 1)


def protocol(node_id: str, now: int, *members: str) -> MembershipProtocol:
    proto = MembershipProtocol(contact(node_id), SETTINGS, random.Random(1), now)
    for member in members:
        proto.learn(contact(member), now)
    return proto


def sends(commands: list[Command], kind: type) -> list[Send]:
    return [c for c in commands if isinstance(c, Send) and isinstance(c.msg, kind)]


def readings(commands: list[Command]) -> list[ClockReading]:
    return [c for c in commands if isinstance(c, ClockReading)]


def fields(msg: object) -> list[Any]:
    return list(msg.to_wire())  # type: ignore[attr-defined]


# -- wire ----------------------------------------------------------------------------------


def test_ping_and_ack_carry_a_clock_reading_and_keep_the_older_forms() -> None:
    for msg in (
        Ping(3, (), 1_700_000_000_000),
        Ping(3),
        Ack(4, 2, (), False, 1_700_000_000_123),
        Ack(4, 2, (), False),
    ):
        assert decode_message(encode_message(msg)) == msg  # type: ignore[arg-type]
    # Without a reading, the forms of the nodes before it (which read by exact count).
    assert len(fields(Ping(3))) == 2 and len(fields(Ping(3, (), 5))) == 3
    assert len(fields(Ack(4, 2))) == 4 and len(fields(Ack(4, 2, (), True, 5))) == 5


@pytest.mark.parametrize(
    "reading", [-1, MAX_CLOCK_MS + 1, "1700000000000", 1.7e12, True, None, [1]]
)
def test_an_absurd_or_mistyped_clock_reading_is_refused_whole(reading: object) -> None:
    for wire in (["sw_ping", 3, [], reading], ["sw_ack", 4, 2, [], True, reading]):
        with pytest.raises(DecodeError, match="clock reading"):
            decode_message(encode_message_raw(wire))


def test_a_probe_of_another_length_is_refused() -> None:
    for wire in (["sw_ping", 3], ["sw_ping", 3, [], 5, 6], ["sw_ack", 4, 2, [], True, 5, 6]):
        with pytest.raises(DecodeError, match="expected"):
            decode_message(encode_message_raw(wire))


def encode_message_raw(wire: list[Any]) -> bytes:
    """A message as a peer might send it, fields unchecked."""
    return pack([FORMAT_VERSION, *wire])


# -- the protocol ----------------------------------------------------------------------------


def test_a_ping_is_answered_with_the_acker_s_clock_in_the_form_it_came_in() -> None:
    b = protocol("b", 5_000, "a")
    out = b.on_message("a", Ping(1, (), 1_000), 5_010)
    assert readings(out) == [ClockReading("a", 1_000, None, 5_010)]
    [ack] = sends(out, Ack)
    assert ack.msg.clock_ms == 5_010
    out = b.on_message("a", Ping(2), 5_020)  # an older node's ping: an ack it can read
    assert not readings(out)
    [ack] = sends(out, Ack)
    assert ack.msg.clock_ms is None and len(fields(ack.msg)) == 4


def test_a_member_not_known_to_read_clocks_gets_both_forms_until_it_sends_one() -> None:
    a = protocol("a", 0, "b")
    a.on_message("b", Neighbor(contact("b"), high=True), 0)
    pings = sends(a.tick(SETTINGS.probe_interval_ms), Ping)
    assert [p.msg.clock_ms for p in pings] == [SETTINGS.probe_interval_ms, None]
    assert pings[0].msg.seq == pings[1].msg.seq  # one probe, answered by either copy
    a.on_message("b", Ack(pings[0].msg.seq, 1, (), True, 9_000), SETTINGS.probe_interval_ms + 5)
    pings = sends(a.tick(2 * SETTINGS.probe_interval_ms + 5), Ping)  # silent an interval
    assert [p.msg.clock_ms is not None for p in pings] == [True]


def test_an_ack_brings_a_round_trip_of_the_probed_member_s_clock() -> None:
    a = protocol("a", 0, "b")
    a.on_message("b", Neighbor(contact("b"), high=True), 0)
    [ping, _] = sends(a.tick(500), Ping)
    out = a.on_message("b", Ack(ping.msg.seq, 1, (), True, HOUR_MS), 530)
    assert readings(out) == [ClockReading("b", HOUR_MS, 500, 530)]


def test_an_indirect_probe_brings_the_target_s_reading_not_the_relayer_s() -> None:
    # c relays: a's ping-req to b, b's ack back to a, with b's reading unchanged.
    c = protocol("c", 0, "a", "b")
    c.on_message("a", Ping(1, (), 0), 0)  # a reads clocks
    [ping, copy] = sends(c.on_message("a", PingReq(7, contact("b")), 100), Ping)
    assert ping.to == copy.to == contact("b") and copy.msg.clock_ms is None
    out = c.on_message("b", Ack(ping.msg.seq, 1, (), False, HOUR_MS + 120), 140)
    [relayed] = sends(out, Ack)
    assert relayed.to == "a" and relayed.msg.seq == 7 and relayed.msg.clock_ms == HOUR_MS + 120
    assert not [r for r in readings(out) if r.node_id == "b" and r.sent_ms is not None]

    # a timed the whole round trip through c: the reading is b's, between send and receipt.
    a = protocol("a", 0, "b", "c", "x")
    for n in ("b", "c"):
        a.on_message(n, Neighbor(contact(n), high=True), 0)
    seqs = {p.to.node_id: p.msg.seq for p in sends(a.tick(500), Ping)}  # type: ignore[union-attr]
    seq = seqs["b"]
    a.on_message("c", Ack(seqs["c"], 1, (), True, 700), 510)  # c answers its own probe
    out = a.tick(500 + SETTINGS.probe_timeout_ms)
    assert [s.to for s in sends(out, PingReq)] == [contact("c")]
    # A member not asked to relay cannot speak for b's clock.
    assert not readings(a.on_message("x", Ack(seq, 1, (), True, 1), 750))
    out = a.on_message("c", Ack(seq, 1, (), True, HOUR_MS + 760), 760)
    assert readings(out) == [ClockReading("b", HOUR_MS + 760, 500, 760)]


# -- simulated cluster -----------------------------------------------------------------------


def test_every_node_finds_a_clock_that_runs_ahead_neighbour_or_not() -> None:
    sim = NetSim(seed=21)
    ids = [f"n{i:02d}" for i in range(12)]  # twice the active view: many non-neighbours
    for i, node_id in enumerate(ids):
        sim.run_until(i * 50.0)
        skew = HOUR_MS if node_id == "n05" else 0
        sim.add_node(node_id, seeds=[ids[0]] if i else [], clock_skew_ms=skew)
    sim.run_until(sim.now + 60_000)
    skewed = sim.nodes["n05"]
    far = [n for n in sim.live() if n is not skewed and "n05" not in n.protocol.overlay.active]
    assert far, "some nodes are not n05's neighbours"
    for node in sim.live():
        judgement = node.clocks.judge(node.node_id, [n for n in ids if n != node.node_id])
        assert judgement.off == {"n05"}, (node.node_id, judgement)
        if node is not skewed:
            offset = node.clocks.offset("n05")
            # The middle of a round trip: off by at most half of one (ms in simulation).
            assert offset is not None and abs(offset - HOUR_MS) <= 10, (node.node_id, offset)
            assert node.clocks.beyond(offset)
    assert skewed.clocks.offset("n00") is not None
    assert abs(skewed.clocks.offset("n00") + HOUR_MS) <= 10  # type: ignore[operator]
    # Its timers run on its own clock: a skewed clock alone makes nobody suspect anybody.
    assert not [o for o in sim.observations if o.change.new.value == "suspect"]
    assert MAX_CLOCK_DRIFT_MS < HOUR_MS


def test_a_stranger_s_clock_reading_is_not_kept() -> None:
    b = protocol("b", 5_000, "a")
    out = b.on_message("zz", Ping(1, (), 1_000), 5_010)
    assert not readings(out)  # answered, but nothing kept for a node id no member has
    [ack] = sends(out, Ack)
    assert ack.msg.clock_ms == 5_010
