"""Routing ids: one per connecting socket, naming the node that opened it.

Invariant: no two of our sockets present the same routing id to a ROUTER: not two sockets
of one process (a seed connection beside the member connection to the same node), not a
restarted process and its previous life. A ROUTER then never holds two connections under
one id, so it never has to hand one's pipe to the other (``ZMQ_ROUTER_HANDOVER``), which
is what left a live connection stalled and made libzmq abort (``transport.iothread``).

Layout: the node's identity, a NUL byte, then ``TAG_HEX`` lowercase hex digits drawn at
random for each socket. A routing id without that tail (a raw ZeroMQ client's, or one
libzmq generated) names itself.
"""

from __future__ import annotations

import secrets

TAG_HEX = 16
"""Random hex digits per socket: 64 bits, so two sockets never draw the same tag."""

_SEPARATOR = 0
_HEX_DIGITS = frozenset(b"0123456789abcdef")
_SUFFIX = 1 + TAG_HEX

MAX_IDENTITY_BYTES = 255 - _SUFFIX
"""libzmq takes routing ids of at most 255 bytes; the tail takes the rest."""


def for_connection(identity: bytes) -> bytes:
    """A fresh routing id for one socket of the node ``identity``."""
    return identity + bytes([_SEPARATOR]) + secrets.token_hex(TAG_HEX // 2).encode("ascii")


def node_of(routing_id: bytes) -> bytes:
    """The identity a routing id names: ``for_connection``'s argument, or the id itself."""
    head, tail = routing_id[:-_SUFFIX], routing_id[-_SUFFIX:]
    if head and tail[0] == _SEPARATOR and _HEX_DIGITS.issuperset(tail[1:]):
        return head
    return routing_id
