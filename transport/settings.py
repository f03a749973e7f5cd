"""Every tunable of the transport, in one frozen dataclass with documented defaults.

Invariant: no ZeroMQ option value appears as a literal elsewhere in ``transport/``; sockets
are configured only from a ``TransportSettings`` (see ``sockets.configure_network_socket``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransportSettings:
    """Socket limits and timers of one ``Transport`` (faults for tests: ``transport.faults``)."""

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

    tcp_keepalive_idle_s: int = 1
    """Seconds a TCP connection may stay idle before the kernel starts probing it. TCP
    keepalive, not ZMTP heartbeats, finds dead connections: libzmq's heartbeat timer can
    abort the process (``transport.iothread`` explains how). A connection found dead is
    closed and, on the connecting side, re-established."""

    tcp_keepalive_interval_s: int = 1
    """Seconds between two unanswered keepalive probes."""

    tcp_keepalive_count: int = 5
    """Unanswered keepalive probes after which the kernel closes the connection."""

    tcp_max_retransmit_ms: int = 5000
    """A connection whose sent data stays unacknowledged this long is closed (``zmq.TCP_MAXRT``,
    TCP_USER_TIMEOUT on Linux): keepalive probes only idle connections. 0 leaves the
    kernel's default (many minutes)."""

    reconnect_ivl_ms: int = 100
    """First delay before a DEALER or SUB reconnects to a peer that went away."""

    reconnect_ivl_max_ms: int = 2000
    """Ceiling of the exponential reconnect back-off."""

    linger_ms: int = 0
    """``zmq.LINGER`` of every socket. 0 so that ``close`` never waits on a dead peer."""

    def __post_init__(self) -> None:
        for name in (
            "sndhwm",
            "rcvhwm",
            "max_message_bytes",
            "tcp_max_retransmit_ms",
            "reconnect_ivl_ms",
            "reconnect_ivl_max_ms",
            "linger_ms",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        # The kernel refuses 0 for these, and libzmq then drops every connection it opens.
        for name in ("tcp_keepalive_idle_s", "tcp_keepalive_interval_s", "tcp_keepalive_count"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
