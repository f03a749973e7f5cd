"""PUB/SUB between two transports on loopback: delivery, topic filtering, lossy publishing."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from transport_loopback import connect, drain, recv_matching, wait_until

from crdtstore.testing.faults import FaultSpec
from transport import Delivery, Transport

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]


def is_publish(topic: bytes, payload: bytes) -> Callable[[Delivery], bool]:
    return lambda d: d.kind == "publish" and d.topic == topic and d.payload == payload


def test_publish_reaches_subscriber_with_topic_and_payload(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    b.subscribe(b"ns1\x00")
    connect(b, a)

    # Slow joiner: publications before the subscription reaches a's PUB are lost, so
    # publish until one arrives.
    got = recv_matching(
        b, is_publish(b"ns1\x00", b"hello"), between=lambda: a.publish(b"ns1\x00", b"hello")
    )
    assert got == Delivery("publish", b"a", b"ns1\x00", b"hello", None)
    assert b.stats()["received_publish"] >= 1
    assert a.stats()["published"] >= 1


def test_unsubscribed_topic_is_not_delivered(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    b.subscribe(b"wanted")
    connect(b, a)
    recv_matching(b, is_publish(b"wanted", b"0"), between=lambda: a.publish(b"wanted", b"0"))

    # The subscription is in place; interleave unwanted topics with wanted markers. PUB
    # preserves order per subscriber, so once the last marker arrives every unwanted frame
    # published before it has had its chance to (wrongly) arrive.
    for i in range(1, 51):
        a.publish(b"other", b"x%d" % i)
        a.publish(b"wanted", b"%d" % i)
    seen: list[Delivery] = []
    recv_matching(b, is_publish(b"wanted", b"50"), seen=seen)
    assert all(d.topic == b"wanted" for d in seen)
    assert [d.payload for d in seen if d.payload != b"0"] == [b"%d" % i for i in range(1, 51)]


def test_unsubscribe_stops_delivery(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    b.subscribe(b"t1")
    b.subscribe(b"t2")
    connect(b, a)
    recv_matching(b, is_publish(b"t2", b"ready"), between=lambda: a.publish(b"t2", b"ready"))
    recv_matching(b, is_publish(b"t1", b"ready"), between=lambda: a.publish(b"t1", b"ready"))
    b.unsubscribe(b"t1")

    # The unsubscription travels to a's PUB asynchronously: wait until a t1 marker stops
    # arriving after a t2 marker published behind it does arrive.
    def t1_blocked() -> bool:
        a.publish(b"t1", b"probe")
        a.publish(b"t2", b"fence")
        seen: list[Delivery] = []
        recv_matching(b, is_publish(b"t2", b"fence"), seen=seen)
        return not any(d.topic == b"t1" for d in seen)

    wait_until(t1_blocked, what="unsubscribe took effect")
    a.publish(b"t1", b"after")
    a.publish(b"t2", b"last")
    seen: list[Delivery] = []
    recv_matching(b, is_publish(b"t2", b"last"), seen=seen)
    assert not any(d.topic == b"t1" for d in seen)


def test_subscription_made_after_connect_applies_to_existing_peers(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(b, a)
    b.subscribe(b"late")
    recv_matching(b, is_publish(b"late", b"x"), between=lambda: a.publish(b"late", b"x"))


def accounted(t: Transport, total: int) -> bool:
    stats = t.stats()
    return stats["published"] + stats["publish_dropped"] == total


def test_lossy_faults_drop_about_half_of_publications_reproducibly(make_transport: Make) -> None:
    total = 400
    counts = []
    for _ in range(2):
        faults = FaultSpec(drop_publish_fraction=0.5, drop_seed=7).build()
        a = make_transport(b"lossy", faults=faults, router=None)
        for i in range(total):
            a.publish(b"t", b"%d" % i)
        wait_until(partial(accounted, a, total), what="all publications accounted for")
        stats = a.stats()
        assert 0 < stats["publish_dropped"] < total
        assert total * 0.35 < stats["publish_dropped"] < total * 0.65
        counts.append(stats["publish_dropped"])
        a.close()
    assert counts[0] == counts[1]  # same seed, same losses


def test_publish_without_pub_socket_is_counted_as_dropped(make_transport: Make) -> None:
    a = make_transport(b"a", pub=None)
    a.publish(b"t", b"x")
    wait_until(lambda: a.stats()["publish_dropped"] == 1)
    assert a.bound_pub is None
    drain(a, quiet=0.05)


def test_peer_subscription_filters_one_publisher_only(make_transport: Make) -> None:
    # Subscribed before b connects anywhere: the prefix waits for a's SUB.
    a, b, c = make_transport(b"a"), make_transport(b"b"), make_transport(b"c")
    b.subscribe_peer(b"a", [b"t"])
    b.subscribe(b"fence")
    connect(b, a)
    connect(b, c)
    recv_matching(b, is_publish(b"t", b"from a"), between=lambda: a.publish(b"t", b"from a"))
    recv_matching(b, is_publish(b"fence", b"c"), between=lambda: c.publish(b"fence", b"c"))

    # c's SUB never got the prefix: c's "t" stays at c, with c's fence behind it arriving.
    for i in range(20):
        c.publish(b"t", b"c%d" % i)
    c.publish(b"fence", b"c-last")
    seen: list[Delivery] = []
    recv_matching(b, is_publish(b"fence", b"c-last"), seen=seen)
    assert not any(d.topic == b"t" and d.peer == b"c" for d in seen)


def test_peer_subscription_survives_reconnect_and_unsubscribes(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    b.subscribe_peer(b"a", [b"t", b"t"])  # held once: one unsubscribe ends it
    b.subscribe(b"fence")
    connect(b, a)
    recv_matching(b, is_publish(b"t", b"1"), between=lambda: a.publish(b"t", b"1"))
    b.disconnect_peer(b"a")
    connect(b, a)
    recv_matching(b, is_publish(b"t", b"2"), between=lambda: a.publish(b"t", b"2"))

    b.unsubscribe_peer(b"a", [b"t"])

    def t_blocked() -> bool:
        a.publish(b"t", b"probe")
        a.publish(b"fence", b"f")
        seen: list[Delivery] = []
        recv_matching(b, is_publish(b"fence", b"f"), seen=seen)
        return not any(d.topic == b"t" for d in seen)

    wait_until(t_blocked, what="peer unsubscribe took effect")
