"""Add-wins observed-remove set.

``add`` gives the element a fresh dot and drops the dots it had (so an element carries at
most one dot per concurrent writer); ``remove`` drops the dots it observed. A remove
cannot cancel an add it did not observe, so a concurrent add wins. No tombstones: a
removed dot lives on only as a member of the causal context.
"""

from __future__ import annotations

from collections.abc import Iterator

from crdtstore.crdt.dotmap import DotMap, Key, check_key


class ORSet(DotMap[None]):
    """An OR-Set value. Mutators return deltas; apply them with ``join``."""

    __slots__ = ()
    type_name = "or_set"

    def __contains__(self, element: object) -> bool:
        return bool(self.entries.get(element)) if isinstance(element, str | bytes | int) else False

    def __iter__(self) -> Iterator[Key]:
        return self.live_keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.live_keys())

    def elements(self) -> frozenset[Key]:
        return frozenset(self.live_keys())

    def add(self, replica: str, element: Key) -> ORSet:
        check_key(element)
        dot = self.context.next_dot(replica)
        delta = self._delta_replacing(element, {dot: None}, dot)
        assert isinstance(delta, ORSet)
        return delta

    def remove(self, replica: str, element: Key) -> ORSet:
        """Remove what this replica has observed of ``element`` (a no-op delta if absent).

        The delta still consumes a dot, so that every mutation has an identity in the
        per-origin sequence the sync engine repairs by.
        """
        check_key(element)
        dot = self.context.next_dot(replica)
        delta = self._delta_replacing(element, {}, dot)
        assert isinstance(delta, ORSet)
        return delta
