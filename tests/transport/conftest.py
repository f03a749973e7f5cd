"""Fixtures of the transport tests: started transports, raw sockets, CURVE keys.

Every fixture closes what it made, so a failing test leaves no thread or port behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from transport_loopback import EPHEMERAL, Raw

from transport import (
    CurveKeys,
    Transport,
    TransportFaults,
    TransportSettings,
    generate_keypair,
    load_keys,
)


@pytest.fixture
def make_transport() -> Iterator[Callable[..., Transport]]:
    """Factory of started transports bound to ephemeral loopback ports; all closed at the end."""
    made: list[Transport] = []

    def make(
        identity: bytes,
        *,
        settings: TransportSettings | None = None,
        curve: CurveKeys | None = None,
        router: str | None = EPHEMERAL,
        pub: str | None = EPHEMERAL,
        faults: TransportFaults | None = None,
    ) -> Transport:
        transport = Transport(
            identity,
            router_bind=router,
            pub_bind=pub,
            settings=settings or TransportSettings(),
            curve=curve,
            faults=faults,
        )
        made.append(transport)
        transport.start()
        return transport

    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def curve_keys(tmp_path: Path) -> Callable[[str, bool], CurveKeys]:
    """``curve_keys(name, allowed)``: a node's keys; ``allowed`` puts its public key in the
    shared allow-list directory that every node built here trusts."""
    allowed_dir = tmp_path / "allowed"
    secrets_dir = tmp_path / "secrets"
    allowed_dir.mkdir()
    secrets_dir.mkdir()

    def make(name: str, allowed: bool = True) -> CurveKeys:
        public_file, secret_file = generate_keypair(secrets_dir, name)
        if allowed:
            (allowed_dir / f"{name}.key").write_bytes(Path(public_file).read_bytes())
        return load_keys(secret_file, allowed_dir)

    return make


@pytest.fixture
def raw() -> Iterator[Raw]:
    """Factory of plain ZeroMQ sockets (no transport), closed at the end."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks: list[zmq.Socket[bytes]] = []

    def make(socket_type: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = ctx.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        socks.append(sock)
        return sock

    yield make
    for sock in socks:
        sock.close(linger=0)
    ctx.term()
