"""What the sync engine asks its caller to send: the only output of the protocol.

Invariant: every part of the engine expresses its effect on the network as these values
and nothing else; the caller owns the sockets (ZeroMQ in production, the simulator's
queue in tests) and turns each into a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGEST_TOPIC = "\x00digest"
"""The reserved topic digests are published on (no namespace may start with NUL)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``data`` to every subscriber of ``topic`` (a namespace or DIGEST_TOPIC)."""

    topic: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to one peer."""

    peer: str
    data: bytes


Outgoing = Publish | Send
