"""The fast path: a node publishes its own batches, once each, on their namespace's topic.

Invariants: only batches of this node's origin are published (nobody else may speak for
it); each own seq is published at most once per engine (a restarted engine starts from
what its log already holds, so it does not republish history: whatever it had not
published yet, peers repair from its digest); a batch trimmed from the log before it was
published is not published at all (peers get it by range reconciliation).

Joining the commits found at one flush into one frame is safe for causal delivery: every
dot their contexts name from another origin was applied here before the flush, so it
travelled in a frame published before this one. (A frame of *old* logged batches has no
such guarantee; repair replies join by the stricter rule of
:func:`crdtstore.sync.repair.coalesce_runs`.)
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from crdtstore.crdt import DotMap
from crdtstore.errors import DecodeError
from crdtstore.sync.messages import DeltaBatch, decode_message, encode_message
from crdtstore.sync.outgoing import Publish
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings


class Publisher:
    """Publishes the node's own logged batches beyond those it published already."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        settings: SyncSettings,
        stats: Counter[str],
        reject: Rejections,
        holds: Callable[[str], bool],
    ) -> None:
        self._replica = replica
        self._settings = settings
        self._stats = stats
        self._reject = reject
        self._holds = holds
        self._node_id = node_id
        self._published: dict[str, int] = {
            ns: replica.context(ns).max_seq(node_id) for ns in replica.namespaces()
        }

    def flush(self, now_ms: int) -> list[Publish]:
        """Frames of every own batch committed since the last flush, namespace by namespace."""
        out: list[Publish] = []
        node_id = self._node_id
        for ns in sorted(self._replica.namespaces()):
            if not self._holds(ns):
                continue
            top = self._replica.context(ns).max_seq(node_id)
            done = self._published.get(ns, 0)
            if top <= done:
                continue
            self._published[ns] = top
            logged = self._replica.log_batches(ns, node_id, done + 1, top)
            if logged is None:
                # Trimmed before it was published: peers repair it by range reconciliation.
                self._reject("publish_log_missing", now_ms, f"{ns}: own {done + 1}..{top}")
                continue
            frames = self._coalesce(ns, logged, now_ms) if self._settings.publish_flush else None
            for data in frames if frames is not None else logged:
                out.append(Publish(ns, data, (done + 1, top)))
                self._stats["batches_published"] += 1
        return out

    def _coalesce(self, ns: str, logged: Sequence[bytes], now_ms: int) -> list[bytes] | None:
        """One frame joining the flush's batches; None when they are not one contiguous
        run of this node's (or one is too large to be worth joining): sent as they are."""
        limit = self._settings.publish_coalesce_max_bytes
        if len(logged) < 2 or any(len(b) > limit for b in logged):
            return None
        batches = decode_logged(ns, logged, now_ms, self._reject)
        if batches is None:
            return None
        if any(b.origin != self._node_id for b in batches) or any(
            a.last + 1 != b.first for a, b in itertools.pairwise(batches)
        ):
            return None
        return [joined(ns, batches)]


def joined(ns: str, batches: Sequence[DeltaBatch]) -> bytes:
    """One encoded batch joining contiguous ``batches`` of one origin."""
    delta: DotMap[Any] = batches[0].delta
    for b in batches[1:]:
        delta = delta.join(b.delta)
    return encode_message(
        DeltaBatch(ns, batches[0].origin, batches[0].first, batches[-1].last, delta)
    )


def decode_logged(
    ns: str, logged: Sequence[bytes], now_ms: int, reject: Rejections
) -> list[DeltaBatch] | None:
    """The batches of a log read, or None (counted if undecodable) to send them as read."""
    try:
        batches = [decode_message(b) for b in logged]
    except DecodeError as exc:
        reject("corrupt_log", now_ms, f"{ns}: {exc}")
        return None
    if not all(isinstance(b, DeltaBatch) for b in batches):
        return None
    return batches
