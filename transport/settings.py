"""Every tunable of the transport, in one frozen dataclass with documented defaults.

Invariant: no ZeroMQ option value appears as a literal elsewhere in ``transport/``; sockets
are configured only from a ``TransportSettings`` (see ``iothread.configure_network_socket``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransportSettings:
    """Socket limits, timers and test hooks of one ``Transport``."""

    sndhwm: int = 10_000
    """Send high-water mark (messages) of every network socket. Beyond it PUB drops and
    DEALER/ROUTER sends fail with EAGAIN, which the transport counts as ``send_dropped``."""

    rcvhwm: int = 10_000
    """Receive high-water mark (messages) of every network socket, and of the event pipe
    that carries deliveries to the application."""

    max_message_bytes: int = 64 * 1024 * 1024
    """``zmq.MAXMSGSIZE`` of every socket that receives from the network: libzmq cuts the
    connection of a peer that sends a larger frame. Also checked against the sum of a
    multipart message's frames, so an oversized message is never delivered."""

    heartbeat_ivl_ms: int = 1000
    """ZMTP heartbeat (PING) interval on every TCP connection."""

    heartbeat_timeout_ms: int = 5000
    """A connection with no traffic for this long after a PING is closed (and, on the
    connecting side, re-established). Also sent to the remote end as the heartbeat TTL."""

    reconnect_ivl_ms: int = 100
    """First delay before a DEALER or SUB reconnects to a peer that went away."""

    reconnect_ivl_max_ms: int = 2000
    """Ceiling of the exponential reconnect back-off."""

    linger_ms: int = 0
    """``zmq.LINGER`` of every socket. 0 so that ``close`` never waits on a dead peer."""

    drop_publish_fraction: float = 0.0
    """TEST HOOK: drop this fraction of outgoing PUB messages, chosen by a ``random.Random``
    seeded with ``drop_seed``, to exercise repair of lost deltas. Counted as
    ``publish_dropped``. Must be in [0, 1]."""

    drop_seed: int = 0
    """Seed of the rng behind ``drop_publish_fraction``, so a lossy run reproduces."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_publish_fraction <= 1.0:
            raise ValueError(
                f"drop_publish_fraction must be in [0, 1], got {self.drop_publish_fraction!r}"
            )
        for name in (
            "sndhwm",
            "rcvhwm",
            "max_message_bytes",
            "heartbeat_ivl_ms",
            "heartbeat_timeout_ms",
            "reconnect_ivl_ms",
            "reconnect_ivl_max_ms",
            "linger_ms",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
