"""Start, bind errors, close: idempotent, bounded, and safe with peers gone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import zmq
from transport_loopback import EPHEMERAL, connect, recv_matching

from transport import Transport, TransportError

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]


def test_ephemeral_ports_resolve_to_real_endpoints(make_transport: Make) -> None:
    a = make_transport(b"a")
    for endpoint in (a.bound_router, a.bound_pub):
        assert endpoint is not None
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert not endpoint.endswith(":*")
    assert a.bound_router != a.bound_pub


def test_bind_on_address_in_use_raises_transport_error(make_transport: Make) -> None:
    a = make_transport(b"a")
    b = Transport(b"b", router_bind=a.bound_router, pub_bind=None)
    with pytest.raises(TransportError, match="ROUTER") as info:
        b.start()
    assert str(a.bound_router) in str(info.value)
    b.close()  # still safe after a failed start


def test_bind_failure_of_pub_names_pub(make_transport: Make) -> None:
    a = make_transport(b"a")
    with pytest.raises(TransportError, match="PUB"):
        Transport(b"b", router_bind=EPHEMERAL, pub_bind=a.bound_pub).start()


def test_close_is_idempotent_and_fast_with_peers_gone_and_messages_pending(
    make_transport: Make,
) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(a, b)
    connect(b, a)
    b.close()
    for i in range(2000):  # queued on a DEALER whose peer is gone, and on the PUB
        a.send(b"b", b"%d" % i)
        a.publish(b"t", b"%d" % i)
    started = time.monotonic()
    a.close()
    a.close()
    assert time.monotonic() - started < 2.0


def test_close_with_undelivered_events_and_blocked_consumer(make_transport: Make) -> None:
    a, b = make_transport(b"a"), make_transport(b"b")
    connect(a, b)
    for i in range(100):
        a.send(b"b", b"%d" % i)
    recv_matching(b, lambda d: d.payload == b"0")  # the rest wait unread in b's event pipe

    consumer = make_transport(b"c")
    returned = threading.Event()

    def consume() -> None:
        consumer.recv(timeout=None)
        returned.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    started = time.monotonic()
    consumer.close()
    b.close()
    thread.join(timeout=2.0)
    assert returned.is_set()
    assert time.monotonic() - started < 2.0


def test_wake_returns_a_blocked_recv(make_transport: Make) -> None:
    a = make_transport(b"a")
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(a.recv(timeout=None)), daemon=True)
    thread.start()
    a.wake()
    thread.join(timeout=2.0)
    assert result == [None]


def test_context_manager_starts_and_closes() -> None:
    with Transport(b"a", router_bind=EPHEMERAL, pub_bind=EPHEMERAL) as a:
        assert a.bound_router is not None
        endpoint = a.bound_router
    assert a.recv(timeout=0) is None
    with pytest.raises(TransportError, match="closed"):
        a.subscribe(b"t")
    # The port is free again: close released the ROUTER.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        sock.bind(endpoint)
    finally:
        sock.close(linger=0)
        ctx.term()


def test_calls_before_start_raise(make_transport: Make) -> None:
    t = Transport(b"a", router_bind=None, pub_bind=None)
    with pytest.raises(TransportError, match="not started"):
        t.subscribe(b"x")
    with pytest.raises(TransportError, match="not started"):
        t.recv(timeout=0)
    t.close()


def test_reserved_identity_is_refused() -> None:
    with pytest.raises(TransportError, match="NUL"):
        Transport(b"\x00abc", router_bind=None, pub_bind=None)
