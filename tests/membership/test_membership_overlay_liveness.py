"""The overlay protocol's thread (``crdtstore.overlay_liveness``) driven message by message,
with a fake clock and transport: which connections it opens for what the protocol decides.
"""

from __future__ import annotations

import random

from crdtstore.membership import MemberStatus
from crdtstore.membership.protocol import NeighbourUp, ProtocolSettings
from crdtstore.membership.records import MemberRecord
from crdtstore.membership.wire import Contact, Gossip, Join, Status, Update
from crdtstore.overlay_liveness import CHANNEL_OVERLAY, OverlayLiveness
from crdtstore.sync.messages import encode_message
from transport import Delivery

ROUTER_B = "tcp://127.0.0.1:7102"


class FakeTransport:
    def __init__(self) -> None:
        self.connected: dict[bytes, tuple[str, str | None]] = {}
        self.sent: list[tuple[bytes, bytes]] = []

    def send(self, peer: bytes, payload: bytes) -> None:
        self.sent.append((peer, payload))

    def connect_peer(
        self,
        peer: bytes,
        router_addr: str,
        pub_addr: str | None,
        peer_public_key: bytes | None = None,
    ) -> None:
        self.connected[peer] = (router_addr, pub_addr)

    def disconnect_peer(self, peer: bytes) -> None:
        self.connected.pop(peer, None)

    def io_stall_ms(self) -> int:
        return 0

    def publish(self, topic: bytes, payload: bytes) -> None:
        raise AssertionError("the overlay mode publishes no heartbeat")

    def recv_express(self, timeout: float | None) -> Delivery | None:
        return None


class Unstarted(OverlayLiveness):
    """Its threads are not started: the test hands it each message and tick itself."""

    def start(self, incarnation: int, router: str | None) -> None:
        self._incarnation = incarnation


def make(transport: FakeTransport) -> Unstarted:
    live = Unstarted(
        node_id="a",
        transport=transport,
        settings=ProtocolSettings(),
        seeds=[],
        view_interval_ms=1000,
        view=None,
        clock=lambda: 0,
        rng=random.Random(1),
    )
    me = MemberRecord("a", "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7201", None, None, 1, 0)
    live.start_overlay(me)
    return live


def joins(node_id: str, pub: str, incarnation: int) -> Delivery:
    msg = Join(Contact(node_id, ROUTER_B, pub, None, incarnation))
    return Delivery("direct", node_id.encode(), None, CHANNEL_OVERLAY + encode_message(msg), None)


def test_a_neighbour_restarted_before_it_was_dead_is_subscribed_at_its_new_pub() -> None:
    transport = FakeTransport()
    live = make(transport)
    live.on_delivery(joins("b", "tcp://127.0.0.1:7202", 1), 10)
    assert transport.connected[b"b"] == (ROUTER_B, "tcp://127.0.0.1:7202")
    assert [type(e) for e in live.take_neighbour_events()] == [NeighbourUp]

    # b restarted (a new PUB port, a higher incarnation) and joins again through us, while
    # we still hold it as a neighbour: the set of neighbours does not change.
    live.on_delivery(joins("b", "tcp://127.0.0.1:7299", 2), 20)
    assert live.neighbours() == ["b"]
    assert transport.connected[b"b"] == (ROUTER_B, "tcp://127.0.0.1:7299")
    events = live.take_neighbour_events()
    assert [(type(e), getattr(e, "contact", None)) for e in events] == [
        (NeighbourUp, Contact("b", ROUTER_B, "tcp://127.0.0.1:7299", None, 2))
    ]
    assert live.stats["neighbours_readdressed"] == 1


def test_a_topic_link_back_as_a_new_life_is_subscribed_at_its_new_pub() -> None:
    transport = FakeTransport()
    live = make(transport)
    old = MemberRecord("c", "tcp://127.0.0.1:7103", "tcp://127.0.0.1:7203", ("t",), None, 1, 0)
    live.pin(old)
    assert transport.connected[b"c"] == ("tcp://127.0.0.1:7103", "tcp://127.0.0.1:7203")
    new = MemberRecord("c", "tcp://127.0.0.1:7103", "tcp://127.0.0.1:7299", ("t",), None, 2, 5)
    live.learn(new, 30)
    assert transport.connected[b"c"] == ("tcp://127.0.0.1:7103", "tcp://127.0.0.1:7299")
    assert [type(e) for e in live.take_neighbour_events()] == [NeighbourUp]


def test_a_neighbour_whose_new_life_joined_elsewhere_is_followed_from_its_record() -> None:
    transport = FakeTransport()
    live = make(transport)
    live.on_delivery(joins("b", "tcp://127.0.0.1:7202", 1), 10)
    live.take_neighbour_events()
    # b restarted and joined through another member; its new record reaches us.
    new = MemberRecord("b", ROUTER_B, "tcp://127.0.0.1:7299", None, None, 2, 15)
    live.learn(new, 20)
    assert transport.connected[b"b"] == (ROUTER_B, "tcp://127.0.0.1:7299")
    assert [type(e) for e in live.take_neighbour_events()] == [NeighbourUp]


def gossip_that_a_left(incarnation: int) -> Delivery:
    me = Contact("a", "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7201", None, incarnation)
    msg = Gossip((Update(me, Status.LEFT),))
    return Delivery("direct", b"b", None, CHANNEL_OVERLAY + encode_message(msg), None)


def test_a_node_about_to_leave_does_not_refute_its_own_left_record() -> None:
    # Peers read this node's left record before its leave's gossip: what they say back is
    # this node's own word, not a claim to refute with a new incarnation.
    leaving = make(FakeTransport())
    leaving.prepare_leave()
    leaving.on_delivery(gossip_that_a_left(1), 10)
    assert leaving.take_refutation() is None

    staying = make(FakeTransport())  # the same claim about a node not leaving is refuted
    staying.on_delivery(gossip_that_a_left(1), 10)
    assert staying.take_refutation() == 2


def test_frames_from_strangers_cycling_ids_keep_nothing_per_id() -> None:
    transport = FakeTransport()
    live = make(transport)
    live.on_delivery(joins("b", "tcp://127.0.0.1:7202", 1), 10)
    victim = Contact("b", ROUTER_B, "tcp://127.0.0.1:7202", None, 1)
    frame = CHANNEL_OVERLAY + encode_message(Gossip((Update(victim, Status.DEAD),)))
    for i in range(200):
        live.on_delivery(Delivery("direct", f"x{i}".encode(), None, frame, None), 20 + i)
    assert all(live.last_heard_ms(f"x{i}") is None for i in range(200))
    assert live.last_heard_ms("b") == 10
    assert live.status("b") is MemberStatus.ALIVE
    assert live.protocol_stats()["updates_refused_stranger"] == 200
