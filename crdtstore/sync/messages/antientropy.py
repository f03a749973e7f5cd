"""Anti-entropy messages: digests, version vectors, log repair.

A digest is constant in size while idle: it grows with namespaces (and, unhashed, with
origins), never with state. Invariants of decoding: a namespace appears once in a digest;
a repair or gap range ``first..last`` is non-empty; a repair reply carries logged batches
as bytes, each decoded again as a :class:`~.batch.DeltaBatch` by its receiver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.codec import (
    expect,
    expect_int,
    expect_list,
    expect_replica,
)
from crdtstore.errors import DecodeError
from crdtstore.sync.digests import MAX_TOTAL
from crdtstore.sync.messages.fields import expect_hash, expect_namespace, expect_vv, register


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
        return cls(*_origin_range(fields, "repair request", "repair range"))


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
        return cls(*_origin_range(fields, "log gap", "log gap"))


def _origin_range(fields: list[Any], what: str, span: str) -> tuple[int, str, str, int, int]:
    """``(request, namespace, origin, first, last)`` of a request-or-answer about one
    origin's seqs, checked: a non-empty range of positive seqs."""
    req, ns, origin, first, last = expect_list(fields, what, 5)
    checked = (
        expect_int(req, "request id"),
        expect_namespace(ns),
        expect_replica(origin, "origin"),
        expect_int(first, "first seq", 1),
        expect_int(last, "last seq", 1),
    )
    if checked[3] > checked[4]:
        raise DecodeError(f"{span} {checked[3]}..{checked[4]} is empty")
    return checked
