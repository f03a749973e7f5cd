"""One frame as the engine received it, handed to the part that owns its message type.

Invariant: built once per frame by the engine's router, before dispatch; the parts read
it, and only the router sets ``topic`` (after the relay topic's checks passed).
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtstore.sync.reconcile import Progress
from crdtstore.sync.relay_topics import Topic


@dataclass(slots=True)
class Received:
    """One frame as it came: from whom ("" if published), its bytes, when, the
    caller's progress hook for a long step it triggers, and for a published frame the
    publisher whose connection brought it and its relay topic (None if it has none)."""

    peer: str
    data: bytes
    now_ms: int
    progress: Progress | None
    publisher: str | None = None
    topic: Topic | None = None
