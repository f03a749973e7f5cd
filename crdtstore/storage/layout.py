"""The byte layout of every LMDB table of a node directory.

Invariants this module keeps (and ``crdt-inspect`` relies on):

- A state row's key is ``ns_id (4 bytes BE) + key_hash(key)'s first byte + encoded key``
  (``fingerprint.encoded_position``), so the rows of one namespace sorted by LMDB are in
  reconciliation order, a bucket is one cursor range scan, and keys that sort together
  share pages: keys that differ only in their last byte (or two digits) share a bucket, so
  a batch of neighbouring keys dirties a few pages, not a page per key or per bucket. A
  key-hash range ``[lo, hi)`` is a scan of the buckets it touches; in a bucket it only
  cuts, each row's key hash is tested (:func:`range_scan`).
- A state row's value is ``entry_hash (8 bytes BE) + msgpack([[replica, seq], ...])``
  for an OR-Set element, ``[[replica, seq, timestamp, value], ...]`` for an LWW-map key.
  A row exists only while it has a live dot; removals live in the context alone.
- ``entry_hash`` and ``key_hash`` equal :mod:`crdtstore.sync.fingerprint`'s, computed here
  from the already-encoded key so a write hashes its key once.
- A bucket row ``ns_id + bucket (1 byte)`` holds ``xor (8) + count (8)`` of the entry
  hashes of the live rows whose key hash starts with that byte; every write updates it in
  the same transaction, so a fingerprint over whole buckets reads 256 rows, not n.
- A log row ``ns_id + blake2b(origin)[:8] + first_seq (8 BE)`` holds
  ``last_seq (8) + serial (8) + len(origin) (2) + origin + encoded DeltaBatch message``;
  the log-order row ``ns_id + serial (8 BE)`` points back at it, so the oldest batches in
  append order can be dropped first (``bound_log``). Serials grow per namespace. Two rows
  follow the newest order row in the same table: the namespace's causal context
  (``ns_id + 2**64-2``, ``pack_stored(encode_context(ctx))``) and the count of its logged
  batches (``ns_id + 2**64-1``, once it logged anything). A commit rewrites all three, and
  together they dirty one page.
- A journal row ``seq (8 BE)`` holds ``0x01 + written_ms (8 BE) + msgpack([[namespace,
  origin, [key, old, new, kind, ...]], ...])``: the visible changes of one commit, grouped,
  and when (:mod:`crdtstore.storage.journal`, which still reads the bare msgpack rows of
  formats 4 to 6).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable
from typing import Any

import msgpack

from crdtstore.codec import STORED_MAX_CLOUD_DOTS, decode_context
from crdtstore.crdt import CausalContext, Dot
from crdtstore.errors import DecodeError
from crdtstore.keyhash import entry_digest, hash_key_encoding
from crdtstore.sync.fingerprint import ORDER_BITS, encoded_position

FORMAT_VERSION = 6
"""2: the log's counts moved from ``meta`` into ``logorder``; 3: so did the causal contexts
(they had a table of their own); 4: state rows are keyed by the key hash's first byte,
not all eight, then the key; 5: stored contexts and logged batches may hold runs in
their dot clouds (wire format 2), which a build for format 4 cannot read; 6: a key's
bucket, that first byte, hashes its encoding less the last byte or two digits (wire
format 3), so its rows and bucket rows move. Older directories are migrated when opened."""

Buf = bytes | memoryview  # what py-lmdb's stubs say a read returns (bytes unless buffers=True)

HASH_SPACE = 1 << 64
BUCKET_BITS = 8
BUCKETS = 1 << BUCKET_BITS
BUCKET_SHIFT = 64 - BUCKET_BITS  # a bucket is the key hash's first byte (keyhash's bucket)
assert BUCKET_BITS == ORDER_BITS, "a bucket's rows are contiguous in reconciliation order"

TABLES = ("meta", "namespaces", "state", "buckets", "log", "logorder", "journal")
V2_CONTEXT_TABLE = b"context"  # format 2 only: ns id -> causal context (migrated away on open)

META_FORMAT = b"format_version"
META_NODE_ID = b"node_id"
META_TOPICS = b"topics"
"""msgpack list of the namespaces the directory replicates (absent: all)."""
META_NEXT_NS = b"next_ns_id"
META_DROPPED = b"dropped:"
"""+ ns id (4 bytes BE): ``pack_stored(encode_context(ctx))``, the join of the drops
applied to that namespace (:mod:`crdtstore.storage.drops`)."""
META_V1_LOG_SERIAL = b"log_serial"  # format 1 only (migrated away on open)
META_V1_LOG_COUNT = b"log_count:"  # format 1 only: + ns id -> logged batches

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
BUCKET_ROW = struct.Struct(">QQ")
"""A bucket row's value: the XOR of its entry hashes, its count of live rows."""
_LOG_HEAD = struct.Struct(">QQH")


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(data: Buf, offset: int = 0) -> int:
    return int(_U64.unpack_from(data, offset)[0])


def read_u32(data: Buf, offset: int = 0) -> int:
    return int(_U32.unpack_from(data, offset)[0])


def ns_prefix(ns_id: int) -> bytes:
    return _U32.pack(ns_id)


def ns_end(ns_id: int) -> bytes:
    """The first key after every row of namespace ``ns_id``."""
    return _U32.pack(ns_id + 1)


# -- keys and hashes --------------------------------------------------------------------


_local = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack with a reused per-thread packer (``packb`` builds a new one per call; a
    packer is not safe to share between threads)."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(obj)
    return packed


def pack_key(key: Any) -> bytes:
    """The canonical bytes of a key (its msgpack encoding, as fingerprint.encode_key)."""
    return pack(key)


_BELOW_BUCKET = (1 << BUCKET_SHIFT) - 1


def hash_encoded_key(ekey: bytes) -> int:
    """``fingerprint.key_hash`` of the key whose encoding is ``ekey``."""
    h, bucket, _ = hash_key_encoding(ekey)
    return bucket[0] << BUCKET_SHIFT | int.from_bytes(h.digest(), "big") & _BELOW_BUCKET


def key_bucket(ekey: bytes) -> int:
    """The bucket of the key whose encoding is ``ekey``: its key hash's first byte."""
    return hash_key_encoding(ekey)[1][0]


def entry_hash_encoded(ekey: bytes, dots: Iterable[Dot] | Iterable[tuple[str, int]]) -> int:
    """``fingerprint.entry_hash`` of a key given its encoding; 0 for no dots."""
    ordered = sorted(dots)
    return int.from_bytes(entry_digest(ekey, ordered), "big") if ordered else 0


ROW_EKEY = 5
"""Where the encoded key starts in a state row key (after namespace and bucket)."""


def row_key(ns_id: int, khash: int, ekey: bytes) -> bytes:
    return _U32.pack(ns_id) + bytes((khash >> BUCKET_SHIFT,)) + ekey


def row_key_suffix(ekey: bytes) -> bytes:
    """A state row's key after its namespace prefix: the key's bucket, then the key."""
    return encoded_position(ekey)


def row_ekey(rkey: Buf) -> Buf:
    """The encoded key of a state row key."""
    return rkey[ROW_EKEY:]


def range_scan(ns_id: int, lo: int, hi: int) -> tuple[bytes, bytes, int, int]:
    """How to read the rows of key-hash range ``[lo, hi)``: ``(start, end, first_cut,
    last_cut)``. Scan row keys in ``[start, end)``, the buckets the range touches; in
    bucket ``first_cut`` or ``last_cut`` (-1: none), which the range only cuts, keep a row
    only if its key hash is in the range."""
    first, last = lo >> BUCKET_SHIFT, (hi - 1) >> BUCKET_SHIFT
    start = _U32.pack(ns_id) + bytes((first,))
    end = _U32.pack(ns_id) + bytes((last + 1,)) if last + 1 < BUCKETS else ns_end(ns_id)
    width = 1 << BUCKET_SHIFT
    first_cut = first if lo % width else -1
    last_cut = last if hi % width else -1
    return start, end, first_cut, last_cut


def bucket_base(ns_id: int) -> int:
    """``ns_id << 8``: OR-ed with a key's bucket, the *code* of its bucket row, whose key
    is the code in 5 big-endian bytes (:func:`code_key`). Writers sum bucket changes by
    code: ints hash, sort and encode faster than ``(ns_id, bucket)`` tuples."""
    return ns_id << BUCKET_BITS


def code_key(code: int) -> bytes:
    """The key of the bucket row of ``code`` (see :func:`bucket_base`)."""
    return code.to_bytes(5, "big")


def bucket_key(ns_id: int, bucket: int) -> bytes:
    """A bucket row's key."""
    return code_key(bucket_base(ns_id) | bucket)


def unpack_bucket(data: Buf) -> tuple[int, int]:
    fp, count = BUCKET_ROW.unpack(data)
    return int(fp), int(count)


# -- rows ---------------------------------------------------------------------------------


_unpackb = msgpack.unpackb


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} in a stored row")


def unpack_stored(data: Buf) -> Any:
    """Decode msgpack this node wrote; corruption raises DecodeError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_reject_ext)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types on malformed input
        raise DecodeError(f"corrupt stored row: {type(exc).__name__}: {exc}") from exc


def unpack_context(data: Buf) -> CausalContext:
    """A stored causal context (``pack_stored(encode_context(ctx))``); DecodeError if corrupt."""
    return decode_context(unpack_stored(data), STORED_MAX_CLOUD_DOTS)


def pack_stored(obj: Any) -> bytes:
    """msgpack of a stored value this node builds (never user input: that is checked first)."""
    return pack(obj)


def unpack_row(data: Buf) -> tuple[int, list[list[Any]]]:
    """``(entry hash, [[replica, seq, (timestamp, value)]...])`` of a state row."""
    return read_u64(data), row_dots(data)


def row_dots(data: Buf) -> list[list[Any]]:
    """The dots of a state row, without its entry hash (what a reader needs)."""
    try:
        dots = _unpackb(data[8:], raw=False, strict_map_key=False, ext_hook=_reject_ext)
    except Exception as exc:  # msgpack raises many types on malformed input
        raise DecodeError(f"corrupt state row: {type(exc).__name__}: {exc}") from exc
    if type(dots) is not list or len(data) < 9:
        raise DecodeError("state row does not hold a list of dots")
    return dots


def checked_dots(dots: list[Any], stamped: bool) -> list[list[Any]]:
    """``dots`` (a row's, from :func:`row_dots`) if every one is ``[replica: str, seq: int]``,
    plus ``timestamp: int, value`` when ``stamped``, and there is one at least; else
    DecodeError. A write that replaces a row takes its dots into the batch's context, its
    stamps into the clock and its value into the change event: a corrupt one must fail
    the write, not the commit, nor reach a peer."""
    width = 4 if stamped else 2
    for d in dots:
        if not (
            type(d) is list
            and len(d) == width
            and type(d[0]) is str
            and type(d[1]) is int
            and (not stamped or type(d[2]) is int)
        ):
            raise DecodeError(f"corrupt state row: {d!r:.80} is not a dot")
    if not dots:
        raise DecodeError("corrupt state row: it holds no dot")
    return dots


read_row_hash = _U64.unpack_from
"""``(entry hash,)`` of a state row, its first 8 bytes: one C call, for the write paths."""


def row_hash(data: Buf) -> int:
    return int(read_row_hash(data)[0])


# -- the delta log ----------------------------------------------------------------------


def origin_tag(origin: str) -> bytes:
    return hashlib.blake2b(origin.encode(), digest_size=8).digest()


def log_prefix(ns_id: int, origin: str) -> bytes:
    return _U32.pack(ns_id) + origin_tag(origin)


def log_key(ns_id: int, origin: str, first: int) -> bytes:
    return log_prefix(ns_id, origin) + _U64.pack(first)


def log_first(lkey: Buf) -> int:
    return read_u64(lkey, 12)


def pack_log(last: int, serial: int, origin: str, encoded: bytes) -> bytes:
    raw = origin.encode()
    return _LOG_HEAD.pack(last, serial, len(raw)) + raw + encoded


def unpack_log(data: Buf) -> tuple[int, str, bytes]:
    """``(last seq, origin, encoded batch)`` of a log row."""
    last, _, n = _LOG_HEAD.unpack_from(data)
    start = _LOG_HEAD.size
    return int(last), bytes(data[start : start + n]).decode(), bytes(data[start + n :])


def log_serial(data: Buf) -> int:
    return read_u64(data, 8)


def log_order_key(ns_id: int, serial: int) -> bytes:
    return _U32.pack(ns_id) + _U64.pack(serial)


LOG_COUNT_SERIAL = (1 << 64) - 1
"""The order-table key ``ns_id + this`` holds the namespace's count of logged batches:
after every serial, so beside the newest order row."""
CONTEXT_SERIAL = (1 << 64) - 2
"""The order-table key ``ns_id + this`` holds the namespace's causal context (stored),
between its newest order row and its count. A commit rewrites all three, so a small
context costs it no page of its own (a table of contexts cost every commit pages of
their own)."""


def log_count_key(ns_id: int) -> bytes:
    return _U32.pack(ns_id) + _U64.pack(LOG_COUNT_SERIAL)


def context_key(ns_id: int) -> bytes:
    return _U32.pack(ns_id) + _U64.pack(CONTEXT_SERIAL)


def log_last(data: Buf) -> int:
    return read_u64(data)
