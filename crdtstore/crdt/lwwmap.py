"""Last-writer-wins map: key -> value, concurrent writes resolved by (HLC, node id).

Each key holds the dots of the writes no later write has observed, each with its
``(timestamp, value)``; reading picks the greatest ``(timestamp, writer id)``. A put
replaces every dot it observed, so a key normally holds one dot, and holds several only
after concurrent writes, until the next write. A delete removes the dots it observed and
leaves no tombstone: a put concurrent with a delete survives it, as an add survives a
concurrent remove in the OR-Set (the semantics of Akka's and Riak's maps). Keeping the
concurrent dots, rather than only the winner, is what makes this a lattice: a later delete
of the winner must reveal the other concurrent write on every replica alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from crdtstore.crdt.dotmap import DotMap, Entry, Key, check_key
from crdtstore.crdt.dots import Dot

Stamped = tuple[int, Any]  # (hybrid logical timestamp, value)


def winner(entry: Entry[Stamped]) -> tuple[Dot, Stamped] | None:
    """The dot whose write wins: greatest timestamp, then greatest writer id."""
    best: tuple[Dot, Stamped] | None = None
    for dot, stamped in entry.items():
        if best is None or (stamped[0], dot.replica) > (best[1][0], best[0].replica):
            best = (dot, stamped)
    return best


class LWWMap(DotMap[Stamped]):
    """An LWW-map value. Mutators return deltas; apply them with ``join``."""

    __slots__ = ()
    type_name = "lww_map"

    def get(self, key: Key, default: Any = None) -> Any:
        won = winner(self.entries.get(key, {}))
        return default if won is None else won[1][1]

    def __contains__(self, key: object) -> bool:
        return bool(self.entries.get(key)) if isinstance(key, str | bytes | int) else False

    def __iter__(self) -> Iterator[Key]:
        return self.live_keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.live_keys())

    def items(self) -> Iterator[tuple[Key, Any]]:
        for key, entry in self.entries.items():
            won = winner(entry)
            if won is not None:
                yield key, won[1][1]

    def timestamp(self, key: Key) -> int | None:
        won = winner(self.entries.get(key, {}))
        return None if won is None else won[1][0]

    def put(self, replica: str, key: Key, value: Any, timestamp: int) -> LWWMap:
        """Write ``value`` at ``timestamp`` (from the writer's hybrid clock)."""
        check_key(key)
        dot = self.context.next_dot(replica)
        delta = self._delta_replacing(key, {dot: (timestamp, value)}, dot)
        assert isinstance(delta, LWWMap)
        return delta

    def delete(self, replica: str, key: Key) -> LWWMap:
        """Remove what this replica has observed of ``key``; consumes a dot, like every mutation."""
        check_key(key)
        dot = self.context.next_dot(replica)
        delta = self._delta_replacing(key, {}, dot)
        assert isinstance(delta, LWWMap)
        return delta
