"""Point-to-point messages: DEALER -> ROUTER, replies through the ROUTER, drops, partitions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from transport_loopback import Cut, connect, drain, recv_matching, wait_until

from transport import Delivery, Transport

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]


def is_direct(peer: bytes, payload: bytes) -> Callable[[Delivery], bool]:
    return lambda d: d.kind == "direct" and d.peer == peer and d.payload == payload


def test_dealer_to_router_and_reply_through_router(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(a, b, pub=False)  # only a -> b: b has no DEALER to a

    a.send(b"b", b"ping")
    got = recv_matching(b, is_direct(b"a", b"ping"))
    assert got == Delivery("direct", b"a", None, b"ping", None)

    # b never called connect_peer(a): the reply must go back through b's ROUTER.
    b.send(b"a", b"pong")
    got = recv_matching(a, is_direct(b"b", b"pong"))
    assert got.peer == b"b"  # named after the connect_peer it came back on
    wait_until(lambda: b.stats()["sent"] == 1)
    assert b.stats()["send_dropped"] == 0


def test_both_directions_over_own_dealers(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(a, b)
    connect(b, a)
    a.send(b"b", b"1")
    b.send(b"a", b"2")
    recv_matching(b, is_direct(b"a", b"1"))
    recv_matching(a, is_direct(b"b", b"2"))


def test_send_to_unknown_peer_is_dropped_and_counted(make_transport: Make) -> None:
    a = make_transport(b"a")
    a.send(b"nobody", b"x")  # must not raise
    wait_until(lambda: a.stats()["send_dropped"] == 1)
    assert a.stats()["sent"] == 0


def test_connect_peer_twice_is_idempotent_and_readdress_replaces(make_transport: Make) -> None:
    a, b, c = make_transport(b"a"), make_transport(b"b"), make_transport(b"c")
    connect(a, b)
    connect(a, b)
    a.send(b"b", b"once")
    recv_matching(b, is_direct(b"a", b"once"))
    assert drain(b, quiet=0.1) == []  # one DEALER, so one copy

    # Same peer name, new addresses (c's): the old connection is replaced.
    assert c.bound_router is not None
    a.connect_peer(b"b", c.bound_router, c.bound_pub)
    a.send(b"b", b"moved")
    recv_matching(c, is_direct(b"a", b"moved"))


def test_disconnect_peer_stops_dealer_route(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(a, b)
    a.disconnect_peer(b"b")
    a.send(b"b", b"x")
    wait_until(lambda: a.stats()["send_dropped"] == 1)


def test_blocked_peer_is_partitioned_both_ways_and_heals(make_transport: Make) -> None:
    cut = Cut()
    a, b = make_transport(b"a", faults=cut), make_transport(b"b")
    a.subscribe(b"t")
    connect(a, b)
    connect(b, a)
    recv_matching(a, is_publish_from_b(b"warm"), between=lambda: b.publish(b"t", b"warm"))

    cut.peers.add(b"b")
    a.send(b"b", b"out")  # to b: dropped at a
    # a's I/O thread may still be draining b's warm-up publications when the cut starts,
    # and would deliver them; a's commands run in order, so the first drop shows it is in
    # force for everything after.
    wait_until(lambda: a.stats()["partition_dropped"] >= 1, what="the cut in force")
    b.send(b"a", b"in")  # from b: dropped at a
    b.publish(b"t", b"pub")  # from b's PUB to a's SUB: dropped at a
    wait_until(lambda: a.stats()["partition_dropped"] >= 3, what="three frames cut")
    assert drain(a, quiet=0.1) == []
    assert drain(b, quiet=0.1) == []

    cut.peers.clear()
    a.send(b"b", b"healed")
    recv_matching(b, is_direct(b"a", b"healed"))
    b.send(b"a", b"healed too")
    recv_matching(a, is_direct(b"b", b"healed too"))


def test_blocked_peer_reaching_us_through_router_is_cut(make_transport: Make) -> None:
    cut = Cut()
    a, b = make_transport(b"a", faults=cut), make_transport(b"b")
    connect(b, a, pub=False)  # b reaches a only through a's ROUTER
    cut.peers.add(b"b")
    a.send(b"b", b"probe")  # dropped by the cut
    wait_until(lambda: a.stats()["partition_dropped"] == 1, what="the cut in force")
    b.send(b"a", b"x")
    wait_until(lambda: a.stats()["partition_dropped"] == 2)
    assert a.stats()["received_direct"] == 0


def is_publish_from_b(payload: bytes) -> Callable[[Delivery], bool]:
    return lambda d: d.kind == "publish" and d.payload == payload
