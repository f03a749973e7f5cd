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
    run: tuple[int, int] | None = None
    """For this node's own batches: the seqs ``first..last`` of the flush ``data`` is
    (one frame) of; what a relay announces (see :mod:`crdtstore.sync.relaying`)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to one peer."""

    peer: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PublishTopic:
    """Publish ``data`` on ``topic`` as spelt (a relay topic, see
    :mod:`crdtstore.sync.relay_topics`, or a namespace's own topic)."""

    topic: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to these topic prefixes on ``peer``'s connection alone."""

    peer: str
    topics: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    peer: str
    topics: tuple[bytes, ...]


Frame = Publish | PublishTopic | Send
"""What carries bytes to the network."""

Outgoing = Publish | PublishTopic | Send | Subscribe | Unsubscribe
