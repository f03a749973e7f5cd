"""The envelope of every message: ``[FORMAT_VERSION, kind, *fields]`` in msgpack.

Invariants: decoding is strict. An unknown version or kind, a field of the wrong type, or
a value that breaks an invariant raises :class:`~crdtstore.errors.DecodeError` (and
nothing else); messages that name keys by key-hash range are read only from
:data:`~crdtstore.codec.KEY_ORDER_VERSION` on; every message is depth-checked, either
whole here or, for those that carry stored values, value by value by its typed reader.
"""

from __future__ import annotations

from typing import Any

from crdtstore.codec import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    KEY_ORDER_VERSION,
    READ_VERSIONS,
    DecodeLimits,
    check_depth,
    pack,
    unpack,
)
from crdtstore.errors import DecodeError
from crdtstore.sync.messages.batch import DeltaBatch
from crdtstore.sync.messages.fields import MESSAGE_TYPES, Message
from crdtstore.sync.messages.ranges import RangeQuery, RangeReply


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


VALUE_CARRIERS: frozenset[type] = frozenset({DeltaBatch, RangeReply})
"""Messages whose every field a typed reader checks, but the stored values they carry,
which :func:`crdtstore.codec.decode_value` (or, for a range's entries, ShippedEntries)
depth-checks: decode_message skips the walk of the whole message for them."""

KEY_ORDERED: frozenset[type] = frozenset({RangeQuery, RangeReply})
"""Messages that name keys by key-hash range: decode_message reads them only from
:data:`crdtstore.codec.KEY_ORDER_VERSION` on."""
