"""Bounded waits and wiring for the transport tests (real sockets on loopback).

Imported by name (``from transport_loopback import ...``): a module name no other test
directory uses, unlike ``conftest``.

Every wait polls a condition with a deadline and fails the test with a message when the
deadline passes, so a broken transport shows up as a failure, never as a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import zmq

from transport import Delivery, FrameKind, Transport

EPHEMERAL = "tcp://127.0.0.1:*"
WAIT_S = 5.0
Raw = Callable[[int], zmq.Socket[bytes]]


class Cut:
    """A ``TransportFaults`` that loses nothing and cuts off the peers in ``peers``
    (changed by the test thread while the I/O thread reads it: a set's ``in`` and
    ``add`` are atomic in CPython)."""

    def __init__(self) -> None:
        self.peers: set[bytes] = set()

    def drop_outgoing(self, kind: FrameKind) -> bool:
        return False

    def blocked_peers(self) -> set[bytes]:
        return self.peers


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    """Poll ``predicate`` every few ms; fail the test if it is not true within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {what or predicate}")
        time.sleep(0.005)


def recv_matching(
    transport: Transport,
    predicate: Callable[[Delivery], bool],
    timeout: float = WAIT_S,
    *,
    between: Callable[[], None] | None = None,
    seen: list[Delivery] | None = None,
) -> Delivery:
    """Receive until a delivery satisfies ``predicate``; ``between`` runs before each try
    (to re-publish while a SUB is still joining). Every delivery is appended to ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if between is not None:
            between()
        delivery = transport.recv(timeout=0.02)
        if delivery is None:
            continue
        if seen is not None:
            seen.append(delivery)
        if predicate(delivery):
            return delivery
    pytest.fail(f"no matching delivery within {timeout} s")


def drain(transport: Transport, quiet: float = 0.2) -> list[Delivery]:
    """Everything that arrives until nothing has for ``quiet`` seconds."""
    got = []
    while (delivery := transport.recv(timeout=quiet)) is not None:
        got.append(delivery)
    return got


def connect(a: Transport, b: Transport, *, key: bytes | None = None, pub: bool = True) -> None:
    """``a`` opens a DEALER to ``b``'s ROUTER and (with ``pub``) a SUB to ``b``'s PUB."""
    assert b.bound_router is not None
    a.connect_peer(b.identity, b.bound_router, b.bound_pub if pub else None, key)


def endpoint(bound: str | None) -> str:
    """A bound endpoint that must exist (fails the test, rather than connect to "None")."""
    assert bound is not None
    return bound
