"""What the application receives from the transport."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Delivery:
    """One message from the network, already checked for shape and size.

    The payload is opaque bytes from an untrusted sender: the transport checked only the
    frame count and the size limit. ``peer`` is a *claimed* node id (a ZeroMQ routing
    identity any client may choose); with CURVE on, ``curve_user`` is the authenticated key.
    """

    kind: Literal["publish", "direct"]
    peer: bytes | None
    """"direct": the sender's node id (the one its DEALER's routing id names, see
    ``transport.routing_id``, or the name we gave ``connect_peer`` when the reply came back
    on our DEALER). "publish": the peer whose PUB we received it from (the name we gave
    ``connect_peer`` for that SUB)."""

    topic: bytes | None
    """"publish": the topic frame. None otherwise."""

    payload: bytes

    curve_user: str | None
    """With CURVE on, the z85 public key of the sender: the ZAP ``User-Id`` of a client
    that reached our ROUTER, or the server key we pinned for a peer we connected to (CURVE
    proves the server holds its secret). None with CURVE off."""
