"""The engine's side of relayed deltas (``crdtstore.sync.relaying``): link forms, their
subscriptions and changes, the trust rule per form, older neighbours, fetches."""

from __future__ import annotations

from collections import Counter

from crdtstore.sync.engine import SyncEngine
from crdtstore.sync.messages import (
    DeltaBatch,
    Have,
    RepairReply,
    RepairRequest,
    decode_message,
    encode_message,
)
from crdtstore.sync.outgoing import Outgoing, PublishTopic, Send, Subscribe, Unsubscribe
from crdtstore.sync.relay_topics import (
    OWN,
    data_prefix,
    data_topic,
    edge_weight,
    have_prefix,
    have_topic,
    hop_mark,
    parse_topic,
)
from crdtstore.sync.relaying import TREE, flat_topic
from crdtstore.testing.simulator import Simulator

NOW = 1_700_000_000_000
FLOOD = TREE - 1


def batch_of(origin: str, ns: str = "s", element: str = "x") -> bytes:
    """A real batch of ``origin``'s (its first in ``ns``), as its log holds it."""
    sim = Simulator(6, seed=4)
    sim.add(origin, ns, element)
    logged = sim.engine(origin).replica.log_batches(ns, origin, 1, 1)
    assert logged
    return logged[0]


def engine(node_id: str = "n0", topics: list[str] | None = None) -> SyncEngine:
    plain = Simulator(3, seed=4).engine(node_id)
    return SyncEngine(node_id, plain.replica, plain.settings, topics=topics, relay=True)


def subscribed(out: list[Outgoing], peer: str) -> tuple[set[bytes], set[bytes]]:
    """What ``out`` subscribes to and unsubscribes from on ``peer``'s link, in order:
    (added, dropped); a prefix dropped and then added again counts as added."""
    added: set[bytes] = set()
    dropped: set[bytes] = set()
    for o in out:
        if isinstance(o, Subscribe) and o.peer == peer:
            added |= set(o.topics)
            dropped -= set(o.topics)
        elif isinstance(o, Unsubscribe) and o.peer == peer:
            dropped |= set(o.topics)
            added -= set(o.topics)
    return added, dropped


def test_a_link_not_vouched_for_carries_its_own_batches_only() -> None:
    e = engine(topics=["s"])
    added, _ = subscribed(e.link("n1", TREE, None, vouched=False), "n1")
    assert added == {data_prefix("n1", "s") + b"-", data_prefix("n1", "__members") + b"-"} | {
        data_prefix("n1", ns) + b"-" for ns in e.settings.reserved_namespaces
    }
    # Another origin's batch on its own topic (as a relay of it) is refused, unapplied.
    foreign = batch_of("n2")
    e.on_message("", foreign, NOW, publisher="n1", topic=data_topic("n1", "s", hop_mark("n2")))
    e.on_message("", foreign, NOW, publisher="n1", topic=data_topic("n1", "s", OWN))
    assert e.stats["relay_rejected_not_vouched"] == 2
    assert "s" not in e.replica.namespaces()
    # Its own batch is taken, and not relayed: its other neighbours hear it as this node
    # did; relaying made each of them a duplicate. Nor is it fetched when announced.
    e.link("n3", TREE, None)
    out = e.on_message("", batch_of("n1"), NOW, publisher="n1", topic=data_topic("n1", "s", OWN))
    assert "x" in e.replica.value("s")  # type: ignore[attr-defined]
    assert not [o for o in out if isinstance(o, PublishTopic)]
    told = encode_message(Have("s", (("n1", 1, 1),)))
    e.on_message("", told, NOW, publisher="n3", topic=have_topic("n3", "s"))
    assert not [o for o in e.on_tick(NOW + 5_000) if isinstance(o, Send)]
    # Its have notices fetch nothing of a namespace held already (they are for a node
    # holding every namespace, to learn of new ones).
    have = Have("s", (("n1", 2, 2), ("n2", 1, 1)))
    out = e.on_message("", encode_message(have), NOW, publisher="n1", topic=have_topic("n1", "s"))
    assert out == []
    assert not [o for o in e.on_tick(NOW + 5_000) if isinstance(o, Send)]


def test_a_node_holding_every_namespace_learns_new_ones_from_an_unvouched_link() -> None:
    e = engine(topics=None)
    added, _ = subscribed(e.link("n1", TREE, None, vouched=False), "n1")
    # Its own data topics of the namespaces known here, and its have notices: not all it
    # publishes (its relays would bring this node's own batches back, to be refused).
    assert b"dn1\x00" not in added  # every data topic of n1's
    assert have_prefix("n1") in added and data_prefix("n1", "__members") + b"-" in added
    # A have notice naming a namespace new here links it, and fetches the runs of the
    # publisher's own it lists at once (published before the subscription); another
    # origin's runs are not its to vouch for.
    have = Have("fresh", (("n1", 1, 1), ("n2", 1, 3)))
    out = e.on_message(
        "", encode_message(have), NOW, publisher="n1", topic=have_topic("n1", "fresh")
    )
    assert data_prefix("n1", "fresh") + b"-" in subscribed(out, "n1")[0]
    fetches = [decode_message(o.data) for o in out if isinstance(o, Send)]
    assert [(f.namespace, f.origin, f.first, f.last) for f in fetches] == [("fresh", "n1", 1, 1)]
    reply = encode_message(RepairReply(fetches[0].request, "fresh", (batch_of("n1", "fresh"),)))
    e.on_message("n1", reply, NOW + 10)
    assert "x" in e.replica.value("fresh")  # type: ignore[attr-defined]
    # Its batches of it on its own topic are taken from now on.
    later = batch_of("n1", "fresh", "y")
    e.on_message("", later, NOW, publisher="n1", topic=data_topic("n1", "fresh", OWN))


def test_a_link_changing_form_subscribes_the_new_before_dropping_the_old() -> None:
    # Holding every namespace: the own-only form's prefixes are all kept by the tree's.
    e = engine(topics=None)
    e.link("n1", TREE, None, vouched=False)
    added, dropped = subscribed(e.link("n1", TREE, None, vouched=True), "n1")
    assert not dropped
    assert have_topic("n1", "__members") in added
    # A neighbour first heard in the flood form (version 3) that turns out to speak the
    # tree's: the tree's topics are subscribed before the flat ones are dropped, so
    # nothing published meanwhile falls between the two.
    e = engine(topics=["s"])
    e.link("n2", FLOOD, None)
    out = e.link("n2", TREE, None)
    kinds = [type(o) for o in out if isinstance(o, Subscribe | Unsubscribe)]
    assert kinds[-1] is Unsubscribe and Unsubscribe not in kinds[:-1]
    added, dropped = subscribed(out, "n2")
    assert flat_topic("s") in dropped and have_topic("n2", "s") in added
    # Holding some: the own-only prefixes ("-") are ones the tree form subscribes to as
    # well, and the transport holds a prefix once: none may be dropped.
    e = engine(topics=["s"])
    e.link("n1", TREE, None, vouched=False)
    added, dropped = subscribed(e.link("n1", TREE, None, vouched=True), "n1")
    assert not dropped
    assert have_topic("n1", "s") in added
    assert e.relaying is not None and e.relaying.linked() == {"n1": "tree"}
    # Unlinking takes every subscription of the link away.
    before = set()
    for o in [*e.link("n2", TREE, None)]:
        if isinstance(o, Subscribe):
            before |= set(o.topics)
    _, gone = subscribed(e.unlink("n2"), "n2")
    assert gone == before


def test_a_flooding_neighbour_is_linked_in_its_own_form_both_ways() -> None:
    e = engine(topics=["s"])
    added, _ = subscribed(e.link("old", FLOOD, None), "old")
    assert flat_topic("s") in added and not any(t[:1] == b"d" for t in added)
    e.link("new", TREE, None)
    # What the old one floods (any origin: its record vouches for it) reaches the tree...
    out = e.on_message("", batch_of("n2"), NOW, publisher="old", topic=flat_topic("s"))
    topics = [o.topic for o in out if isinstance(o, PublishTopic)]
    assert any(t[:1] == b"d" and parse_topic(t).repaired for t in topics)
    # ...and is flooded on for the old form, as a version-3 node would.
    assert flat_topic("s") in topics
    # Tree batches are flooded to the old one too, once.
    b3 = batch_of("n3")
    topic = data_topic("new", "s", hop_mark("n3"), edge_weight("n3", "new"))
    out = e.on_message("", b3, NOW, publisher="new", topic=topic)
    assert [o.topic for o in out if isinstance(o, PublishTopic) and o.data == b3].count(
        flat_topic("s")
    ) == 1
    # A flat batch from a tree link is not one it may send that way.
    e.on_message("", batch_of("n4"), NOW, publisher="new", topic=flat_topic("s"))
    assert e.stats["relay_rejected_not_neighbour"] == 1
    # Once the old one is gone, nothing goes out on the namespace's topic.
    e.unlink("old")
    b5 = batch_of("n5")
    out = e.on_message(
        "",
        b5,
        NOW,
        publisher="new",
        topic=data_topic("new", "s", hop_mark("n5"), edge_weight("n5", "new")),
    )
    assert flat_topic("s") not in [o.topic for o in out if isinstance(o, PublishTopic)]


def test_a_missing_batch_announced_by_a_neighbour_is_fetched_and_relayed_on() -> None:
    e = engine(topics=["s"])
    e.link("n1", TREE, None)
    e.link("n2", TREE, None)
    have = encode_message(Have("s", (("n5", 1, 1),)))
    e.on_message("", have, NOW, publisher="n1", topic=have_topic("n1", "s"))
    fetches: list[tuple[str, RepairRequest]] = []
    for t in range(NOW, NOW + 2_000, 50):
        for o in e.on_tick(t):
            if isinstance(o, Send):
                msg = decode_message(o.data)
                if isinstance(msg, RepairRequest):
                    fetches.append((o.peer, msg))
        if fetches:
            break
    assert fetches and fetches[0][0] == "n1"
    _peer, req = fetches[0]
    assert (req.namespace, req.origin, req.first, req.last) == ("s", "n5", 1, 1)
    reply = encode_message(RepairReply(req.request, "s", (batch_of("n5"),)))
    out = e.on_message("n1", reply, NOW + 500)
    assert "x" in e.replica.value("s")  # type: ignore[attr-defined]
    relayed = [
        parse_topic(o.topic) for o in out if isinstance(o, PublishTopic) and o.topic[:1] == b"d"
    ]
    assert [(t.publisher, t.repaired) for t in relayed] == [("n0", True)]
    # The same reply again (a stray duplicate) is not taken as a fetch's a second time.
    again = e.on_message("n1", reply, NOW + 600)
    assert not [o for o in again if isinstance(o, PublishTopic)]


def test_counters_of_the_relay_are_the_engines() -> None:
    e = engine(topics=["s"])
    e.link("n1", TREE, None)
    b = batch_of("n5")
    topic = data_topic("n1", "s", hop_mark("n5"), edge_weight("n5", "n1"))
    e.on_message("", b, NOW, publisher="n1", topic=topic)
    e.on_message("", b, NOW, publisher="n1", topic=topic)
    assert isinstance(e.stats, Counter)
    assert e.stats["relay_batches_relayed"] == 1 and e.stats["relay_duplicates"] == 1
    assert isinstance(decode_message(b), DeltaBatch)


def test_a_namespace_new_here_is_linked_and_its_announced_batches_fetched_at_once() -> None:
    # A node holding every namespace meets one in a member neighbour's have notice: the
    # batches it lists were published before this node subscribed, so waiting for the
    # relay's timeout would only delay a burst of writes into it, batch by batch.
    e = engine(topics=None)
    e.link("n1", TREE, None)
    have = Have("fresh", (("n2", 1, 2), ("n0", 1, 1)))
    out = e.on_message(
        "", encode_message(have), NOW, publisher="n1", topic=have_topic("n1", "fresh")
    )
    added, _ = subscribed(out, "n1")
    assert have_topic("n1", "fresh") in added
    assert any(t.startswith(data_prefix("n1", "fresh")) for t in added)
    fetches = [decode_message(o.data) for o in out if isinstance(o, Send)]
    # This node's own runs are never fetched (it is their origin).
    assert [(f.namespace, f.origin, f.first, f.last) for f in fetches] == [("fresh", "n2", 1, 2)]
    # A namespace known already waits for the tree, as before.
    again = Have("fresh", (("n2", 3, 3),))
    out = e.on_message(
        "", encode_message(again), NOW, publisher="n1", topic=have_topic("n1", "fresh")
    )
    assert not [o for o in out if isinstance(o, Send)]


def test_a_relay_leaves_before_the_groups_commit() -> None:
    e = engine(topics=["s"])
    e.link("n1", TREE, None)
    events: list[str] = []
    close = e.delivery.close_group

    def committed(now_ms: int) -> None:
        events.append("commit")
        close(now_ms)

    e.delivery.close_group = committed  # type: ignore[method-assign]
    b = batch_of("n5")
    frame = ("", b, "n1", data_topic("n1", "s", hop_mark("n5"), edge_weight("n5", "n1")))
    rest = e.on_messages([frame], NOW, early=lambda out: events.append(f"early {len(out)}"))
    assert events == ["early 1", "commit"] and rest == []
    assert "x" in e.replica.value("s")  # type: ignore[attr-defined]
