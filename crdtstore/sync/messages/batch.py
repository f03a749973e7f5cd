"""The fast path's message: :class:`DeltaBatch`, a run of one origin's deltas.

Invariants: a decoded batch's range ``first..last`` is non-empty, its context (``rest``,
its own run implied) names no seq of its origin beyond ``last``, and its entries are
checked into rows once, on decoding; :func:`encode_delta_batch` writes the same bytes as
``encode_message`` of the batch, from entries already encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from crdtstore.codec import (
    FORMAT_VERSION,
    Row,
    check_entries,
    decode_value_head,
    encode_context,
    encode_value,
    expect_int,
    expect_list,
    expect_replica,
    thread_packer,
    value_of_rows,
)
from crdtstore.crdt import CRDT_TYPES, CausalContext, DotMap, LWWMap
from crdtstore.errors import DecodeError
from crdtstore.sync.messages.fields import expect_namespace, register


@register
class DeltaBatch:
    """Deltas ``first..last`` (inclusive) of ``origin`` in ``namespace``, joined into one.

    One value in two forms: ``delta``, the pure :class:`DotMap`, and ``rows``, its entries
    checked into the form a replica stores (:data:`crdtstore.codec.Row`). A batch decoded
    from the wire is checked once, into its rows, and builds ``delta`` only when asked
    (the in-memory replica, coalescing); one made from a delta builds its rows only when
    asked (an LMDB replica applying it). A receiver used to build Dot objects and entry
    maps for every update, which the LMDB replica turned straight back into lists.

    Its context is ``rest`` (what the deltas observed) plus its own run ``(origin,
    first..last)``, which the wire leaves implied: a batch of n updates would otherwise
    carry, decode and join n cloud dots (a batch's first seq is rarely 1), a large share of
    a receiver's time and bytes. ``context`` builds the whole one on demand.
    Immutable: every field is set once."""

    KIND: ClassVar[str] = "delta"
    __slots__ = (
        "_context",
        "_delta",
        "_newest",
        "_rest",
        "_rows",
        "first",
        "last",
        "namespace",
        "origin",
        "type_name",
    )

    def __init__(
        self, namespace: str, origin: str, first: int, last: int, delta: DotMap[Any]
    ) -> None:
        self.namespace, self.origin, self.first, self.last = namespace, origin, first, last
        self.type_name: str = delta.type_name
        self._context: CausalContext | None = delta.context
        self._rest: CausalContext | None = None
        self._delta: DotMap[Any] | None = delta
        self._rows: list[Row] | None = None
        self._newest: int | None = None

    @property
    def rest(self) -> CausalContext:
        """The batch's context without its own run: the dots its deltas observed."""
        if self._rest is None:
            assert self._context is not None
            self._rest = self._context.without_run(self.origin, self.first, self.last)
        return self._rest

    @property
    def context(self) -> CausalContext:
        if self._context is None:
            self._context = self.rest.with_run(self.origin, self.first, self.last)
        return self._context

    @property
    def delta(self) -> DotMap[Any]:
        if self._delta is None:
            cls = CRDT_TYPES[self.type_name]
            self._delta = value_of_rows(cls, self.rows, self.context, is_delta=True)
        return self._delta

    @property
    def rows(self) -> list[Row]:
        if self._rows is None:
            self._check_rows(encode_value(self.delta)[3])
        assert self._rows is not None
        return self._rows

    @property
    def newest(self) -> int:
        """The latest LWW timestamp the batch carries (0 for none): the one that can be
        too far ahead."""
        if self._newest is None:
            self._check_rows(encode_value(self.delta)[3])
        assert self._newest is not None
        return self._newest

    def _check_rows(self, entries: Any) -> None:
        newest: list[int] = []
        stamped = CRDT_TYPES[self.type_name] is LWWMap
        run = (self.origin, self.first, self.last)
        rows = check_entries(entries, stamped, context=self.rest, run=run, newest=newest)
        self._rows = list(rows)
        self._newest = newest[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeltaBatch):
            return NotImplemented
        return (self.namespace, self.origin, self.first, self.last, self.delta) == (
            other.namespace,
            other.origin,
            other.first,
            other.last,
            other.delta,
        )

    def __hash__(self) -> int:
        return hash((self.namespace, self.origin, self.first, self.last))

    def __repr__(self) -> str:
        return (
            f"DeltaBatch({self.namespace!r}, {self.origin!r}, {self.first}, {self.last}, "
            f"{self.delta!r})"
        )

    def to_wire(self) -> list[Any]:
        value = encode_value(self.delta)
        value[2] = encode_context(self.rest)  # the own run is implied by first..last
        return [self.namespace, self.origin, self.first, self.last, value]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> DeltaBatch:
        ns, origin, first, last, value = expect_list(fields, "delta batch", 5)
        type_cls, is_delta, rest, entries = decode_value_head(value)
        if not is_delta:
            raise DecodeError("a delta batch must carry a delta, not a full state")
        batch = cls.__new__(cls)
        batch.namespace = expect_namespace(ns)
        batch.origin = expect_replica(origin, "origin")
        batch.first = expect_int(first, "first seq", 1)
        batch.last = expect_int(last, "last seq", 1)
        if batch.first > batch.last:
            raise DecodeError(f"delta batch range {batch.first}..{batch.last} is empty")
        if rest.max_seq(batch.origin) > batch.last:
            # The origin cannot have observed its own seqs beyond the batch's last one.
            raise DecodeError("delta batch context goes beyond its own range")
        batch.type_name, batch._rest, batch._context, batch._delta = (
            type_cls.type_name,
            rest,
            None,
            None,
        )
        batch._check_rows(entries)
        return batch


def encode_delta_batch(
    namespace: str,
    origin: str,
    first: int,
    last: int,
    type_name: str,
    rest: list[Any],
    entries: Sequence[bytes],
) -> bytes:
    """``encode_message`` of a :class:`DeltaBatch` whose entries are already encoded (each
    ``[key, dots]``) and whose context without its run is ``rest`` (``encode_context``'s
    form): how a writer's commit logs its batch straight from the rows it wrote, which
    hold each key's dots in their wire form. msgpack is concatenative."""
    packer = thread_packer()
    pack = packer.pack
    return b"".join(
        (
            b"\x97",  # [version, kind, ns, origin, first, last, value]
            *map(pack, (FORMAT_VERSION, DeltaBatch.KIND, namespace, origin, first, last)),
            b"\x94",  # value: [type, is_delta, context, entries]
            *map(pack, (type_name, True, rest)),
            packer.pack_array_header(len(entries)),
            *entries,
        )
    )
