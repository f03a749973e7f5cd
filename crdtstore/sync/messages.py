"""The protocol's messages and their wire form.

Every message is ``[FORMAT_VERSION, kind, *fields]`` in msgpack. Decoding is strict: an
unknown version or kind, a field of the wrong type, or a value that breaks an invariant
raises :class:`~crdtstore.errors.DecodeError` (and nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from crdtstore.codec import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    DecodeLimits,
    decode_value,
    encode_value,
    expect,
    expect_int,
    expect_list,
    expect_replica,
    pack,
    unpack,
)
from crdtstore.crdt import Dot, DotMap
from crdtstore.errors import DecodeError

MAX_NAMESPACE_LEN = 255


def expect_namespace(obj: Any) -> str:
    name: str = expect(obj, str, "namespace")
    if not name or len(name.encode()) > MAX_NAMESPACE_LEN:
        raise DecodeError(f"namespace length outside [1, {MAX_NAMESPACE_LEN}] bytes")
    return name


class Message(Protocol):
    KIND: ClassVar[str]

    def to_wire(self) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class DeltaBatch:
    """Deltas ``first..last`` (inclusive) of ``origin`` in ``namespace``, joined into one."""

    KIND: ClassVar[str] = "delta"
    namespace: str
    origin: str
    first: int
    last: int
    delta: DotMap[Any]

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.origin, self.first, self.last, encode_value(self.delta)]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> DeltaBatch:
        ns, origin, first, last, value = expect_list(fields, "delta batch", 5)
        batch = cls(
            expect_namespace(ns),
            expect_replica(origin, "origin"),
            expect_int(first, "first seq", 1),
            expect_int(last, "last seq", 1),
            decode_value(value),
        )
        if batch.first > batch.last:
            raise DecodeError(f"delta batch range {batch.first}..{batch.last} is empty")
        if not batch.delta.is_delta:
            raise DecodeError("a delta batch must carry a delta, not a full state")
        ctx = batch.delta.context
        if not all(Dot(batch.origin, s) in ctx for s in (batch.first, batch.last)):
            raise DecodeError("delta batch context does not cover its own sequence range")
        return batch


MESSAGE_TYPES: dict[str, Any] = {DeltaBatch.KIND: DeltaBatch}


def register(cls: Any) -> Any:
    """Class decorator: make a message kind decodable."""
    MESSAGE_TYPES[cls.KIND] = cls
    return cls


def encode_message(msg: Message) -> bytes:
    return pack([FORMAT_VERSION, msg.KIND, *msg.to_wire()])


def decode_message(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    obj = unpack(data, limits)
    if not isinstance(obj, list) or len(obj) < 2:
        raise DecodeError("a message is [version, kind, *fields]")
    version, kind = obj[0], obj[1]
    if version != FORMAT_VERSION:
        raise DecodeError(
            f"unsupported format version {version!r} (this node speaks {FORMAT_VERSION})"
        )
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"unknown message kind {kind!r}")
    return cls.from_wire(obj[2:])
