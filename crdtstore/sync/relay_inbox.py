"""What the engine receives of the relay: relay topics judged, then relayed frames handled.

In the relay mode a neighbour relays every origin's batches, on topics naming it
(:mod:`~crdtstore.sync.relay_topics`). The trust rule (see :mod:`crdtstore.sync.relay`):
a relay topic must name the publisher whose connection brought the frame, and carry the
kind of message its kind says (batches on data topics, have notices on have topics).
Without the relay, nodes publish only their own batches, so a published batch of another
origin is forged. This part applies that rule to every published frame before dispatch
(``admit``), and handles what the relay's sub-protocol sends: relayed batches (tree or
flood form), have notices, prunes, grafts, and the replies to the relay's fetches, whose
batches are checked as a repair's (:class:`~crdtstore.sync.intake.BatchIntake`) and
relayed on. :class:`~crdtstore.sync.relaying.RelayLinks` owns the relay's state.

Invariants: a frame that breaks the trust rule is refused (counted) and reaches no part;
what is relayed on passed the intake's checks first; without the relay (``relaying`` is
None) every relay message is refused.
"""

from __future__ import annotations

from typing import Any

from crdtstore.errors import DecodeError
from crdtstore.sync.intake import BatchIntake
from crdtstore.sync.messages import DeltaBatch, Graft, Have, LogGap, Prune, RepairReply
from crdtstore.sync.outgoing import Outgoing
from crdtstore.sync.received import Received
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.relay_topics import DATA, parse_topic
from crdtstore.sync.relaying import RelayLinks

RELAY_KINDS = (b"d", b"h")
"""The first bytes of relay topics (:mod:`.relay_topics`); a namespace's own topic may
start with them too, and :func:`parse_topic` tells them apart."""


class RelayInbox:
    """The relay's received side, dispatched to by the engine."""

    def __init__(
        self, relaying: RelayLinks | None, intake: BatchIntake, reject: Rejections
    ) -> None:
        self._relaying = relaying
        self._intake = intake
        self._reject = reject

    def admit(self, msg: Any, frame: Received, topic: bytes | None) -> bool:
        """Whether a frame passes the trust rule (see the module); on a relay topic, the
        parsed topic is kept in ``frame.topic``."""
        now_ms, publisher = frame.now_ms, frame.publisher
        if self._relaying is not None and topic is not None and topic[:1] in RELAY_KINDS:
            try:
                frame.topic = parse_topic(topic)
            except DecodeError as exc:
                self._reject("relay_rejected_topic", now_ms, f"from {publisher!r}: {exc}")
                return False
            if frame.topic.publisher != publisher:
                # A topic naming another publisher than the connection's: the trust rule.
                self._reject(
                    "relay_rejected_publisher", now_ms, f"{topic[:60]!r} via {publisher!r}"
                )
                return False
            if isinstance(msg, DeltaBatch) != (frame.topic.kind == DATA):
                self._reject(
                    "relay_rejected_topic", now_ms, f"{type(msg).__name__} on {topic[:60]!r}"
                )
                return False
        elif isinstance(msg, Have):
            self._reject("rejected_invalid", now_ms, f"have notice off its topic via {publisher!r}")
            return False
        elif (
            self._relaying is None
            and publisher
            and isinstance(msg, DeltaBatch)
            and msg.origin != publisher
        ):
            self._reject("rejected_forged_origin", now_ms, f"{msg.origin} via {publisher!r}")
            return False
        return True

    def on_batch(self, msg: DeltaBatch, frame: Received) -> list[Outgoing]:
        relaying, now_ms = self._relaying, frame.now_ms
        if relaying is None or frame.publisher is None:
            self._intake.apply(msg, frame.data, now_ms)
            return []

        def accept(batch: DeltaBatch, data: bytes) -> bool:
            return self._intake.accept(batch, data, now_ms)

        if frame.topic is not None:
            return relaying.on_tree_batch(frame.topic, msg, frame.data, now_ms, accept)
        return relaying.on_flood_batch(frame.publisher, msg, frame.data, now_ms, accept)

    def on_have(self, msg: Have, frame: Received) -> list[Outgoing]:
        if self._relaying is None or frame.topic is None:
            self._reject("rejected_invalid", frame.now_ms, "a have notice off a relay topic")
            return []
        return self._relaying.on_have(frame.topic, msg, frame.now_ms)

    def on_prune(self, msg: Prune, frame: Received) -> list[Outgoing]:
        if self._relaying is None:
            self._reject("rejected_invalid", frame.now_ms, f"prune from {frame.peer!r}")
            return []
        return self._relaying.on_prune(frame.peer, msg)

    def on_graft(self, msg: Graft, frame: Received) -> list[Outgoing]:
        if self._relaying is None:
            self._reject("rejected_invalid", frame.now_ms, f"graft from {frame.peer!r}")
            return []
        return self._relaying.on_graft(frame.peer, msg)

    def is_fetch(self, msg: RepairReply | LogGap, peer: str) -> bool:
        """Whether ``msg`` answers a fetch of the relay's (not a digest's repair)."""
        return self._relaying is not None and self._relaying.fetched(msg.request, peer)

    def on_fetched(self, msg: RepairReply, frame: Received) -> list[Outgoing]:
        """The answer to a fetch of the relay's: its batches are checked as a repair's
        and relayed on (marked as repaired)."""
        assert self._relaying is not None  # is_fetch said so
        out: list[Outgoing] = []
        now_ms = frame.now_ms

        def accept(batch: DeltaBatch, data: bytes) -> bool:
            return self._intake.accept(batch, data, now_ms)

        for batch, data in self._intake.batches_of(msg, frame.peer, now_ms, "fetch"):
            out += self._relaying.on_fetched(frame.peer, batch, data, now_ms, accept)
        return out
