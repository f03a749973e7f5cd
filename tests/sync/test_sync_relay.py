"""Relayed deltas: the relay machine by example, its topic layout and seen-set by
property, and the simulation of it on a membership overlay (delivery under loss, the
tree it settles into, scoping, determinism)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.errors import DecodeError, InvalidValue
from crdtstore.sync.messages import Graft, Have, Prune, decode_message, encode_message
from crdtstore.sync.relay import (
    BatchKey,
    Command,
    Deliver,
    Fetch,
    PublishBatch,
    PublishHave,
    Relay,
    RelaySettings,
    SendTo,
    Subscribe,
    Unsubscribe,
)
from crdtstore.sync.relay_topics import (
    OWN,
    Topic,
    data_subscriptions,
    data_topic,
    edge_weight,
    have_topic,
    hop_mark,
    parse_topic,
    topic_links,
)
from crdtstore.sync.seen import SeenRuns
from crdtstore.testing.relaysim import RelaySim, converged_overlay, reachable, symmetric

NS = "config"
ME = "me"
SETTINGS = RelaySettings(have_interval_ms=20, graft_timeout_ms=100, graft_window_ms=1_000)


def relay(*neighbours: str) -> Relay:
    r = Relay(ME, frozenset({NS}), SETTINGS)
    for n in neighbours:
        r.neighbour_up(n, frozenset({NS}))
    return r


def published(publisher: str, key: BatchKey, hop: str = OWN, path: int = 0) -> Topic:
    return parse_topic(data_topic(publisher, key.namespace, hop, path))


def of(kind: type, commands: list[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, kind)]


def key(origin: str = "o", seq: int = 1) -> BatchKey:
    return BatchKey(NS, origin, seq, seq)


# -- topics ------------------------------------------------------------------------------


@given(st.text(alphabet="0123456789abcdef", min_size=4, max_size=4), st.text(min_size=1))
def test_data_subscriptions_match_every_hop_but_the_subscribers_own(hop: str, me: str) -> None:
    prefixes = data_subscriptions("pub", NS, me)
    topic = data_topic("pub", NS, hop, 12345)
    matched = any(topic.startswith(p) for p in prefixes)
    assert matched == (hop != hop_mark(me))
    assert any(data_topic("pub", NS, OWN).startswith(p) for p in prefixes)
    assert not any(data_topic("other", NS, hop).startswith(p) for p in prefixes)
    assert not any(have_topic("pub", NS).startswith(p) for p in prefixes)


@given(st.text(min_size=1), st.text(min_size=1), st.booleans(), st.integers(0, 2**32 - 1))
def test_topics_parse_back(publisher: str, ns: str, repaired: bool, path: int) -> None:
    # A namespace may hold NUL and % (they are escaped); a node id may not hold NUL.
    if "\0" in publisher:
        with pytest.raises(InvalidValue):
            data_topic(publisher, ns, OWN)
        return
    hop = hop_mark(publisher + ns)
    assert parse_topic(data_topic(publisher, ns, hop, path, repaired)) == Topic(
        b"d", publisher, ns, hop, path, repaired
    )
    assert parse_topic(have_topic(publisher, ns)) == Topic(b"h", publisher, ns, "")


@pytest.mark.parametrize(
    "raw",
    [b"", b"x", b"dp\x00ns\x00", b"dp\x00ns\x00zzzz00000000", b"dp\x00ns\x00-000000",
     b"dp\x00ns\x00-0000000g", b"hp\x00ns\x00x", b"dp\x00ns", b"d\x00ns\x00-00000000",
     b"dp\x00\xff\x00-00000000", b"dp\x00ns\x00-00000000\x00", b"xp\x00ns\x00",
     b"dp\x00n%s\x00-00000000", b"dp\x00n%2\x00-00000000", b"hp\x00%\x00"],
)  # fmt: skip
def test_a_malformed_topic_is_refused(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_topic(raw)


@given(st.sets(st.integers(0, 300), min_size=2, max_size=120), st.integers(0, 3))
def test_topic_links_connect_every_holder_both_ways(ids: set[int], chords: int) -> None:
    holders = [f"n{i}" for i in sorted(ids)]
    links = {h: sorted(topic_links("scoped", h, holders, chords)) for h in holders}
    assert reachable(links, holders[0]) == set(holders)
    assert all(me in links[other] for me, near in links.items() for other in near)
    assert all(len(near) <= 2 + 2 * chords + 6 for near in links.values())
    assert topic_links("scoped", "outsider", holders) == set()


# -- seen set ------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=40))
def test_seen_runs_agree_with_a_set_while_under_the_bound(adds: list[tuple[int, int]]) -> None:
    seen, model = SeenRuns(max_runs=1_000), set()
    for first, width in adds:
        seen.add(first, first + width)
        model.update(range(first, first + width + 1))
    for first, last in itertools.combinations_with_replacement(range(1, 70, 3), 2):
        assert seen.covers(first, last) == model.issuperset(range(first, last + 1))
        unseen = [s for a, b in seen.unseen(first, last) for s in range(a, b + 1)]
        assert unseen == [s for s in range(first, last + 1) if s not in model]


def test_seen_runs_give_up_the_oldest_gap_past_the_bound() -> None:
    seen = SeenRuns(max_runs=2)
    for seq in (3, 5, 7):
        seen.add(seq, seq)
    assert seen.hwm == 3 and seen.runs == [(5, 5), (7, 7)]
    assert seen.covers(1, 3) and not seen.covers(4, 4)


# -- wire ----------------------------------------------------------------------------------


def test_relay_messages_round_trip_and_bad_ones_are_refused() -> None:
    for msg in (Have(NS, (("a", 1, 3), ("b", 7, 7))), Prune(NS), Graft(NS)):
        assert decode_message(encode_message(msg)) == msg
    for bad in (Have(NS, ()), Have(NS, (("a", 3, 1),)), Have(NS, (("", 1, 1),)), Prune("")):
        with pytest.raises(DecodeError):
            decode_message(encode_message(bad))


# -- the relay by example ------------------------------------------------------------------


def test_a_new_neighbour_is_eager_and_hears_haves() -> None:
    r = Relay(ME, frozenset({NS}), SETTINGS)
    (sub,) = r.neighbour_up("x", frozenset({NS, "not-held"}))
    assert isinstance(sub, Subscribe) and sub.peer == "x"
    assert set(sub.topics) == {have_topic("x", NS), *data_subscriptions("x", NS, ME)}
    assert r.eager(NS) == ["x"] and r.neighbour_up("x", frozenset({NS})) == []
    (unsub,) = r.neighbour_down("x")
    assert isinstance(unsub, Unsubscribe) and set(unsub.topics) == set(sub.topics)


def test_a_batch_is_delivered_and_relayed_once() -> None:
    r = relay("x", "y")
    k = key()
    out = r.on_batch(published("x", k), k, 0)
    assert of(Deliver, out) == [Deliver("x", k)]
    (pub,) = of(PublishBatch, out)
    assert parse_topic(pub.topic).hop == hop_mark("x")
    again = r.on_batch(published("y", k), k, 1) + r.on_batch(published("x", k), k, 2)
    assert not of(Deliver, again) and not of(PublishBatch, again)
    assert r.stats["relay_duplicates"] == 2


def light_and_heavy() -> tuple[str, str]:
    """Two neighbour names whose links to ME weigh differently, lighter first."""
    a, b = "n1", "n2"
    return (a, b) if edge_weight(a, ME) < edge_weight(b, ME) else (b, a)


def test_a_duplicate_over_the_heaviest_link_of_the_cycle_prunes_it() -> None:
    light, heavy = light_and_heavy()
    r = relay(light, heavy)
    k = key()
    r.on_batch(published(light, k), k, 0)
    out = r.on_batch(published(heavy, k), k, 1)
    assert of(SendTo, out) == [SendTo(heavy, Prune(NS))]
    (unsub,) = of(Unsubscribe, out)
    assert set(unsub.topics) == set(data_subscriptions(heavy, NS, ME))
    assert r.eager(NS) == [light] and r.lazy(NS) == [heavy]


def test_the_first_copys_link_is_pruned_when_it_is_the_heaviest() -> None:
    light, heavy = light_and_heavy()
    r = relay(light, heavy)
    k = key()
    r.on_batch(published(heavy, k), k, 0)
    out = r.on_batch(published(light, k), k, 1)
    assert of(SendTo, out) == [SendTo(heavy, Prune(NS))]


def test_a_duplicate_prunes_nothing_when_the_heaviest_link_is_further_away() -> None:
    light, heavy = light_and_heavy()
    r = relay(light, heavy)
    k = key()
    far = max(edge_weight(light, ME), edge_weight(heavy, ME)) + 1
    r.on_batch(published(light, k, path=far), k, 0)
    assert r.on_batch(published(heavy, k), k, 1) == []
    assert sorted(r.eager(NS)) == sorted([light, heavy])


def test_a_prune_makes_the_link_lazy_and_a_graft_eager_again() -> None:
    r = relay("x", "y")
    (unsub,) = r.on_prune("x", Prune(NS))
    assert isinstance(unsub, Unsubscribe) and r.lazy(NS) == ["x"]
    assert r.on_prune("x", Prune(NS)) == [] and r.on_prune("stranger", Prune(NS)) == []
    k = key()
    assert of(Deliver, r.on_batch(published("x", k), k, 0))  # in flight when pruned: kept
    (sub,) = r.on_graft("x", Graft(NS))
    assert isinstance(sub, Subscribe) and set(sub.topics) == set(data_subscriptions("x", NS, ME))


def test_an_echo_of_our_own_relay_is_dropped_without_pruning() -> None:
    r = relay("x", "y")
    k = key()
    assert r.on_batch(published("x", k, hop=hop_mark(ME)), k, 0) == []
    assert r.stats["relay_echoes"] == 1 and not r.seen(k)


def test_frames_from_strangers_or_on_wrong_topics_are_refused() -> None:
    r = relay("x")
    k = key()
    assert r.on_batch(published("stranger", k), k, 0) == []
    assert r.on_batch(parse_topic(data_topic("x", "other", OWN)), k, 0) == []
    other = BatchKey("other", "o", 1, 1)
    assert r.on_batch(parse_topic(data_topic("x", "other", OWN)), other, 0) == []
    assert r.on_have(parse_topic(have_topic("stranger", NS)), Have(NS, (("o", 1, 1),)), 0) == []
    assert r.on_fetched("x", other, 0) == []
    assert not r.seen(k) and r.next_deadline() is None
    stats = r.stats
    assert stats["relay_rejected_not_neighbour"] == 2 and stats["relay_rejected_topic"] == 1
    assert stats["relay_rejected_not_held"] == 2


def test_haves_are_gathered_into_one_notice_per_interval() -> None:
    r = relay("x")
    r.publish_own(BatchKey(NS, ME, 1, 1), 0)
    r.publish_own(BatchKey(NS, ME, 2, 3), 5)
    k = key("o", 4)
    r.on_batch(published("x", k), k, 6)
    assert r.tick(19) == [] and r.next_deadline() == 20
    (have,) = r.tick(20)
    assert have == PublishHave(have_topic(ME, NS), Have(NS, ((ME, 1, 3), ("o", 4, 4))))
    assert r.next_deadline() is None


def announce(r: Relay, by: str, k: BatchKey, now: int) -> None:
    r.on_have(parse_topic(have_topic(by, NS)), Have(NS, ((k.origin, k.first, k.last),)), now)


def test_a_missing_batch_is_fetched_from_its_announcers_in_turn() -> None:
    r = relay("x", "y", "z")
    r.on_prune("y", Prune(NS))
    r.on_prune("z", Prune(NS))
    k = key("o", 1)
    announce(r, "y", k, 0)
    announce(r, "z", k, 10)
    assert r.tick(99) == [] and r.next_deadline() == 100
    # No tree neighbour has it: the loss was upstream, whose repair comes down the tree.
    assert r.tick(100) == [] and r.next_deadline() == 200
    assert r.tick(200) == [Fetch("y", NS, "o", 1, 1)]  # one miss: a loss, no graft
    assert r.tick(300) == [Fetch("z", NS, "o", 1, 1)]
    r.neighbour_down("z")
    assert r.tick(400) == [Fetch("y", NS, "o", 1, 1)]  # a fetch may be lost: again
    assert r.tick(500) == [Fetch("y", NS, "o", 1, 1)]
    assert r.tick(600) == [] and r.stats["relay_gave_up"] == 1  # anti-entropy's turn
    assert r.eager(NS) == ["x"] and r.next_deadline() is None


def test_a_batch_a_tree_neighbour_announced_is_fetched_from_it_at_once() -> None:
    r = relay("x", "y")
    r.on_prune("y", Prune(NS))
    k = key("o", 1)
    announce(r, "y", k, 0)
    announce(r, "x", k, 30)  # x had it: our copy from x was lost on the way
    assert r.tick(100) == [Fetch("x", NS, "o", 1, 1)]


def fetch_through(r: Relay, by: str, k: BatchKey, now: int) -> list[Command]:
    """``by`` announces ``k``; it is fetched (after the upstream wait) and comes back."""
    announce(r, by, k, now)
    assert not of(Fetch, r.tick(now + 100))
    out = r.tick(now + 200)
    assert Fetch(by, NS, k.origin, k.first, k.last) in out
    fetched = r.on_fetched(by, k, now + 210)
    assert of(Deliver, fetched) and parse_topic(of(PublishBatch, fetched)[0].topic).repaired
    return out


def test_a_tree_bringing_too_little_grafts_the_announcer() -> None:
    r = relay("x", "y")
    r.on_prune("y", Prune(NS))
    tree = key("t", 1)
    r.on_batch(published("x", tree), tree, 0)
    outs = [fetch_through(r, "y", key("o", seq), 300 * seq) for seq in (1, 2, 3)]
    assert [SendTo("y", Graft(NS)) in out for out in outs] == [False, False, True]
    assert r.eager(NS) == ["x", "y"] and r.stats["relay_grafts_sent"] == 1


def test_stray_losses_graft_nothing() -> None:
    r = relay("x", "y")
    r.on_prune("y", Prune(NS))
    for seq in range(1, 40):
        k = key("t", seq)
        r.on_batch(published("x", k), k, seq)
        if seq % 8 == 0:
            fetch_through(r, "y", key("o", seq), 1_000 * seq)
    assert r.eager(NS) == ["x"] and r.stats["relay_grafts_sent"] == 0


def test_a_batch_the_tree_brings_before_the_timeout_is_not_fetched() -> None:
    r = relay("x", "y")
    r.on_prune("y", Prune(NS))
    k = key()
    announce(r, "y", k, 0)
    r.on_batch(published("x", k), k, 50)
    out = r.tick(100)
    assert not of(Fetch, out) and of(PublishHave, out)
    assert r.next_deadline() is None


def test_the_timeout_stretches_to_a_slow_tree_and_shrinks_back() -> None:
    r = relay("x", "y")
    r.on_prune("y", Prune(NS))
    # Missed while the links were new (before their subscriptions took effect): that is
    # no measure of the tree's pace.
    young = key("t", 1)
    announce(r, "y", young, 0)
    r.on_batch(published("x", young), young, 400)
    assert r.graft_timeout_ms() == SETTINGS.graft_timeout_ms
    # One late batch in a stream moves it little; a tree late all along, to twice that.
    for seq in range(2, 40):
        late = key("t", seq)
        announce(r, "y", late, 1_000 * seq)
        r.on_batch(published("x", late), late, 1_000 * seq + 200)  # 200 ms behind
    assert 350 <= r.graft_timeout_ms() <= 400
    timeout = r.graft_timeout_ms()
    # A batch the tree has not brought yet is not fetched at the old 100 ms, but within
    # the timeout as adapted.
    k = key("o", 1)
    announce(r, "x", k, 50_000)
    assert not of(Fetch, r.tick(50_100)) and not of(Fetch, r.tick(50_000 + timeout - 1))
    assert of(Fetch, r.tick(50_000 + timeout))
    # Batches in time bring it back down; never below the setting.
    for seq in range(100, 200):
        t = key("t", seq)
        r.on_batch(published("x", t), t, 60_000 + seq)
    assert r.graft_timeout_ms() == SETTINGS.graft_timeout_ms
    # And never above the ceiling, however late the tree is.
    for seq in range(500, 540):
        worst = key("t", seq)
        announce(r, "y", worst, 100_000 * seq)
        r.on_batch(published("x", worst), worst, 100_000 * seq + 60_000)
    assert r.graft_timeout_ms() == SETTINGS.max_graft_timeout_ms


def test_what_the_engine_holds_already_is_neither_fetched_nor_relayed() -> None:
    r = relay("x", "y")
    r.learned(BatchKey(NS, "o", 1, 5))  # the replica's version vector at start
    announce(r, "y", key("o", 4), 0)
    assert r.next_deadline() is None
    assert r.on_batch(published("x", key("o", 5)), key("o", 5), 1) == []
    assert of(Deliver, r.on_batch(published("x", key("o", 6)), key("o", 6), 2))


def test_without_an_eager_link_the_first_miss_grafts() -> None:
    r = relay("y")
    r.on_prune("y", Prune(NS))
    announce(r, "y", key(), 0)
    out = r.tick(100)  # no eager link: nothing upstream to wait for
    assert SendTo("y", Graft(NS)) in out and Fetch("y", NS, "o", 1, 1) in out


# -- the simulation ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay() -> dict[str, tuple[str, ...]]:
    return converged_overlay(40, seed=5)


def workload(sim: RelaySim, ns: str, count: int, start: float, gap: float) -> list[str]:
    holders = sim.holders[ns]
    for i in range(count):
        sim.publish_at(start + i * gap, holders[sim.rng.randrange(len(holders))], ns)
    return holders


def test_every_holder_gets_every_batch_under_loss(overlay: dict[str, tuple[str, ...]]) -> None:
    holders = {n: frozenset({NS}) for n in overlay}
    sim = RelaySim(overlay, holders, seed=2, loss=0.05, settings=SETTINGS)
    workload(sim, NS, 150, 0, 10)
    assert sim.run_quiet(60_000)
    assert sim.stats["lost"] > 0
    assert [k for k in sim.published if sim.completion_ms(k) is None] == []


def eager_links(sim: RelaySim) -> dict[str, list[str]]:
    """Who hears whom: X -> Y when Y is subscribed to X's data."""
    flows: dict[str, list[str]] = {n: [] for n in sim.nodes}
    for node in sim.nodes.values():
        for publisher in node.relay.eager(NS):
            flows[publisher].append(node.node_id)
    return flows


def test_the_eager_links_settle_into_a_spanning_tree(overlay: dict[str, tuple[str, ...]]) -> None:
    holders = {n: frozenset({NS}) for n in overlay}
    sim = RelaySim(overlay, holders, seed=3, loss=0.0, settings=SETTINGS)
    workload(sim, NS, 200, 0, 5)  # batches of many origins in flight at once
    assert sim.run_quiet(60_000)
    flows = eager_links(sim)
    assert sum(len(v) for v in flows.values()) == 2 * (len(overlay) - 1)
    assert all(reachable(flows, n) == set(overlay) for n in overlay)
    before, stats = sim.received(NS), sim.relay_stats()
    keys = len(sim.published)
    workload(sim, NS, 50, sim.now + 10, 5)
    assert sim.run_quiet(sim.now + 60_000)
    got, churn = sim.received(NS) - before, sim.relay_stats() - stats
    assert got["copies"] == (len(sim.published) - keys) * (len(overlay) - 1)  # once each
    assert churn["relay_duplicates"] == churn["relay_fetches"] == churn["relay_prunes_sent"] == 0


def connected_without(links: dict[str, list[str]], gone: str) -> bool:
    rest = {n: [x for x in near if x != gone] for n, near in links.items() if n != gone}
    return reachable(rest, min(rest)) == set(rest)


def test_a_tree_cut_by_a_crash_is_grafted_back_together(
    overlay: dict[str, tuple[str, ...]],
) -> None:
    holders = {n: frozenset({NS}) for n in overlay}
    sim = RelaySim(overlay, holders, seed=6, loss=0.01, settings=SETTINGS)
    workload(sim, NS, 150, 0, 5)
    assert sim.run_quiet(60_000)
    flows = eager_links(sim)
    victim = next(
        n
        for n in sorted(overlay, key=lambda n: (-len(flows[n]), n))
        if len(flows[n]) >= 3 and connected_without(symmetric(overlay), n)
    )  # an inner node of the tree, whose loss leaves the overlay connected
    grafts = sim.relay_stats()["relay_grafts_sent"]
    sim.crash(victim)
    start = len(sim.published)
    for _ in range(2):  # holes are grafted at most once per graft_window_ms per node
        workload(sim, NS, 150, sim.now + 10, 5)
        assert sim.run_quiet(sim.now + 60_000)
    assert all(sim.completion_ms(k) is not None for k in list(sim.published)[start:])
    assert sim.relay_stats()["relay_grafts_sent"] > grafts
    live = set(overlay) - {victim}
    assert all(reachable(eager_links(sim), n) >= live for n in sorted(live))


def test_a_scoped_namespace_reaches_its_holders_and_costs_others_nothing(
    overlay: dict[str, tuple[str, ...]],
) -> None:
    ids = sorted(overlay)
    few = set(ids[::8])
    holders = {n: frozenset({NS, "scoped"} if n in few else {NS}) for n in ids}
    sim = RelaySim(overlay, holders, seed=4, loss=0.02, settings=SETTINGS)
    assert sim.holders["scoped"] == sorted(few)
    workload(sim, "scoped", 60, 0, 10)
    workload(sim, NS, 20, 0, 30)
    assert sim.run_quiet(60_000)
    assert all(sim.completion_ms(k) is not None for k in sim.published)
    for n in sorted(set(ids) - few):
        assert sim.nodes[n].heard["scoped"] == 0 < sim.nodes[n].heard[NS]
    assert all(sim.nodes[n].heard["scoped"] > 0 for n in few)


SUMMARY = """
from crdtstore.testing.relaysim import RelaySim, converged_overlay
ov = converged_overlay(25, seed=9)
sim = RelaySim(ov, {n: frozenset({"ns"}) for n in ov}, seed=9, loss=0.05)
for i in range(40):
    sim.publish_at(i * 7, sorted(ov)[sim.rng.randrange(len(ov))], "ns")
sim.run_quiet(60_000)
print(sorted(ov.items()))
print([(k, sim.completion_ms(k)) for k in sim.published])
print(sorted(sim.received("ns").items()), sorted(sim.relay_stats().items()))
"""


def test_a_simulation_replays_from_its_seed_whatever_the_hash_seed() -> None:
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", SUMMARY], env=env, capture_output=True, text=True, check=True
        )
        runs.append(done.stdout)
    assert runs[0] == runs[1] and "None" not in runs[0]
