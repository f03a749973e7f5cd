"""Range reconciliation messages: :class:`RangeQuery` and :class:`RangeReply`.

Invariants: a round carries at most :data:`~.fields.MAX_RANGE_ITEMS` ranges or answers;
a split answer's part bounds are implied by ``split_range(lo, hi, parts)`` and must be
splittable so; shipped entries travel as one binary field, unchecked until applied
(:class:`crdtstore.sync.shipped.ShippedEntries`), and are spliced into the reply as the
replica packed them, never decoded and encoded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from crdtstore.codec import (
    FORMAT_VERSION,
    decode_context,
    encode_context,
    encode_value,
    expect,
    expect_int,
    expect_list,
    pack,
)
from crdtstore.crdt import CRDT_TYPES, CausalContext, DotMap
from crdtstore.errors import DecodeError
from crdtstore.sync.fingerprint import key_position, split_range
from crdtstore.sync.messages.fields import (
    HASH_MAX,
    MAX_RANGE_ITEMS,
    MAX_SHIPPED_ENTRIES,
    expect_namespace,
    expect_range,
    register,
)


@dataclass(frozen=True, slots=True)
class RangeSummary:
    """One key-hash range ``[lo, hi)`` with the fingerprint and entry count of one side."""

    lo: int
    hi: int
    fingerprint: int
    count: int

    def to_wire(self) -> list[Any]:
        return [self.lo, self.hi - 1, self.fingerprint, self.count]

    @classmethod
    def from_wire(cls, obj: Any) -> RangeSummary:
        lo_obj, last_obj, fp, count = expect_list(obj, "range summary", 4)
        lo, hi = expect_range(lo_obj, last_obj)
        return cls(lo, hi, expect_int(fp, "fingerprint", 0, HASH_MAX), expect_int(count, "count"))


@register
@dataclass(frozen=True, slots=True)
class RangeQuery:
    """Round ``round`` of reconciliation session ``session``: the asker's summaries of the
    ranges still unresolved. ``want_context`` until the asker holds the session's base
    context (the sender's context snapshot taken before it reads any range)."""

    KIND: ClassVar[str] = "range_q"
    session: int
    round: int
    namespace: str
    want_context: bool
    ranges: tuple[RangeSummary, ...]

    def to_wire(self) -> list[Any]:
        return [
            self.session,
            self.round,
            self.namespace,
            self.want_context,
            [r.to_wire() for r in self.ranges],
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> RangeQuery:
        session, rnd, ns, want, ranges = expect_list(fields, "range query", 5)
        items = expect_list(ranges, "ranges")
        if len(items) > MAX_RANGE_ITEMS:
            raise DecodeError(f"{len(items)} ranges exceed {MAX_RANGE_ITEMS}")
        return cls(
            expect_int(session, "session id"),
            expect_int(rnd, "round"),
            expect_namespace(ns),
            expect(want, bool, "want_context"),
            tuple(RangeSummary.from_wire(r) for r in items),
        )


RANGE_EQUAL, RANGE_ENTRIES, RANGE_SPLIT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PackedRange:
    """The entries of a range as they go on the wire: the msgpack array of its
    ``[key, [dot, ...]]`` in reconciliation order (``fingerprint.key_position``), each dot
    ``[replica, seq(, timestamp, value)]``.

    A sender's replica builds it straight from its stored rows (which hold a key's dots in
    their wire form), so serving a range decodes and re-encodes nothing. A receiver gets
    it unchecked: the message carries it as one binary field, and only
    :class:`crdtstore.sync.shipped.ShippedEntries` reads it, when the range is applied."""

    type_name: str
    count: int
    data: bytes

    @classmethod
    def of(cls, value: DotMap[Any]) -> PackedRange:
        """The entries of ``value`` (its live and empty ones alike), packed."""
        entries = encode_value(value)[3]
        entries.sort(key=lambda e: key_position(e[0]))
        return cls(value.type_name, len(entries), pack(entries))


def _bin_header(size: int) -> bytes:
    """msgpack's header of a binary field of ``size`` bytes (Packer has no such method)."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """The sender's answer for one range: equal (with the sender's summary, which the
    asker compares with its own state *when it reads the reply*, as it may have changed
    since it asked), its entries (``packed``; judged by the session's base context when
    they are applied), or its split into sub-range summaries."""

    lo: int
    hi: int
    kind: int
    packed: PackedRange | None = None
    parts: tuple[RangeSummary, ...] = ()
    fingerprint: int = 0  # of an equal range: the asker checks it again when it applies
    count: int = 0

    def encode(self, packer: msgpack.Packer) -> bytes:
        if self.packed is not None:
            # msgpack is concatenative: an array's header, then its items' encodings.
            p = self.packed
            head = [packer.pack_array_header(6)]
            head.extend(packer.pack(x) for x in (self.lo, self.hi - 1, self.kind, p.type_name))
            head.extend((packer.pack(p.count), _bin_header(len(p.data))))
            return b"".join(head) + p.data
        return pack(self.to_wire())

    def to_wire(self) -> list[Any]:
        head: list[Any] = [self.lo, self.hi - 1, self.kind]
        if self.kind == RANGE_ENTRIES:
            assert self.packed is not None
            return [*head, self.packed.type_name, self.packed.count, self.packed.data]
        if self.kind == RANGE_SPLIT:
            # Part bounds are implied: split_range(lo, hi, number of parts).
            return [*head, [[p.fingerprint, p.count] for p in self.parts]]
        return [*head, self.fingerprint, self.count]

    @classmethod
    def from_wire(cls, obj: Any) -> RangeAnswer:
        items = expect_list(obj, "range answer")
        if len(items) < 3:
            raise DecodeError("a range answer is [lo, last, kind, ...]")
        lo, hi = expect_range(items[0], items[1])
        kind = expect_int(items[2], "range answer kind", 0, 2)
        if kind == RANGE_EQUAL:
            _, _, _, fp, count = expect_list(items, "equal range", 5)
            return cls(
                lo,
                hi,
                kind,
                fingerprint=expect_int(fp, "fingerprint", 0, HASH_MAX),
                count=expect_int(count, "count"),
            )
        if kind == RANGE_ENTRIES:
            # The entries stay bytes until the range is applied (ShippedEntries checks
            # them there, in the loop that writes them): a bootstrap receives millions.
            _, _, _, type_obj, count, data = expect_list(items, "shipped range", 6)
            type_name: str = expect(type_obj, str, "crdt type")
            if type_name not in CRDT_TYPES:
                raise DecodeError(f"unknown crdt type {type_name!r}")
            packed = PackedRange(
                type_name,
                expect_int(count, "entry count", 0, MAX_SHIPPED_ENTRIES),
                expect(data, bytes, "shipped entries"),
            )
            return cls(lo, hi, kind, packed=packed)
        expect_list(items, "range answer", 4)
        sums = expect_list(items[3], "parts")
        bounds = split_range(lo, hi, len(sums))
        if not sums or len(bounds) != len(sums):
            raise DecodeError(f"range [{lo}, {hi}) cannot be split in {len(sums)} parts")
        parts = []
        for (a, b), item in zip(bounds, sums, strict=True):
            fp, count = expect_list(item, "part summary", 2)
            parts.append(
                RangeSummary(
                    a, b, expect_int(fp, "fingerprint", 0, HASH_MAX), expect_int(count, "count")
                )
            )
        return cls(lo, hi, kind, parts=tuple(parts))


@register
@dataclass(frozen=True, slots=True)
class RangeReply:
    """The answers to one :class:`RangeQuery` round (possibly to only some of its ranges)."""

    KIND: ClassVar[str] = "range_r"
    session: int
    round: int
    namespace: str
    context: CausalContext | None
    answers: tuple[RangeAnswer, ...]

    def to_wire(self) -> list[Any]:
        ctx = None if self.context is None else encode_context(self.context)
        return [
            self.session,
            self.round,
            self.namespace,
            ctx,
            [a.to_wire() for a in self.answers],
        ]

    def encode(self) -> bytes:
        """``encode_message(self)``, splicing in the answers' packed ranges as they are."""
        ctx = None if self.context is None else encode_context(self.context)
        packer = msgpack.Packer(use_bin_type=True)
        out = [packer.pack_array_header(7)]
        out.extend(
            packer.pack(x)
            for x in (FORMAT_VERSION, self.KIND, self.session, self.round, self.namespace, ctx)
        )
        out.append(packer.pack_array_header(len(self.answers)))
        out.extend(a.encode(packer) for a in self.answers)
        return b"".join(out)

    @classmethod
    def from_wire(cls, fields: list[Any]) -> RangeReply:
        session, rnd, ns, ctx, answers = expect_list(fields, "range reply", 5)
        items = expect_list(answers, "answers")
        if len(items) > MAX_RANGE_ITEMS:
            raise DecodeError(f"{len(items)} answers exceed {MAX_RANGE_ITEMS}")
        return cls(
            expect_int(session, "session id"),
            expect_int(rnd, "round"),
            expect_namespace(ns),
            None if ctx is None else decode_context(ctx),
            tuple(RangeAnswer.from_wire(a) for a in items),
        )
