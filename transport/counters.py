"""Counters of what the transport did and dropped, shared by the I/O and application threads.

Invariant: every frame the transport refuses (malformed, oversized, partitioned, over a
high-water mark, or one whose handling raised) increments exactly one counter, so a drop is
never silent. The names are fixed up front; ``snapshot`` always reports all of them.
"""

from __future__ import annotations

import threading

COUNTER_NAMES = (
    "published",  # PUB messages handed to libzmq
    "publish_dropped",  # lost at the fault seam (transport.faults), or no PUB socket bound
    "sent",  # direct messages handed to libzmq (DEALER or ROUTER)
    "send_dropped",  # no route to the peer, EAGAIN at the high-water mark, or the fault seam
    "partition_dropped",  # frames to or from a peer the fault seam blocks (either way)
    "command_dropped",  # publish/send refused because the command pipe was full
    "received_publish",  # publications accepted from the network for the application
    "received_direct",  # direct messages accepted from the network for the application
    "dropped_malformed",  # wrong frame count on ROUTER, DEALER or SUB
    "dropped_oversized",  # multipart message whose frames sum beyond max_message_bytes
    "dropped_errors",  # handling a frame raised; logged, loop continued
    "events_dropped",  # accepted, then lost: the application did not recv fast enough
    "handshake_failed",  # ZMTP handshake refused on ROUTER/PUB (e.g. no CURVE / mechanism)
    "auth_failed",  # ZAP refused a client key on ROUTER/PUB
    "peer_refused",  # a peer's server refused our DEALER/SUB handshake; retried later
    "disconnects",  # connections to ROUTER/PUB closed (incl. libzmq cutting oversized frames)
)


class Counters:
    """A fixed set of integer counters behind one lock (increments come from two threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
