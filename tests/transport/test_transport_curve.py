"""CurveZMQ: allowed keys talk; unknown keys and plain-text clients get nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from transport_loopback import Raw, drain, endpoint, recv_matching, wait_until

from transport import CurveKeys, Delivery, Transport, TransportError, TransportSettings

pytestmark = pytest.mark.timeout(20)

Make = Callable[..., Transport]
Keys = Callable[..., CurveKeys]


def connect_curve(a: Transport, b: Transport, b_keys: CurveKeys) -> None:
    assert b.bound_router is not None
    a.connect_peer(b.identity, b.bound_router, b.bound_pub, b_keys.public)


def test_allowed_keys_exchange_publications_and_direct_messages(
    make_transport: Make, curve_keys: Keys
) -> None:
    ka, kb = curve_keys("a"), curve_keys("b")
    a = make_transport(b"a", curve=ka)
    b = make_transport(b"b", curve=kb)
    a.subscribe(b"t")
    b.subscribe(b"t")
    connect_curve(a, b, kb)
    connect_curve(b, a, ka)

    got = recv_matching(
        b, lambda d: d.payload == b"from a", between=lambda: a.publish(b"t", b"from a")
    )
    # On the SUB side the authenticated sender is the PUB server key we pinned.
    assert got == Delivery("publish", b"a", b"t", b"from a", ka.public.decode())
    recv_matching(a, lambda d: d.payload == b"from b", between=lambda: b.publish(b"t", b"from b"))

    a.send(b"b", b"direct a->b")
    got = recv_matching(b, lambda d: d.payload == b"direct a->b")
    assert (got.kind, got.peer, got.curve_user) == ("direct", b"a", ka.public.decode())

    # Reply over b's ROUTER to a's DEALER after b forgets its own DEALER to a.
    b.disconnect_peer(b"a")
    b.send(b"a", b"reply")
    got = recv_matching(a, lambda d: d.payload == b"reply")
    assert (got.peer, got.curve_user) == (b"b", kb.public.decode())
    assert a.stats()["auth_failed"] == 0 and b.stats()["auth_failed"] == 0


def test_unknown_key_gets_no_publication_and_cannot_send(
    make_transport: Make, curve_keys: Keys
) -> None:
    ka, kb = curve_keys("a"), curve_keys("b")
    kc = curve_keys("intruder", allowed=False)
    a = make_transport(b"a", curve=ka)
    b = make_transport(b"b", curve=kb)
    c = make_transport(b"c", curve=kc)
    b.subscribe(b"")
    c.subscribe(b"")
    connect_curve(b, a, ka)
    connect_curve(c, a, ka)  # c knows a's public key, but a does not know c's
    for _ in range(5):
        c.send(b"a", b"intrusion")
    # Both of c's connections (DEALER and SUB) were refused by a's ZAP handler.
    wait_until(lambda: a.stats()["auth_failed"] >= 2, what="intruder refused")

    recv_matching(b, lambda d: d.payload == b"secret", between=lambda: a.publish(b"t", b"secret"))
    b.send(b"a", b"fence")
    recv_matching(a, lambda d: d.payload == b"fence")
    a.publish(b"t", b"last")
    recv_matching(b, lambda d: d.payload == b"last")

    assert drain(c, quiet=0.2) == []
    assert all(d.peer != b"c" for d in drain(a, quiet=0.2))
    assert c.stats()["received_publish"] == 0 and a.stats()["received_direct"] == 1


def test_plaintext_clients_get_nothing_from_curve_servers(
    make_transport: Make, curve_keys: Keys, raw: Raw
) -> None:
    ka, kb = curve_keys("a"), curve_keys("b")
    a = make_transport(b"a", curve=ka)
    b = make_transport(b"b", curve=kb)
    b.subscribe(b"")
    connect_curve(b, a, ka)

    sub = raw(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint(a.bound_pub))
    dealer = raw(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"plain")
    dealer.connect(endpoint(a.bound_router))
    dealer.send(b"plaintext")
    wait_until(lambda: a.stats()["handshake_failed"] >= 2, what="plain clients refused")

    recv_matching(b, lambda d: d.payload == b"x", between=lambda: a.publish(b"t", b"x"))
    b.send(b"a", b"fence")
    recv_matching(a, lambda d: d.payload == b"fence")
    assert sub.poll(100) == 0
    assert all(d.peer != b"plain" for d in drain(a, quiet=0.1))


def test_reload_keys_admits_a_newly_allowed_key(
    make_transport: Make, curve_keys: Keys, tmp_path: Path
) -> None:
    ka = curve_keys("a")
    kc = curve_keys("late", allowed=False)
    a = make_transport(b"a", curve=ka)
    c = make_transport(b"c", curve=kc, settings=TransportSettings(reconnect_ivl_max_ms=200))
    c.subscribe(b"")
    connect_curve(c, a, ka)
    wait_until(lambda: a.stats()["auth_failed"] >= 1, what="late refused")
    wait_until(lambda: c.stats()["peer_refused"] >= 1, what="c saw the refusal")

    (Path(ka.keys_dir) / "late.key").write_text(f'curve\n    public-key = "{kc.public.decode()}"\n')
    a.reload_keys()
    # libzmq gives up on a refused client; the transport re-creates c's sockets, and once
    # admitted, publications arrive.
    recv_matching(c, lambda d: d.payload == b"welcome", between=lambda: a.publish(b"t", b"welcome"))


def test_connect_peer_without_key_raises_when_curve_is_on(
    make_transport: Make, curve_keys: Keys
) -> None:
    a = make_transport(b"a", curve=curve_keys("a"))
    with pytest.raises(TransportError, match="public key"):
        a.connect_peer(b"b", "tcp://127.0.0.1:1", None)


def test_load_keys_errors_name_the_file(tmp_path: Path) -> None:
    from transport import generate_keypair, load_keys

    public_file, secret_file = generate_keypair(tmp_path, "n")
    with pytest.raises(TransportError, match="no secret key"):
        load_keys(public_file, tmp_path)
    with pytest.raises(TransportError, match="missing"):
        load_keys(tmp_path / "missing.key_secret", tmp_path)
    with pytest.raises(TransportError, match="not a directory"):
        load_keys(secret_file, tmp_path / "nope")
    keys = load_keys(secret_file, tmp_path)
    assert len(keys.public) == 40 and len(keys.secret) == 40
    assert "secret=<hidden>" in repr(keys)
