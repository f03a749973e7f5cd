"""The dot kernel both CRDTs share: a map from key to the live dots of that key.

A value is ``(entries, context)``: ``entries[key]`` maps each live dot of ``key`` to the
payload written with it (``None`` for set elements, ``(timestamp, value)`` for map
values); ``context`` is every dot this value has seen, live or not. A dot in the
context that is live nowhere was removed, which is how removes need no tombstones
(optimized OR-Set; Almeida, Shoker and Baquero, "Delta State Replicated Data Types").

The join of two values keeps, per key, the dots live on both sides plus the dots live on
one side that the other side has not seen: a dot one side has seen and no longer holds
was removed there, and the remove wins over the add it observed.

Deltas: a *delta* lists every key whose dots its context covers (an entry may be empty:
"these dots of this key were removed"). Joining a delta into a value therefore only needs
to visit the delta's keys, O(|delta|) rather than O(|state|). Every delta the mutators
return, and every join of deltas, keeps this invariant; a full state does not (it forgets
the keys of removed dots), so ``join`` of two full states visits both.

Payloads are immutable per dot: the same dot always carries the same payload, so a join
never has to choose between two payloads of one dot.

Join is commutative, associative and idempotent on values, but applying *deltas* to a
replica is safe only in causal order: a delta whose context claims dots the replica has
not received yet would mark them seen, and when they arrive later they would read as
"removed" and be dropped. The sync engine therefore holds a batch back until the dots its
context names are present (see ``crdtstore.sync.engine``), and a range reconciliation
joins the sender's context only after every range is in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from crdtstore.crdt.dots import CausalContext, Dot
from crdtstore.errors import InvalidValue

Key = str | bytes | int
P = TypeVar("P")
Entry = Mapping[Dot, P]

MAX_INT_KEY = (1 << 63) - 1
MIN_INT_KEY = -(1 << 63)


def check_key(key: object) -> Key:
    """Accept only keys whose identity survives encoding (so not bool, float or tuples)."""
    if isinstance(key, bool) or not isinstance(key, str | bytes | int):
        raise InvalidValue(f"key {key!r} has type {type(key).__name__}; expected str, bytes or int")
    if isinstance(key, int) and not MIN_INT_KEY <= key <= MAX_INT_KEY:
        raise InvalidValue(f"integer key {key} is outside the signed 64-bit range")
    return key


def join_entry(
    mine: Entry[P], my_ctx: CausalContext, theirs: Entry[P], their_ctx: CausalContext
) -> dict[Dot, P]:
    """The join of one key's live dots on two sides."""
    out = {d: p for d, p in mine.items() if d in theirs or d not in their_ctx}
    for d, p in theirs.items():
        if d not in mine and d not in my_ctx:
            out[d] = p
    return out


class DotMap(Generic[P]):
    """Key -> live dots with payloads, plus the causal context. Immutable."""

    __slots__ = ("context", "entries", "is_delta")
    type_name: str = "dot_map"

    def __init__(
        self,
        entries: Mapping[Key, Entry[P]] | None = None,
        context: CausalContext | None = None,
        *,
        is_delta: bool = False,
    ) -> None:
        self.entries: Mapping[Key, Entry[P]] = entries if entries is not None else {}
        self.context: CausalContext = context if context is not None else CausalContext()
        self.is_delta = is_delta

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotMap) or type(other) is not type(self):
            return NotImplemented
        return (
            self.is_delta == other.is_delta
            and self.context == other.context
            and _live(self.entries, self.is_delta) == _live(other.entries, other.is_delta)
        )

    def __hash__(self) -> int:
        raise TypeError(f"{type(self).__name__} is not hashable")

    def __repr__(self) -> str:
        kind = "delta" if self.is_delta else "state"
        return f"{type(self).__name__}({kind}, entries={dict(self.entries)!r}, {self.context!r})"

    def dots(self, key: Key) -> Entry[P]:
        return self.entries.get(key, {})

    def live_keys(self) -> Iterator[Key]:
        return (k for k, e in self.entries.items() if e)

    def join(self, other: DotMap[P]) -> DotMap[P]:
        """The least upper bound of two values; a delta only if both are deltas."""
        if type(other) is not type(self):
            raise TypeError(f"cannot join {type(self).__name__} with {type(other).__name__}")
        a, b = (other, self) if self.is_delta and not other.is_delta else (self, other)
        both_deltas = a.is_delta and b.is_delta
        entries: dict[Key, Entry[P]] = dict(a.entries)
        for key, theirs in b.entries.items():
            joined = join_entry(a.entries.get(key, {}), a.context, theirs, b.context)
            if joined or both_deltas:
                entries[key] = joined
            else:
                entries.pop(key, None)
        if not b.is_delta:
            # b forgot the keys of dots it removed: visit a's other keys too.
            for key in a.entries.keys() - b.entries.keys():
                kept = {d: p for d, p in a.entries[key].items() if d not in b.context}
                if kept or both_deltas:
                    entries[key] = kept
                else:
                    del entries[key]
        return self._make(entries, a.context.join(b.context), both_deltas)

    def restrict(self, keys: Iterable[Key]) -> DotMap[P]:
        """A delta holding only ``keys`` (with this value's context): for shipping a range."""
        return self._make({k: self.entries.get(k, {}) for k in keys}, self.context, True)

    def _make(self, entries: Mapping[Key, Entry[P]], ctx: CausalContext, delta: bool) -> DotMap[P]:
        return type(self)(entries, ctx, is_delta=delta)

    def _delta_replacing(self, key: Key, new: Entry[P], new_dot: Dot) -> DotMap[P]:
        """The delta that replaces every dot ``key`` has here by ``new``, consuming ``new_dot``."""
        seen = CausalContext.from_dots([*self.dots(key), new_dot])
        return self._make({key: new}, seen, True)


def _live(entries: Mapping[Key, Entry[P]], keep_empty: bool) -> dict[Key, dict[Dot, P]]:
    return {k: dict(e) for k, e in entries.items() if e or keep_empty}
