"""Wire format of the inproc PAIR pipes between application threads and the I/O thread.

Commands (application -> I/O thread) are multipart messages ``[op, *args]``; events (I/O
thread -> application) are ``[kind, *fields]``. Both ends run in this process and this
module is their only definition, so neither side validates what the other wrote beyond
what this module decodes.

Optional values travel as an empty frame: no address, key or topic the transport accepts
is empty where None is meaningful (checked in ``Transport.connect_peer``).
"""

from __future__ import annotations

from transport.delivery import Delivery

# Commands
PUBLISH = b"P"  # [topic, payload]
SEND = b"S"  # [peer, payload]
SUBSCRIBE = b"+"  # [topic]
UNSUBSCRIBE = b"-"  # [topic]
SUBSCRIBE_PEER = b"}"  # [peer, *topics]
UNSUBSCRIBE_PEER = b"{"  # [peer, *topics]
CONNECT = b"C"  # [peer, router_addr, pub_addr or b"", peer_public_key or b""]
DISCONNECT = b"D"  # [peer]
WAKE = b"W"  # []: ask for a WOKEN event so a blocked recv returns
STOP = b"Q"  # []

# Events
EV_PUBLISH = b"p"  # [topic, payload, curve_user or b"", peer whose PUB sent it]
EV_DIRECT = b"d"  # [peer, payload, curve_user or b""]
EV_WOKEN = b"w"  # []
EV_STOPPED = b"q"  # []: the I/O thread is exiting; nothing follows


def optional(value: bytes | None) -> bytes:
    return b"" if value is None else value


def from_optional(frame: bytes) -> bytes | None:
    return frame or None


def decode_delivery(frames: list[bytes]) -> Delivery | None:
    """The delivery an event carries; None for control events (woken, stopped)."""
    kind = frames[0]
    if kind == EV_PUBLISH:
        topic, payload, user, peer = frames[1:]
        return Delivery("publish", peer, topic, payload, user.decode("ascii") or None)
    if kind == EV_DIRECT:
        peer, payload, user = frames[1:]
        return Delivery("direct", peer, None, payload, user.decode("ascii") or None)
    return None
