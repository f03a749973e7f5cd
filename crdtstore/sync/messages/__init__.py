"""The protocol's messages and their wire form.

Every message is ``[FORMAT_VERSION, kind, *fields]`` in msgpack (:mod:`.envelope`).
Decoding is strict: an unknown version or kind, a field of the wrong type, or a value
that breaks an invariant raises :class:`~crdtstore.errors.DecodeError` (and nothing
else).

One module per family of messages, each with its layout and its checks side by side:
:mod:`.batch` (the fast path's delta batches), :mod:`.antientropy` (digests, version
vectors, log repair), :mod:`.ranges` (range reconciliation), :mod:`.relay` (Plumtree's
notices); :mod:`.fields` holds what they share (the kind registry, the field checks).
Importing this package loads every one of them, so every kind is registered before any
message is decoded.
"""

from crdtstore.sync.messages.antientropy import (
    Digest,
    DigestSummary,
    LogGap,
    RepairReply,
    RepairRequest,
    VectorReply,
    VectorRequest,
)
from crdtstore.sync.messages.batch import DeltaBatch, encode_delta_batch
from crdtstore.sync.messages.envelope import (
    KEY_ORDERED,
    VALUE_CARRIERS,
    decode_message,
    encode_message,
)
from crdtstore.sync.messages.fields import (
    HASH_MAX,
    MAX_NAMESPACE_LEN,
    MAX_RANGE_ITEMS,
    MAX_SHIPPED_ENTRIES,
    MESSAGE_TYPES,
    Message,
    expect_hash,
    expect_namespace,
    expect_range,
    expect_vv,
    register,
)
from crdtstore.sync.messages.ranges import (
    RANGE_ENTRIES,
    RANGE_EQUAL,
    RANGE_SPLIT,
    PackedRange,
    RangeAnswer,
    RangeQuery,
    RangeReply,
    RangeSummary,
)
from crdtstore.sync.messages.relay import MAX_HAVE_RUNS, Graft, Have, Prune

__all__ = [
    "HASH_MAX",
    "KEY_ORDERED",
    "MAX_HAVE_RUNS",
    "MAX_NAMESPACE_LEN",
    "MAX_RANGE_ITEMS",
    "MAX_SHIPPED_ENTRIES",
    "MESSAGE_TYPES",
    "RANGE_ENTRIES",
    "RANGE_EQUAL",
    "RANGE_SPLIT",
    "VALUE_CARRIERS",
    "DeltaBatch",
    "Digest",
    "DigestSummary",
    "Graft",
    "Have",
    "LogGap",
    "Message",
    "PackedRange",
    "Prune",
    "RangeAnswer",
    "RangeQuery",
    "RangeReply",
    "RangeSummary",
    "RepairReply",
    "RepairRequest",
    "VectorReply",
    "VectorRequest",
    "decode_message",
    "encode_delta_batch",
    "encode_message",
    "expect_hash",
    "expect_namespace",
    "expect_range",
    "expect_vv",
    "register",
]
