"""Frames from raw ZeroMQ sockets that do not follow the transport's framing.

Each case sends bad input, checks it was dropped and counted, then checks that a good
message still gets through: the I/O thread must survive anything the network sends.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import zmq
from transport_loopback import EPHEMERAL, Raw, drain, endpoint, recv_matching, wait_until

from transport import Transport, TransportSettings, routing_id

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]
SMALL = TransportSettings(max_message_bytes=1024)


def test_router_drops_wrong_frame_counts_and_keeps_working(make_transport: Make, raw: Raw) -> None:
    a = make_transport(b"a")
    dealer = raw(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"raw")
    dealer.connect(endpoint(a.bound_router))
    dealer.send_multipart([b"one", b"two"])
    dealer.send_multipart([b"one", b"two", b"three"])
    wait_until(lambda: a.stats()["dropped_malformed"] == 2)

    dealer.send(b"fine")
    got = recv_matching(a, lambda d: d.payload == b"fine")
    assert got.peer == b"raw" and got.kind == "direct"
    assert a.stats()["received_direct"] == 1


def test_dealer_drops_wrong_frame_counts_from_a_peer_router(make_transport: Make, raw: Raw) -> None:
    a = make_transport(b"a")
    router = raw(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    a.connect_peer(b"evil", f"tcp://127.0.0.1:{port}", None)
    a.send(b"evil", b"hello")  # lets the raw ROUTER learn our routing id
    identity, hello = router.recv_multipart()
    assert (routing_id.node_of(identity), hello) == (b"a", b"hello")

    router.send_multipart([identity, b"x", b"y"])
    router.send_multipart([identity, b"fine"])
    got = recv_matching(a, lambda d: d.payload == b"fine")
    assert got.peer == b"evil"
    assert a.stats()["dropped_malformed"] == 1


def test_sub_drops_wrong_frame_counts_and_oversized_sum(make_transport: Make, raw: Raw) -> None:
    a = make_transport(b"a", settings=SMALL)
    pub = raw(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    router_port = raw(zmq.ROUTER).bind_to_random_port("tcp://127.0.0.1")
    a.subscribe(b"")
    a.connect_peer(b"evil", f"tcp://127.0.0.1:{router_port}", f"tcp://127.0.0.1:{port}")

    def bad_then_good() -> None:
        pub.send(b"single frame")
        pub.send_multipart([b"t", b"p", b"extra"])
        pub.send_multipart([b"t" * 600, b"p" * 600])  # each frame fits, the sum does not
        pub.send_multipart([b"t", b"good"])

    recv_matching(a, lambda d: d.payload == b"good", between=bad_then_good)
    stats = a.stats()
    assert stats["dropped_malformed"] >= 2
    assert stats["dropped_oversized"] >= 1
    assert all(d.payload == b"good" for d in drain(a, quiet=0.1))


def test_oversized_frame_is_cut_by_libzmq_and_transport_keeps_working(
    make_transport: Make, raw: Raw
) -> None:
    a = make_transport(b"a", settings=SMALL)
    big = raw(zmq.DEALER)
    big.setsockopt(zmq.ROUTING_ID, b"big")
    big.connect(endpoint(a.bound_router))
    big.send(b"x" * 2048)
    # libzmq closes a connection that sends a frame beyond MAXMSGSIZE.
    wait_until(lambda: a.stats()["disconnects"] >= 1, what="oversized sender disconnected")

    good = raw(zmq.DEALER)
    good.setsockopt(zmq.ROUTING_ID, b"good")
    good.connect(endpoint(a.bound_router))
    good.send(b"fine")
    recv_matching(a, lambda d: d.payload == b"fine")
    assert all(d.peer != b"big" for d in drain(a, quiet=0.1))


def test_garbage_bytes_on_the_router_port_are_survived(make_transport: Make, raw: Raw) -> None:
    a = make_transport(b"a")
    assert a.bound_router is not None
    host, port = a.bound_router.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.sendall(b"\xff" + b"\x00" * 8 + b"\x7fGARBAGE" * 100)
        wait_until(lambda: a.stats()["handshake_failed"] + a.stats()["disconnects"] >= 1)

    dealer = raw(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"after")
    dealer.connect(endpoint(a.bound_router))
    dealer.send(b"fine")
    recv_matching(a, lambda d: d.payload == b"fine")


def test_many_identities_do_not_break_routing(make_transport: Make, raw: Raw) -> None:
    a = make_transport(b"a", pub=None)
    dealers = []
    for i in range(20):
        dealer = raw(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, b"d%d" % i)
        dealer.connect(endpoint(a.bound_router))
        dealer.send(b"hi")
        dealers.append(dealer)
    wait_until(lambda: a.stats()["received_direct"] == 20)
    drain(a, quiet=0.05)
    a.send(b"d7", b"reply")
    assert dealers[7].poll(2000)
    assert dealers[7].recv() == b"reply"


def test_empty_router_binding_is_allowed(make_transport: Make) -> None:
    a = make_transport(b"a", router=None, pub=EPHEMERAL)
    assert a.bound_router is None
