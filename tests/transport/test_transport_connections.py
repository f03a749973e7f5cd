"""One node, several connections to one ROUTER; what every network socket is set up with.

Issue 18: a node's seed connection and its member connection to the same node once shared a
routing id, ROUTER_HANDOVER gave the id to the newer one, and the older one, still open,
stalled at the ROUTER; with ZMTP heartbeats on, its end killed the ROUTER's process
(``transport.iothread`` tells the whole story; the cluster test reproduces it).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import zmq
from transport_loopback import Raw, endpoint, recv_matching

from transport import Delivery, Transport, TransportError, TransportSettings, routing_id
from transport.iothread import configure_network_socket

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]


def from_a(payload: bytes) -> Callable[[Delivery], bool]:
    return lambda d: d.kind == "direct" and d.peer == b"a" and d.payload == payload


def test_a_second_connection_of_a_node_does_not_cut_off_its_first(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    router = endpoint(b.bound_router)
    a.connect_peer(b"b", router, b.bound_pub)  # the member connection, up first
    a.send(b"b", b"member")
    recv_matching(b, from_a(b"member"))
    a.connect_peer(b"seed", router, None)  # the seed connection, reconnecting later
    a.send(b"seed", b"hello")
    recv_matching(b, from_a(b"hello"))  # both are now attached at b's ROUTER

    # Handover used to give the id to the seed connection and leave this one stalled.
    a.send(b"b", b"after")
    recv_matching(b, from_a(b"after"))

    # b reaches a through its ROUTER over whichever connection a last spoke on, and the
    # other closing takes nothing with it.
    a.disconnect_peer(b"seed")
    b.send(b"a", b"reply")
    got = recv_matching(a, lambda d: d.payload == b"reply")
    assert got.peer == b"b"  # it came back on the member connection
    a.send(b"b", b"still")
    recv_matching(b, from_a(b"still"))


def test_each_connection_has_a_routing_id_of_its_own_naming_the_node(
    make_transport: Make, raw: Raw
) -> None:
    router = raw(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    a = make_transport(b"a")
    for name in (b"x", b"y"):
        a.connect_peer(name, f"tcp://127.0.0.1:{port}", None)
        a.send(name, name)
    seen = {}
    for _ in range(2):
        assert router.poll(5000), "a message from each of a's connections"
        identity, payload = router.recv_multipart()
        seen[payload] = identity
    assert seen[b"x"] != seen[b"y"]
    assert {routing_id.node_of(identity) for identity in seen.values()} == {b"a"}


def test_routing_ids_name_their_node_and_other_ids_name_themselves() -> None:
    for identity in (b"a", b"n1", b"a\x00b", "nœud".encode(), b"x" * routing_id.MAX_IDENTITY_BYTES):
        first, second = routing_id.for_connection(identity), routing_id.for_connection(identity)
        assert first != second
        assert len(first) <= 255  # libzmq's limit
        assert routing_id.node_of(first) == routing_id.node_of(second) == identity
    # A raw client's id, or one libzmq generated (NUL then four bytes), is its own name.
    for other in (b"raw", b"\x00\x00\x00\x00\x01", b"a\x00" + b"0" * 15, b"\x00" + b"0" * 16):
        assert routing_id.node_of(other) == other


def test_an_identity_too_long_for_a_routing_id_is_refused() -> None:
    with pytest.raises(TransportError, match="at most"):
        Transport(b"x" * (routing_id.MAX_IDENTITY_BYTES + 1), router_bind=None, pub_bind=None)


def test_network_sockets_keep_tcp_alive_and_never_heartbeat(raw: Raw) -> None:
    settings = TransportSettings(
        tcp_keepalive_idle_s=7,
        tcp_keepalive_interval_s=3,
        tcp_keepalive_count=4,
        tcp_max_retransmit_ms=9000,
    )
    for socket_type in (zmq.ROUTER, zmq.PUB, zmq.DEALER, zmq.SUB):
        sock = raw(socket_type)
        configure_network_socket(sock, settings)
        # libzmq's heartbeat timer is what aborted (transport.iothread): never armed.
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert sock.getsockopt(zmq.TCP_KEEPALIVE) == 1
        assert sock.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == 7
        assert sock.getsockopt(zmq.TCP_KEEPALIVE_INTVL) == 3
        assert sock.getsockopt(zmq.TCP_KEEPALIVE_CNT) == 4
        assert sock.getsockopt(zmq.TCP_MAXRT) == 9000


@pytest.mark.parametrize(
    "name", ["tcp_keepalive_idle_s", "tcp_keepalive_interval_s", "tcp_keepalive_count"]
)
def test_keepalive_settings_below_one_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TransportSettings(**{name: 0})
