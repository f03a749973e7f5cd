"""What the membership protocol asks of its runtime: the commands it returns.

The protocol is sans-I/O: each input (a message, a tick) returns a list of these, and
the runtime (:mod:`crdtstore.overlay_liveness`, or the simulator) carries them out in
order. Invariant: a command names a peer by its :class:`Contact` (connect if need be) or
by the node id of the connection a message just came on (answer on it), never by an
address the runtime would have to look up.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.wire import Contact, Status

SEED_PREFIX = "\x00seed:"
"""Node id of a contact known only by address (a seed), until it answers."""

TO_STATUS = {
    Status.ALIVE: MemberStatus.ALIVE,
    Status.SUSPECT: MemberStatus.SUSPECT,
    Status.DEAD: MemberStatus.DEAD,
    Status.LEFT: MemberStatus.LEFT,
}


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``to``: a contact (connect to it if need be) or, as a string, the
    node id of a peer that just sent this node a message (answer on its connection)."""

    to: Contact | str
    msg: object


@dataclass(frozen=True, slots=True)
class NeighbourUp:
    contact: Contact


@dataclass(frozen=True, slots=True)
class NeighbourDown:
    node_id: str


@dataclass(frozen=True, slots=True)
class ClockReading:
    """``node_id``'s clock read ``clock_ms`` at some moment between ``sent_ms`` and
    ``received_ms`` of this node's clock (a round trip), or, with ``sent_ms`` None, at
    some moment before ``received_ms`` (one way)."""

    node_id: str
    clock_ms: int
    sent_ms: int | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class Refuted:
    """This node raised its incarnation (its record should follow)."""

    incarnation: int


Command = Send | NeighbourUp | NeighbourDown | Refuted | StatusChange | ClockReading
