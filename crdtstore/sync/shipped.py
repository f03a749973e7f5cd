"""A reconciliation's shipped entries, checked where they are applied.

Rule: nothing of a range reply's entries reaches a replica's state but through
:meth:`ShippedEntries.checked`, which holds them to every rule a value's entries are held
to (:func:`crdtstore.codec.check_entries`: types and bounds of keys, dots, timestamps;
value depth; a dot live at one key only) and to those of a shipped range:

- each key hashes into the range, and the keys come in reconciliation order
  (``fingerprint.key_position``), each once;
- only the dots the session's base context holds are taken (the sender gained the others
  after its snapshot; their deltas, which carry what they replaced, bring them later);
- no LWW timestamp is further ahead of local time than ``max_drift_ms``.

Why the checks wait for the apply: a bootstrap receives every entry of a namespace. It
used to check each reply on arrival (building Dot objects and entry maps, dropped at once
to bound memory), then read the reply again to write its rows: each entry was decoded,
hashed and checked twice, a newcomer's largest cost. Now a reply's entries travel as one
binary field, the session keeps them as those bytes, and the replica checks an entry in
the loop that writes its row. A bad entry raises (:class:`DecodeError`,
:class:`ClockDriftError`) inside the replica's transaction, which then aborts: the
session's apply changes nothing, and the engine gives the session up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crdtstore.codec import Row, check_entries, unpack, value_of_rows
from crdtstore.crdt import CRDT_TYPES, CausalContext, DotMap, LWWMap, check_drift
from crdtstore.errors import DecodeError
from crdtstore.sync.messages import PackedRange


@dataclass(frozen=True, slots=True)
class ShippedEntries:
    """One shipped range's entries as the sender encoded them, and what they are checked
    against: the session's base context, and local time for the clock-drift bound."""

    packed: PackedRange
    base: CausalContext
    now_ms: int
    max_drift_ms: int

    @property
    def type_name(self) -> str:
        return self.packed.type_name

    def checked(self, lo: int, hi: int) -> Iterator[Row]:
        """Each entry of the range ``[lo, hi)``, checked (:func:`codec.check_entries`),
        with only the dots ``base`` holds.

        Raises DecodeError at the first entry that breaks a rule (ClockDriftError, once
        every entry is read, if a timestamp is too far ahead): a caller writes as it
        iterates, inside a transaction it aborts on the error."""
        packed = self.packed
        cls = CRDT_TYPES.get(packed.type_name)
        if cls is None:
            raise DecodeError(f"unknown crdt type {packed.type_name!r}")
        items = unpack(packed.data, nesting=False)
        if type(items) is not list or len(items) != packed.count:
            raise DecodeError(f"shipped range does not hold the {packed.count} entries it says")
        newest: list[int] = []
        yield from check_entries(
            items, cls is LWWMap, base=self.base, bounds=(lo, hi), newest=newest
        )
        if newest and newest[0]:
            check_drift(newest[0], self.now_ms, self.max_drift_ms)

    def value(self, lo: int, hi: int) -> DotMap[Any]:
        """The checked entries as a delta with the base context (what a replica joins
        where it already holds rows, and the in-memory replica everywhere)."""
        cls = CRDT_TYPES[self.packed.type_name]
        return value_of_rows(cls, self.checked(lo, hi), self.base, is_delta=True)
