"""Updates waiting to be piggybacked, freshest first (SWIM's infection-style dissemination).

Each update rides on a bounded number of outgoing probes and acks (``lambda * log N``)
and then stops: the flood along the overlay already carried it once, so these copies
only repair losses. The queue is kept in buckets by transmissions left, so choosing
the ``k`` freshest costs O(k + buckets), not a sort of every queued update on every
ping: in a start storm of 1,000 nodes that sort was a large share of the run.

Only one update per member is queued (a newer one replaces it, restarting its count),
so the queue never outgrows the member table.
"""

from __future__ import annotations

from crdtstore.membership.wire import Update


class RetransmitQueue:
    def __init__(self) -> None:
        self._by_left: dict[int, dict[str, Update]] = {}
        self._left: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._left)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._left

    def put(self, update: Update, transmissions: int) -> None:
        self.discard(update.node_id)
        self._by_left.setdefault(transmissions, {})[update.node_id] = update
        self._left[update.node_id] = transmissions

    def discard(self, node_id: str) -> None:
        left = self._left.pop(node_id, None)
        if left is not None:
            bucket = self._by_left[left]
            del bucket[node_id]
            if not bucket:
                del self._by_left[left]

    def take(self, k: int) -> tuple[Update, ...]:
        """Up to ``k`` updates with the most transmissions left; each one counts one."""
        if not self._left or k <= 0:
            return ()
        chosen: list[tuple[int, Update]] = []
        for left in sorted(self._by_left, reverse=True):
            for update in self._by_left[left].values():
                chosen.append((left, update))
                if len(chosen) == k:
                    break
            if len(chosen) == k:
                break
        for left, update in chosen:
            self.discard(update.node_id)
            if left > 1:
                self._by_left.setdefault(left - 1, {})[update.node_id] = update
                self._left[update.node_id] = left - 1
        return tuple(update for _, update in chosen)
