"""Untrusted bytes into the engine: nothing raises, the replica is unchanged, it is counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.crdt import CausalContext
from crdtstore.errors import DecodeError
from crdtstore.sync.engine import SyncEngine
from crdtstore.sync.messages import (
    RANGE_EQUAL,
    LogGap,
    RangeAnswer,
    RangeReply,
    RepairReply,
    decode_message,
    encode_message,
)
from crdtstore.sync.outgoing import PublishTopic
from crdtstore.sync.relay_topics import OWN, data_topic, parse_topic
from crdtstore.sync.relaying import TREE
from crdtstore.testing.simulator import Simulator

_SIM = Simulator(2, seed=9, record=True)
for _i in range(5):
    _SIM.add("n0", "s", _i)
    _SIM.put("n0", "m", _i, {"v": _i})
_SIM.remove("n0", "s", 1)
assert _SIM.run_until_quiescent(30_000)
assert _SIM.wire is not None
VALID = sorted({data for _, _, data in _SIM.wire}, key=len)


def fresh() -> SyncEngine:
    sim = Simulator(2, seed=9)
    for i in range(5):
        sim.add("n1", "s", i)
    sim.run_until_quiescent(10_000)
    engine = sim.engine("n0")
    engine.add_peer("n1")
    return engine


ENGINE = fresh()


def snapshot(engine: SyncEngine) -> dict[str, object]:
    replica = engine.replica
    return {ns: (replica.value(ns), replica.context(ns)) for ns in replica.namespaces()}  # type: ignore[attr-defined]


def check_rejected(data: bytes, peer: str) -> None:
    before = snapshot(ENGINE)
    errors = ENGINE.stats["decode_errors"]
    ENGINE.on_message(peer, data, 1_700_000_000_000)
    try:
        decode_message(data)
    except DecodeError:
        assert snapshot(ENGINE) == before
        assert ENGINE.stats["decode_errors"] == errors + 1


@given(st.binary(max_size=300), st.sampled_from(["", "n1", "stranger"]))
def test_random_bytes_never_raise_nor_change_state(data: bytes, peer: str) -> None:
    check_rejected(data, peer)


@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_valid_messages_never_raise(
    base: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    check_rejected(bytes(data[: max(1, len(data) - cut % 4)]), "n1")


def test_protocol_violations_are_counted_not_raised() -> None:
    engine = fresh()
    before = snapshot(engine)
    now = 1_700_000_000_000
    stray = [
        RepairReply(77, "s", (b"not a batch", encode_message(LogGap(1, "s", "n1", 1, 2)))),
        LogGap(99, "s", "n1", 1, 3),
        RangeReply(5, 0, "s", CausalContext(), (RangeAnswer(0, 10, RANGE_EQUAL),)),
    ]
    for msg in stray:
        assert engine.on_message("n1", encode_message(msg), now) == []
    assert engine.on_message("n1", b"\x93\x01\xa7range_r\x00", now) == []
    assert snapshot(engine) == before
    assert engine.stats["decode_errors"] >= 2
    assert engine.stats["rejected_invalid"] >= 1
    assert engine.stats["log_gaps_unexpected"] == 1
    assert engine.stats["range_replies_stale"] == 1


def test_published_batch_of_another_origin_is_refused_as_forged() -> None:
    sim = Simulator(3, seed=4)
    sim.add("n1", "s", "x")
    batch = sim.engine("n1").replica.log_batches("s", "n1", 1, 1)
    assert batch
    receiver = Simulator(3, seed=4).engine("n0")
    # n2's PUB carrying n1's batch: nodes publish only their own, so n2 speaks for n1.
    receiver.on_message("", batch[0], 1_700_000_000_000, publisher="n2")
    assert receiver.stats["rejected_forged_origin"] == 1
    assert "s" not in receiver.replica.namespaces()
    # The same bytes from n1's own PUB are its batch, and apply.
    receiver.on_message("", batch[0], 1_700_000_000_000, publisher="n1")
    assert "x" in receiver.replica.value("s")  # type: ignore[attr-defined]


def test_a_batch_sent_directly_is_refused() -> None:
    sim = Simulator(3, seed=4)
    sim.add("n1", "s", "x")
    batch = sim.engine("n1").replica.log_batches("s", "n1", 1, 1)
    assert batch
    receiver = Simulator(3, seed=4).engine("n0")
    receiver.on_message("n1", batch[0], 1_700_000_000_000)
    assert receiver.stats["rejected_invalid"] == 1
    assert "s" not in receiver.replica.namespaces()


def test_relaying_engine_takes_batches_only_from_its_links_on_their_own_topics() -> None:
    """The overlay mode's trust rule: a published batch of any origin is taken only from
    a link the node made (a member's, see ``SyncEngine.link``), on a topic naming that
    link's publisher; anything else is refused, counted, and changes nothing."""
    sim = Simulator(3, seed=4)
    sim.add("n1", "s", "x")
    batch = sim.engine("n1").replica.log_batches("s", "n1", 1, 1)
    assert batch
    plain = Simulator(3, seed=4).engine("n0")
    receiver = SyncEngine("n0", plain.replica, plain.settings, relay=True)
    now = 1_700_000_000_000
    on_n2 = data_topic("n2", "s", OWN)
    # Not linked: neither its own topic nor the namespace's is heard.
    receiver.on_message("", batch[0], now, publisher="n2", topic=on_n2)
    receiver.on_message("", batch[0], now, publisher="n2", topic=b"s\0")
    assert receiver.stats["relay_rejected_not_neighbour"] == 2
    receiver.link("n2", TREE, None)
    # Linked, but the topic names another publisher than the connection's.
    receiver.on_message("", batch[0], now, publisher="n3", topic=on_n2)
    assert receiver.stats["relay_rejected_publisher"] == 1
    # A tree link's publications on the namespace's own topic (the flood form) are not its.
    receiver.on_message("", batch[0], now, publisher="n2", topic=b"s\0")
    assert receiver.stats["relay_rejected_not_neighbour"] == 3
    # A topic that is not one of ours.
    receiver.on_message("", batch[0], now, publisher="n2", topic=b"dn2\0s\0zz")
    assert receiver.stats["relay_rejected_topic"] == 1
    assert "s" not in receiver.replica.namespaces()
    out = receiver.on_message("", batch[0], now, publisher="n2", topic=on_n2)
    assert "x" in receiver.replica.value("s")  # type: ignore[attr-defined]
    relayed = [o for o in out if isinstance(o, PublishTopic) and o.data == batch[0]]
    assert [parse_topic(o.topic).publisher for o in relayed] == ["n0"]
