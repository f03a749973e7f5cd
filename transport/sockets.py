"""How the transport's network sockets are configured and watched: the options every
TCP-facing socket gets, and the monitors that report refused handshakes.

Invariants: every network socket is configured by :func:`configure_network_socket`, from a
``TransportSettings`` and nothing else; no socket sets ZMTP heartbeats or
ROUTER_HANDOVER (why below); each monitor has an inproc endpoint no other monitor of
the process has used. Only the I/O thread (:mod:`transport.iothread`) calls these, on
sockets it owns.

No ZMTP heartbeats, no ROUTER_HANDOVER (issue 18). libzmq 4.3 aborts the process with
``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)`` when the heartbeat timer
fires on a connection that has stopped reading and then seen its socket hang up: the timer
(like the PONG that answers a PING) calls the engine's ``out_event`` without the check that
every other caller makes (libzmq issues #4364 and #4767, unfixed in 4.3.5 and on master). A
connection stops reading when its socket will not take the message it has decoded. Ours
did so when ROUTER_HANDOVER gave its routing id to a newer connection: a node whose seed
came up after it reached that seed twice under one id, its member connection (opened when
the seed greeted it) and then its seed connection (still retrying), so the older, live one
lost its pipe at the seed and stalled at its next message. When that node died, or closed
the connection, the seed's next PING drew a reset and the PING after it aborted the seed.
So:

- every DEALER has a routing id of its own (``routing_id.for_connection``): a ROUTER never
  holds two connections under one id, handover has nothing to do and is left off, and no
  connection of ours is ever silently stalled (without heartbeats it would stay so);
- no socket sets the heartbeat options, so no timer writes to a connection and no PING of
  ours asks the other end to write a PONG: the kernel's TCP keepalive and TCP_USER_TIMEOUT
  close dead connections (``TransportSettings.tcp_*``), and the membership detector's own
  heartbeats tell who is dead.

Only a foreign client that sends PINGs and outruns our receive high-water mark could still
bring an engine to that ``out_event``; no crdtstore node does either.

Refused handshakes. libzmq does not reconnect a client whose handshake the server refused
(a key not yet in the peer's allow-list, a CURVE/plain mismatch); it gives up for good.
Keys are added at run time (``reload_keys``), so a monitor on each DEALER and SUB notices
the refusal and the peer's sockets are re-created ``reconnect_ivl_max_ms`` later.
"""

from __future__ import annotations

import itertools
import struct

import zmq

from transport.settings import TransportSettings

Socket = zmq.Socket[bytes]

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

MONITORED_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


_monitor_ids = itertools.count()


_MONITOR_EVENT = struct.Struct("=HI")  # libzmq's monitor frame: event id, value (host order)


def recv_monitor_event(monitor: Socket) -> int:
    """The id of the next event on a socket monitor (``zmq.Again`` if none is queued), or
    0 for a message not of libzmq's shape. (pyzmq's ``recv_monitor_message`` does this
    too, but its module imports asyncio, a large share of a node's start-up imports.)"""
    frames = monitor.recv_multipart(zmq.NOBLOCK)
    if len(frames) != 2 or len(frames[0]) != _MONITOR_EVENT.size:
        return 0
    return int(_MONITOR_EVENT.unpack(frames[0])[0])


def monitor_socket(sock: Socket, events: int) -> Socket:
    """``sock.get_monitor_socket(events)`` on an endpoint of its own. pyzmq's default
    endpoint is named after the socket's file descriptor, which a socket opened right
    after another closed reuses while libzmq may still hold the old monitor's endpoint:
    re-addressing a peer then failed with "Address already in use" (seen under load)."""
    return sock.get_monitor_socket(events, addr=f"inproc://transport-monitor-{next(_monitor_ids)}")


def configure_network_socket(sock: Socket, settings: TransportSettings) -> None:
    """Options every TCP-facing socket gets, whatever its type."""
    sock.setsockopt(zmq.LINGER, settings.linger_ms)
    sock.setsockopt(zmq.SNDHWM, settings.sndhwm)
    sock.setsockopt(zmq.RCVHWM, settings.rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
    # Dead connections are the kernel's to find: ZMTP heartbeats stay off (module docstring).
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, settings.tcp_keepalive_idle_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, settings.tcp_keepalive_interval_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, settings.tcp_keepalive_count)
    sock.setsockopt(zmq.TCP_MAXRT, settings.tcp_max_retransmit_ms)
    sock.setsockopt(zmq.RECONNECT_IVL, settings.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, settings.reconnect_ivl_max_ms)
