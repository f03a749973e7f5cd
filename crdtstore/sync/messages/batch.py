"""The protocol's messages and their wire form.

Every message is ``[FORMAT_VERSION, kind, *fields]`` in msgpack. Decoding is strict: an
unknown version or kind, a field of the wrong type, or a value that breaks an invariant
raises :class:`~crdtstore.errors.DecodeError` (and nothing else).

Why one module over 500 lines: it is the wire format, every message's layout and checks
side by side, so that a format change is made and reviewed in one place; each class is
short, and splitting them would only scatter that one contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import msgpack

from crdtstore.codec import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    KEY_ORDER_VERSION,
    READ_VERSIONS,
    DecodeLimits,
    Row,
    check_depth,
    check_entries,
    decode_context,
    decode_value_head,
    encode_context,
    encode_value,
    expect,
    expect_int,
    expect_list,
    expect_replica,
    pack,
    thread_packer,
    unpack,
    value_of_rows,
)
from crdtstore.crdt import CRDT_TYPES, CausalContext, DotMap, LWWMap
from crdtstore.errors import DecodeError
from crdtstore.sync.digests import MAX_TOTAL, VV_HASH_BYTES
from crdtstore.sync.fingerprint import key_position, split_range

MAX_NAMESPACE_LEN = 255


def expect_namespace(obj: Any) -> str:
    name: str = expect(obj, str, "namespace")
    if not name or len(name.encode()) > MAX_NAMESPACE_LEN:
        raise DecodeError(f"namespace length outside [1, {MAX_NAMESPACE_LEN}] bytes")
    return name


class Message(Protocol):
    KIND: ClassVar[str]

    def to_wire(self) -> list[Any]: ...


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


MESSAGE_TYPES: dict[str, Any] = {DeltaBatch.KIND: DeltaBatch}


def register(cls: Any) -> Any:
    """Class decorator: make a message kind decodable."""
    MESSAGE_TYPES[cls.KIND] = cls
    return cls


def encode_message(msg: Message) -> bytes:
    if type(msg) is RangeReply:
        return msg.encode()  # may hold ranges already encoded by the replica
    return pack([FORMAT_VERSION, msg.KIND, *msg.to_wire()])


def decode_message(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    # Batches and range replies can be large, and their typed readers check every field
    # but the values, which decode_value depth-checks: walking the whole message again
    # would add a second pass to the decoding a bootstrap or a busy receiver lives in.
    obj = unpack(data, limits, nesting=False)
    if not isinstance(obj, list) or len(obj) < 2:
        raise DecodeError("a message is [version, kind, *fields]")
    version, kind = obj[0], obj[1]
    if type(version) is not int or version not in READ_VERSIONS:
        raise DecodeError(
            f"unsupported format version {version!r} (this node reads {READ_VERSIONS})"
        )
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"unknown message kind {kind!r}")
    if version < KEY_ORDER_VERSION and cls in KEY_ORDERED:
        raise DecodeError(
            f"a {kind} message of format {version} has key-hash ranges of another key "
            f"order (this node reads them from format {KEY_ORDER_VERSION})"
        )
    if cls not in VALUE_CARRIERS:
        check_depth(obj, limits.max_depth)
    return cls.from_wire(obj[2:])


# -- anti-entropy messages ----------------------------------------------------------------
#
# Key-hash ranges travel as ``[lo, last]`` with ``last = hi - 1`` inclusive: the exclusive
# upper bound of the whole space, 2**64, does not fit msgpack's uint64.

HASH_MAX = (1 << 64) - 1
MAX_RANGE_ITEMS = 65_536
MAX_SHIPPED_ENTRIES = DEFAULT_LIMITS.max_container_len


def expect_range(lo_obj: Any, last_obj: Any) -> tuple[int, int]:
    lo = expect_int(lo_obj, "range start", 0, HASH_MAX)
    last = expect_int(last_obj, "range end", 0, HASH_MAX)
    if last < lo:
        raise DecodeError(f"key range [{lo}, {last}] is empty")
    return lo, last + 1


def expect_vv(obj: Any) -> dict[str, int]:
    return {
        expect_replica(r, "digest origin"): expect_int(s, "digest seq")
        for r, s in expect(obj, dict, "version vector").items()
    }


@register
@dataclass(frozen=True, slots=True)
class Digest:
    """``sender``'s per-namespace version vectors: ``(namespace, type, vv)`` each.

    Constant size while idle: it grows with namespaces and origins, never with state.
    """

    KIND: ClassVar[str] = "digest"
    sender: str
    namespaces: tuple[tuple[str, str, dict[str, int]], ...]

    def to_wire(self) -> list[Any]:
        return [self.sender, [[ns, t, vv] for ns, t, vv in self.namespaces]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Digest:
        sender, items = expect_list(fields, "digest", 2)
        out: list[tuple[str, str, dict[str, int]]] = []
        seen: set[str] = set()
        for item in expect_list(items, "digest namespaces"):
            ns_obj, type_obj, vv_obj = expect_list(item, "digest entry", 3)
            ns = expect_namespace(ns_obj)
            if ns in seen:
                raise DecodeError(f"namespace {ns!r} appears twice in a digest")
            seen.add(ns)
            out.append((ns, expect(type_obj, str, "crdt type"), expect_vv(vv_obj)))
        return cls(expect_replica(sender, "digest sender"), tuple(out))


def expect_hash(obj: Any) -> bytes:
    digest: bytes = expect(obj, bytes, "version vector hash")
    if len(digest) != VV_HASH_BYTES:
        raise DecodeError(f"a version vector hash is {VV_HASH_BYTES} bytes, not {len(digest)}")
    return digest


@register
@dataclass(frozen=True, slots=True)
class DigestSummary:
    """``sender``'s digest in hashed form (protocol version 2): ``(namespace, type,
    total, hash)`` of each namespace's version vector (:mod:`crdtstore.sync.digests`).

    Constant size while idle: it grows with namespaces, never with origins or state."""

    KIND: ClassVar[str] = "digest_h"
    sender: str
    namespaces: tuple[tuple[str, str, int, bytes], ...]

    def to_wire(self) -> list[Any]:
        return [self.sender, [list(item) for item in self.namespaces]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> DigestSummary:
        sender, items = expect_list(fields, "hashed digest", 2)
        out: list[tuple[str, str, int, bytes]] = []
        seen: set[str] = set()
        for item in expect_list(items, "hashed digest namespaces"):
            ns_obj, type_obj, total, digest = expect_list(item, "hashed digest entry", 4)
            ns = expect_namespace(ns_obj)
            if ns in seen:
                raise DecodeError(f"namespace {ns!r} appears twice in a digest")
            seen.add(ns)
            out.append(
                (
                    ns,
                    expect(type_obj, str, "crdt type"),
                    expect_int(total, "version vector total", 0, MAX_TOTAL),
                    expect_hash(digest),
                )
            )
        return cls(expect_replica(sender, "digest sender"), tuple(out))


@register
@dataclass(frozen=True, slots=True)
class VectorRequest:
    """Please send your full version vector of ``namespace`` (its hash in your digest
    was neither mine nor the last one you sent me)."""

    KIND: ClassVar[str] = "vv_req"
    namespace: str

    def to_wire(self) -> list[Any]:
        return [self.namespace]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> VectorRequest:
        (ns,) = expect_list(fields, "vector request", 1)
        return cls(expect_namespace(ns))


@register
@dataclass(frozen=True, slots=True)
class VectorReply:
    """The sender's full version vector of ``namespace`` (of CRDT type ``type_name``).

    Its origins are bounded by the decoder's container limit, as a full digest's are."""

    KIND: ClassVar[str] = "vv"
    namespace: str
    type_name: str
    vv: dict[str, int]

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.type_name, self.vv]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> VectorReply:
        ns, type_obj, vv_obj = expect_list(fields, "vector reply", 3)
        return cls(expect_namespace(ns), expect(type_obj, str, "crdt type"), expect_vv(vv_obj))


@register
@dataclass(frozen=True, slots=True)
class RepairRequest:
    """Please send the logged batches of ``origin`` covering ``first..last``."""

    KIND: ClassVar[str] = "repair_req"
    request: int
    namespace: str
    origin: str
    first: int
    last: int

    def to_wire(self) -> list[Any]:
        return [self.request, self.namespace, self.origin, self.first, self.last]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> RepairRequest:
        req, ns, origin, first, last = expect_list(fields, "repair request", 5)
        msg = cls(
            expect_int(req, "request id"),
            expect_namespace(ns),
            expect_replica(origin, "origin"),
            expect_int(first, "first seq", 1),
            expect_int(last, "last seq", 1),
        )
        if msg.first > msg.last:
            raise DecodeError(f"repair range {msg.first}..{msg.last} is empty")
        return msg


@register
@dataclass(frozen=True, slots=True)
class RepairReply:
    """Logged batches (each an encoded :class:`DeltaBatch`) answering a repair request.

    It may hold fewer batches than the request spanned (``max_repair_batches``): the
    requester asks again for what is still missing.
    """

    KIND: ClassVar[str] = "repair"
    request: int
    namespace: str
    batches: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [self.request, self.namespace, list(self.batches)]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> RepairReply:
        req, ns, batches = expect_list(fields, "repair reply", 3)
        return cls(
            expect_int(req, "request id"),
            expect_namespace(ns),
            tuple(expect(b, bytes, "logged batch") for b in expect_list(batches, "batches")),
        )


@register
@dataclass(frozen=True, slots=True)
class LogGap:
    """The log here no longer holds all of ``origin``'s ``first..last``: reconcile ranges."""

    KIND: ClassVar[str] = "log_gap"
    request: int
    namespace: str
    origin: str
    first: int
    last: int

    def to_wire(self) -> list[Any]:
        return [self.request, self.namespace, self.origin, self.first, self.last]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> LogGap:
        req, ns, origin, first, last = expect_list(fields, "log gap", 5)
        msg = cls(
            expect_int(req, "request id"),
            expect_namespace(ns),
            expect_replica(origin, "origin"),
            expect_int(first, "first seq", 1),
            expect_int(last, "last seq", 1),
        )
        if msg.first > msg.last:
            raise DecodeError(f"log gap {msg.first}..{msg.last} is empty")
        return msg


# -- relay messages (crdtstore.sync.relay) ------------------------------------------------

MAX_HAVE_RUNS = 4_096


@register
@dataclass(frozen=True, slots=True)
class Have:
    """The publisher learned these runs ``(origin, first, last)`` of ``namespace`` (a
    Plumtree "have" notice: a neighbour lacking one of them fetches it)."""

    KIND: ClassVar[str] = "have"
    namespace: str
    runs: tuple[tuple[str, int, int], ...]

    def to_wire(self) -> list[Any]:
        return [self.namespace, [list(run) for run in self.runs]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Have:
        ns, items = expect_list(fields, "have notice", 2)
        runs: list[tuple[str, int, int]] = []
        for item in expect_list(items, "have runs"):
            origin, first, last = expect_list(item, "have run", 3)
            run = (
                expect_replica(origin, "origin"),
                expect_int(first, "first seq", 1),
                expect_int(last, "last seq", 1),
            )
            if run[1] > run[2]:
                raise DecodeError(f"have run {run[1]}..{run[2]} is empty")
            runs.append(run)
        if not runs or len(runs) > MAX_HAVE_RUNS:
            raise DecodeError(f"a have notice holds 1 to {MAX_HAVE_RUNS} runs, not {len(runs)}")
        return cls(expect_namespace(ns), tuple(runs))


@register
@dataclass(frozen=True, slots=True)
class Prune:
    """The sender got a batch of ``namespace`` from me that it had: it takes my data
    topic off its subscriptions, and asks me to do the same with its own."""

    KIND: ClassVar[str] = "prune"
    namespace: str

    def to_wire(self) -> list[Any]:
        return [self.namespace]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Prune:
        (ns,) = expect_list(fields, "prune", 1)
        return cls(expect_namespace(ns))


@register
@dataclass(frozen=True, slots=True)
class Graft:
    """The sender subscribed to my data topic of ``namespace`` again (its tree had a
    hole), and asks me to subscribe to its own."""

    KIND: ClassVar[str] = "graft"
    namespace: str

    def to_wire(self) -> list[Any]:
        return [self.namespace]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Graft:
        (ns,) = expect_list(fields, "graft", 1)
        return cls(expect_namespace(ns))


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


VALUE_CARRIERS: frozenset[type] = frozenset({DeltaBatch, RangeReply})
"""Messages whose every field a typed reader checks, but the stored values they carry,
which :func:`crdtstore.codec.decode_value` (or, for a range's entries, ShippedEntries)
depth-checks: decode_message skips the walk of the whole message for them."""

KEY_ORDERED: frozenset[type] = frozenset({RangeQuery, RangeReply})
"""Messages that name keys by key-hash range: decode_message reads them only from
:data:`crdtstore.codec.KEY_ORDER_VERSION` on."""
