"""Hashed digests: idle digests grow with namespaces, not origins; a hash stands for a
vector the receiver knows, the full vector is asked for otherwise; everything a full
digest drove (repair, catch-up, lag, trimming) still sees what it needs; a peer that reads
only full vectors is published full ones."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from crdtstore.codec import FORMAT_VERSION, pack
from crdtstore.crdt import CausalContext, Dot, ORSet
from crdtstore.errors import DecodeError
from crdtstore.sync.digests import vv_hash, vv_total
from crdtstore.sync.engine import DIGEST_TOPIC, Outgoing, Publish, Send, SyncEngine
from crdtstore.sync.messages import (
    Digest,
    DigestSummary,
    VectorReply,
    VectorRequest,
    decode_message,
    encode_message,
)
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.memory import MemoryReplica
from crdtstore.testing.simulator import Simulator

FAST = SyncSettings(digest_interval_ms=100, repair_grace_ms=150, repair_timeout_ms=400)
MEMBERS = "__members"


def test_the_hash_of_a_vector_is_its_content_only() -> None:
    assert (
        vv_hash({"a": 1, "b": 2}) == vv_hash({"b": 2, "a": 1}) == vv_hash({"a": 1, "b": 2, "c": 0})
    )
    assert vv_hash({"a": 1, "b": 2}) != vv_hash({"a": 2, "b": 1})
    assert len(vv_hash({})) == 8 and vv_total({"a": 3, "b": 4}) == 7


def idle_digests(origins: int, *, full: bool) -> tuple[float, Counter[str]]:
    """Bytes per digest frame, per neighbour per round, of three idle nodes holding the
    same ``__members`` of ``origins`` origins (the same total, 1,000 seqs, whatever
    their number: a total's width is that of a number); and the kinds that moved."""
    sim = Simulator(3, seed=7, settings=FAST)
    seq = 1000 // origins
    ids = [f"m{i:04d}" for i in range(origins)]
    state = ORSet({o: {Dot(o, seq): None} for o in ids}, CausalContext(dict.fromkeys(ids, seq)))
    for node in sim.nodes:
        sim.replica(node).load_state(MEMBERS, state)
        if full:  # every peer declared a reader of full vectors only (protocol version 1)
            for other in sim.nodes:
                sim.engine(node).set_digest_form(other, hashed=False)
    sim.run(1_000)
    sim.reset_counters()
    sim.run(10_000)
    kind = "digest" if full else "digest_h"
    return sim.bytes[kind] / sim.messages[kind], sim.messages


def test_idle_digest_bytes_do_not_grow_with_origins() -> None:
    few, moved = idle_digests(10, full=False)
    many, moved_many = idle_digests(1_000, full=False)
    assert few == many, (few, many)
    assert set(moved) == set(moved_many) == {"digest_h"}, moved  # idle: nothing else moves
    # The full form they replace grows with origins (what a version-1 peer is still sent).
    full_few, _ = idle_digests(10, full=True)
    full_many, _ = idle_digests(1_000, full=True)
    assert full_many > 50 * full_few and full_few > many
    print(
        f"idle digest bytes per neighbour per round: hashed {few:.0f} (10 origins) "
        f"{many:.0f} (1,000); full {full_few:.0f} (10) {full_many:,.0f} (1,000)"
    )


# -- two engines, by hand ------------------------------------------------------------------


class Pair:
    """Two engines, ``a`` and ``b``, and the frames between them, delivered by hand."""

    def __init__(self, cfg: SyncSettings = FAST) -> None:
        self.replicas = {n: MemoryReplica(n) for n in "ab"}
        self.engines = {n: SyncEngine(n, self.replicas[n], cfg) for n in "ab"}
        self.engines["a"].add_peer("b")
        self.engines["b"].add_peer("a")
        self.kinds: Counter[str] = Counter()
        self.now = 0

    def add(self, node: str, element: Any) -> None:
        self.replicas[node].mutate("s", "or_set", lambda st: st.add(node, element))  # type: ignore[attr-defined]

    def deliver(self, src: str, out: list[Outgoing]) -> None:
        """``out`` of ``src``, and every answer it leads to, until none is left."""
        queue = [(src, o) for o in out]
        while queue:
            sender, o = queue.pop(0)
            dst = "b" if sender == "a" else "a"
            if isinstance(o, Send):
                assert o.peer == dst
            self.kinds[type(decode_message(o.data)).__name__] += 1
            peer = "" if isinstance(o, Publish) else sender
            queue.extend((dst, x) for x in self.engines[dst].on_message(peer, o.data, self.now))

    def digest_of(self, node: str) -> Publish:
        """``node``'s next published digest (time moves on one digest interval)."""
        self.now += FAST.digest_interval_ms
        out = self.engines[node].on_tick(self.now)
        [digest] = [o for o in out if isinstance(o, Publish) and o.topic == DIGEST_TOPIC]
        self.deliver(node, [o for o in out if o is not digest])
        return digest

    def round(self) -> None:
        """Both publish a digest, each heard by the other."""
        for node in "ab":
            self.deliver(node, [self.digest_of(node)])


def test_a_differing_hash_asks_for_the_vector_once_and_repair_follows() -> None:
    pair = Pair()
    pair.add("a", "first")
    pair.round()
    pair.round()  # b bootstraps "s" from a, both hold the same: a will repair, not bootstrap
    assert pair.replicas["a"].value("s") == pair.replicas["b"].value("s")
    pair.kinds.clear()
    for i in range(3):
        pair.add("b", i)  # never published: only digests show a's gap
    pair.deliver("b", [pair.digest_of("b")])
    assert isinstance(decode_message(pair.digest_of("b").data), DigestSummary)
    assert pair.kinds["VectorRequest"] == 1 and pair.kinds["VectorReply"] == 1
    a = pair.engines["a"]
    assert a.peer_lag() == {"b": 3}  # from the vector the reply brought
    for _ in range(4):  # past the repair grace: the gap is pulled from b's log
        pair.round()
    assert pair.replicas["a"].value("s") == pair.replicas["b"].value("s")
    assert pair.kinds["RepairRequest"] >= 1
    # b did not change since its vector came, then a caught up: its hash is a's own or
    # the one a last knew, and no vector is asked for again.
    assert pair.kinds["VectorRequest"] == 1, pair.kinds
    assert a.peer_lag() == {"b": 0}
    assert pair.kinds["Digest"] == 0  # no full digest was ever needed


def test_catch_up_and_trimming_wait_for_a_peer_and_follow_its_hash() -> None:
    pair = Pair()
    pair.add("a", "first")
    pair.round()
    pair.round()  # b bootstraps "s" from a, both hold the same
    assert pair.replicas["a"].value("s") == pair.replicas["b"].value("s")
    a, b = pair.engines["a"], pair.engines["b"]
    for i in range(3):
        pair.add("a", i)
    pair.deliver("b", [pair.digest_of("b")])  # b's hash: a vector a knew, now behind a's
    assert not a.peers_caught_up("s")
    logged = pair.replicas["a"].log_length("s")
    assert logged >= 3
    pair.digest_of("a")  # a trims by what b showed: nothing b lacks goes
    assert pair.replicas["a"].log_length("s") >= 3
    for _ in range(4):
        pair.round()  # b repairs, and its hash becomes a's own
    assert pair.replicas["b"].value("s") == pair.replicas["a"].value("s")
    assert a.peers_caught_up("s") and b.peers_caught_up("s")
    pair.digest_of("a")
    assert pair.replicas["a"].log_length("s") == 0  # every peer has every batch: trimmed


def test_a_vector_nobody_asked_for_changes_nothing() -> None:
    pair = Pair()
    b = pair.engines["b"]
    forged = VectorReply("s", "or_set", {"a": 50})
    assert b.on_message("a", encode_message(forged), 0) == []  # before any digest of a
    assert b.stats["vectors_unasked"] == 1 and b.peer_lag() == {"a": 0}
    stranger = encode_message(VectorRequest(MEMBERS))
    assert b.on_message("zed", stranger, 0) == []  # not a peer: no answer
    assert b.stats["vector_requests_from_unknown"] == 1
    assert b.on_message("", stranger, 0) == []  # published: only a peer may ask
    assert b.stats["rejected_invalid"] == 1


@pytest.mark.parametrize("declared", [False, True])
def test_full_vectors_are_published_while_a_version_1_peer_is_connected(declared: bool) -> None:
    pair = Pair()
    pair.add("a", 1)
    a = pair.engines["a"]
    if declared:
        a.set_digest_form("b", hashed=False)
    first = decode_message(pair.digest_of("a").data)
    assert isinstance(first, Digest if declared else DigestSummary)
    a.set_digest_form("b", hashed=True)  # its hello listed version 2
    assert isinstance(decode_message(pair.digest_of("a").data), DigestSummary)
    a.set_digest_form("old", hashed=False)  # a connected peer of v0.1.0
    assert isinstance(decode_message(pair.digest_of("a").data), Digest)
    a.forget_digest_form("old")  # gone
    assert isinstance(decode_message(pair.digest_of("a").data), DigestSummary)


def test_a_cluster_of_both_forms_converges_and_never_sends_a_version_1_node_a_hash() -> None:
    sim = Simulator(4, seed=11, settings=FAST, record=True)
    old = "n3"  # reads only full vectors; the others are declared to it, and it to them
    for node in sim.nodes:
        for other in sim.nodes:
            if old in (node, other):
                sim.engine(node).set_digest_form(other, hashed=False)
    for i in range(30):
        sim.add(f"n{i % 4}", "s", i)
        sim.run(20)
    assert sim.run_until_quiescent(30_000)
    assert sim.wire is not None
    to_old = Counter(type(decode_message(d)).__name__ for _, dst, d in sim.wire if dst == old)
    assert to_old["Digest"] > 0 and to_old["DigestSummary"] == to_old["VectorRequest"] == 0


def wire(kind: str, *fields: Any) -> bytes:
    return pack([FORMAT_VERSION, kind, *fields])


HASH = bytes(range(8))


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("digest_h", ["a", [["s", "or_set", 3, HASH[:7]]]]),  # a short hash
        ("digest_h", ["a", [["s", "or_set", 3, HASH + b"x"]]]),
        ("digest_h", ["a", [["s", "or_set", -1, HASH]]]),  # a negative total
        ("digest_h", ["a", [["s", "or_set", 3, HASH], ["s", "or_set", 3, HASH]]]),
        ("digest_h", ["a", [["s", "or_set", 3]]]),
        ("digest_h", ["a", [["", "or_set", 3, HASH]]]),
        ("digest_h", ["", []]),
        ("vv_req", []),
        ("vv_req", ["s", "t"]),
        ("vv", ["s", "or_set", [["a", 1]]]),  # not a map
        ("vv", ["s", "or_set", {"a": -1}]),
        ("vv", ["s", "or_set", {"": 1}]),
        ("vv", ["s", "or_set"]),
    ],
)
def test_each_broken_rule_of_the_new_kinds_is_refused(kind: str, fields: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode_message(wire(kind, *fields))


def test_the_new_kinds_round_trip() -> None:
    for msg in (
        DigestSummary("a", (("s", "or_set", 3, HASH), (MEMBERS, "lww_map", 0, HASH))),
        VectorRequest("s"),
        VectorReply("s", "or_set", {"a": 1, "b": 7}),
    ):
        assert decode_message(encode_message(msg)) == msg
