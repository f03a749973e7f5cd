"""Express topics: publications that reach their consumer apart from every other delivery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from transport_loopback import EPHEMERAL, WAIT_S, connect, wait_until

from transport import Delivery, Transport, TransportError, TransportSettings

pytestmark = pytest.mark.timeout(30)

BEAT = b"\x00heartbeat\x00"
Make = Callable[..., Transport]


@pytest.fixture
def receiver() -> Iterator[Transport]:
    # A small event pipe, never read below: it fills, as it does behind a busy consumer.
    t = Transport(
        b"b",
        router_bind=EPHEMERAL,
        pub_bind=EPHEMERAL,
        settings=TransportSettings(rcvhwm=16),
        express_topics=frozenset({BEAT}),
    )
    t.start()
    yield t
    t.close()


def test_an_express_topic_arrives_while_the_event_pipe_is_full(
    make_transport: Make, receiver: Transport
) -> None:
    sender = make_transport(b"a")
    receiver.subscribe(b"")
    connect(receiver, sender)

    def flooded() -> bool:
        for _ in range(100):
            sender.publish(b"data\x00", b"x" * 100)
        return receiver.stats()["events_dropped"] > 0

    wait_until(flooded, what="the event pipe overflows")
    deadline = time.monotonic() + WAIT_S
    got: list[Delivery] = []
    while not got and time.monotonic() < deadline:
        sender.publish(BEAT, b"alive")
        sender.publish(b"data\x00", b"x" * 100)
        delivery = receiver.recv_express(0.02)
        if delivery is not None:
            got.append(delivery)
    assert got == [Delivery("publish", b"a", BEAT, b"alive", None)]
    # Nothing else ever takes the express pipe; the heartbeats never take the event pipe.
    while (d := receiver.recv_express(0.05)) is not None:
        assert d.topic == BEAT
    while (d := receiver.recv(0.05)) is not None:
        assert d.topic != BEAT


def test_recv_express_needs_express_topics(make_transport: Make) -> None:
    plain = make_transport(b"p")
    with pytest.raises(TransportError, match="express_topics"):
        plain.recv_express(0)
