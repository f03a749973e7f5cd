"""What the sync engine needs from a replica's persistence.

The engine decides *what* to send and *when*; a :class:`Replica` holds the state, the
causal context and the delta log, and changes them atomically. Two implementations:
``crdtstore.testing.memory.MemoryReplica`` (for the simulator and property tests) and
``crdtstore.storage`` (LMDB, in production). Both must pass the same contract tests.

Invariants every implementation keeps:
- ``apply_batch`` joins the batch's delta into the namespace's state and context and
  appends the batch to the log, all or nothing;
- the context of a namespace always covers every live dot of its state;
- ``read_range`` (and ``read_range_packed``) returns entries and context from one
  consistent snapshot;
- ``apply_range`` judges removals inside ``[lo, hi)`` by the sender's context but adds
  to its own context only the dots it actually received: the sender's context also covers
  keys outside the range, which this replica has not been sent yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from crdtstore.crdt import CausalContext, DotMap
from crdtstore.sync.messages import DeltaBatch, PackedRange
from crdtstore.sync.shipped import ShippedEntries


class Replica(Protocol):
    @property
    def node_id(self) -> str: ...

    def namespaces(self) -> Mapping[str, str]:
        """Namespace name -> CRDT type name, for every namespace held here."""
        ...

    def ensure_namespace(self, namespace: str, type_name: str) -> None:
        """Create an empty namespace learned from a peer; TypeMismatch if it differs."""
        ...

    def context(self, namespace: str) -> CausalContext: ...

    def apply_batch(self, batch: DeltaBatch, encoded: bytes) -> bool:
        """Join and log a batch (``encoded`` is its wire form, kept to serve repairs).

        Returns False, changing nothing, when every dot of the batch was already seen.
        """
        ...

    def apply_batches(self, batches: Sequence[tuple[DeltaBatch, bytes]]) -> list[bool]:
        """``apply_batch`` of each, in order, as one commit; raises, changing nothing, where
        one of them alone would raise."""
        ...

    def log_batches(self, namespace: str, origin: str, first: int, last: int) -> list[bytes] | None:
        """Encoded batches of ``origin`` covering seqs ``first..last``; None if not all held."""
        ...

    def trim_log(self, namespace: str, origin: str, upto: int) -> int:
        """Drop logged batches of ``origin`` that end at or below ``upto``; how many went."""
        ...

    def bound_log(self, namespace: str, max_batches: int) -> int:
        """Drop the oldest logged batches (in append order) of ``namespace`` until at most
        ``max_batches`` remain; how many went. Peers that still needed them fall back to
        range reconciliation. (Added with the sync engine: the log bound.)"""
        ...

    def fingerprints(
        self, namespace: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """``(fingerprint, live entry count)`` of each key-hash range ``[lo, hi)``."""
        ...

    def read_range(self, namespace: str, lo: int, hi: int) -> DotMap[Any]:
        """The live entries in ``[lo, hi)`` as a delta carrying this replica's whole context."""
        ...

    def read_range_packed(
        self, namespace: str, lo: int, hi: int, max_bytes: int | None
    ) -> PackedRange | None:
        """The entries of ``read_range`` already encoded for a range reply (see
        :class:`PackedRange`: in reconciliation order), or None when they would take more
        than ``max_bytes`` (None: no bound)."""
        ...

    def apply_range(self, namespace: str, lo: int, hi: int, shipped: DotMap[Any]) -> None:
        """Join a peer's range (``shipped.context`` is the sender's context)."""
        ...

    def apply_ranges(
        self,
        namespace: str,
        ranges: Iterable[tuple[int, int, DotMap[Any] | ShippedEntries]],
        context: CausalContext,
        size_hint: int = 0,
    ) -> None:
        """``apply_range`` of each (disjoint) range, then ``merge_context(context)``, as one
        atomic step: a crash leaves all of it or none. ``ranges`` may be a lazy iterable
        (each iteration yields the same ranges); an implementation may iterate it again to
        retry, and should not hold every range at once. A range given as
        :class:`ShippedEntries` is applied as ``apply_range`` of its ``value(lo, hi)``
        (which checks it: an error raised there leaves everything unchanged).
        ``size_hint``: about how many bytes the ranges took on the wire (0: unknown)."""
        ...

    def merge_context(self, namespace: str, context: CausalContext) -> None:
        """Join ``context`` in, once every range of a reconciliation has been applied."""
        ...
