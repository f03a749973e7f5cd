"""Reading key-hash ranges of a namespace: row scans, fingerprints, shipped entries.

Invariants:

- A range ``[lo, hi)`` of key hashes is read as the buckets it touches (the rows of a
  bucket are one cursor range, :func:`crdtstore.storage.layout.range_scan`); in a bucket
  the range only cuts, a row is kept only if its key hash is inside.
- A fingerprint of whole buckets is read from their bucket rows (XOR and count, kept by
  every write in the same transaction); only the part of a bucket a range cuts is computed
  from its rows.
- The bucket index of a snapshot (:meth:`Ranges.bucket_index`) is used only with that
  snapshot: a snapshot id names one committed state of the directory, whichever process
  wrote it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from crdtstore.crdt import Dot
from crdtstore.errors import StorageError
from crdtstore.storage import layout
from crdtstore.storage.kernel import ENTRY_HEAD
from crdtstore.storage.rows import entry_from_row
from crdtstore.sync.messages import PackedRange

BUCKET_INDEXES_KEPT = 4
"""Buckets whose sorted key hashes a replica keeps (``Ranges.bucket_index``; about 80
bytes a row: 320 KB for a bucket of 4,000 rows, as in a namespace of a million keys)."""

_WIDTH = 1 << layout.BUCKET_SHIFT  # the key hashes of one bucket


class Ranges:
    """Range reads of the state and bucket tables, in the caller's transactions; keeps
    the index of the last few buckets a range cut."""

    def __init__(self, dbs: dict[str, Any], path: Path) -> None:
        self._state = dbs["state"]
        self._buckets = dbs["buckets"]
        self._path = path
        self._indexes: dict[tuple[int, int], tuple[int, list[int], list[int], list[bytes]]] = {}

    def scan(
        self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(row key, row)`` of every row of ``ns_id`` whose key hash is in ``[lo, hi)``,
        in row order, the buckets the range cuts read whole and their keys hashed."""
        if lo >= hi:
            return
        start, end, first_cut, last_cut = layout.range_scan(ns_id, lo, hi)
        hash_of = layout.hash_encoded_key
        with txn.cursor(db=self._state) as cur:
            if not cur.set_range(start):
                return
            for rkey, data in cur:
                assert isinstance(rkey, bytes) and isinstance(data, bytes)  # buffers=False
                if rkey >= end:
                    return
                bucket = rkey[4]
                if bucket in (first_cut, last_cut) and not (
                    lo <= hash_of(rkey[layout.ROW_EKEY :]) < hi
                ):
                    continue  # in a bucket the range cuts, and outside the range
                yield rkey, data

    def is_empty(self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int) -> bool:
        return next(self.scan(txn, ns_id, lo, hi), None) is None

    def read_scan(
        self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """:meth:`scan` in a read transaction: the rows of a bucket the range only cuts
        are picked out by the bucket's index (:meth:`bucket_index`) and read one by one,
        instead of reading the bucket and hashing every key. A peer repairing a split
        bucket asks for the parts that differ one at a time, as it asked for their
        fingerprints, which built the index."""
        if lo >= hi:
            return
        shift = layout.BUCKET_SHIFT
        _, _, first_cut, last_cut = layout.range_scan(ns_id, lo, hi)  # cut buckets, or -1
        if first_cut >= 0:
            yield from self._cut_rows(txn, ns_id, first_cut, lo, hi)
        whole_lo = (lo >> shift) + (first_cut >= 0)  # whole buckets: whole_lo..whole_hi-1
        whole_hi = ((hi - 1) >> shift) + 1 - (last_cut >= 0)
        if whole_lo < whole_hi:
            yield from self.scan(txn, ns_id, whole_lo * _WIDTH, whole_hi * _WIDTH)
        if last_cut >= 0 and last_cut != first_cut:  # one bucket cut at both ends: done
            yield from self._cut_rows(txn, ns_id, last_cut, lo, hi)

    def _cut_rows(
        self, txn: lmdb.Transaction, ns_id: int, bucket: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """The rows of ``bucket`` whose key hash is in ``[lo, hi)``, in row order."""
        hashes, _, ekeys = self.bucket_index(txn, ns_id, bucket)
        i = bisect.bisect_left(hashes, max(lo, bucket * _WIDTH))
        j = bisect.bisect_left(hashes, min(hi, (bucket + 1) * _WIDTH))
        head = layout.bucket_key(ns_id, bucket)  # a row key's namespace and bucket
        get = txn.get
        for ekey in sorted(ekeys[i:j]):  # a bucket's rows are in encoded-key order
            rkey = head + ekey
            data = get(rkey)
            if not isinstance(data, bytes):  # None: the index is of this very snapshot
                raise StorageError(f"{self._path}: bucket index out of date at {rkey!r}")
            yield rkey, data

    def fingerprints(
        self, txn: lmdb.Transaction, ns_id: int, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Whole buckets from their bucket rows; the parts of buckets a range only cuts
        from the bucket's rows, whose key hashes must be computed there (a bucket's rows
        are in key order): see :meth:`bucket_index`."""
        out = []
        prefix = layout.ns_prefix(ns_id)
        for lo, hi in ranges:
            b_lo, b_hi = -(-lo // _WIDTH), hi // _WIDTH  # whole buckets b_lo .. b_hi - 1
            fp = count = 0
            if b_lo < b_hi:
                spans = [(lo, b_lo * _WIDTH), (b_hi * _WIDTH, hi)]
                with txn.cursor(db=self._buckets) as cur:
                    ok = cur.set_range(layout.bucket_key(ns_id, b_lo))
                    while ok:
                        bkey = cur.key()
                        if bkey[:4] != prefix or bkey[4] >= b_hi:
                            break
                        bfp, bcount = layout.unpack_bucket(cur.value())
                        fp ^= bfp
                        count += bcount
                        ok = cur.next()
            else:
                spans = [(lo, hi)]
            shift = layout.BUCKET_SHIFT
            for a, b in spans:
                if a >= b:
                    continue
                # A span lies in one bucket, or (a range that holds no whole bucket) two.
                for bucket in range(a >> shift, ((b - 1) >> shift) + 1):
                    hashes, xors, _ = self.bucket_index(txn, ns_id, bucket)
                    i = bisect.bisect_left(hashes, max(a, bucket * _WIDTH))
                    j = bisect.bisect_left(hashes, min(b, (bucket + 1) * _WIDTH))
                    fp ^= xors[i] ^ xors[j]
                    count += j - i
            out.append((fp, count))
        return out

    def bucket_index(
        self, txn: lmdb.Transaction, ns_id: int, bucket: int
    ) -> tuple[list[int], list[int], list[bytes]]:
        """The key hashes of a bucket's rows, sorted, the prefix XORs of their entry
        hashes (``xors[i]``: of the first i) and their encoded keys, in the same order, as
        of ``txn``'s snapshot.

        Kept for a few buckets, by snapshot: a reconciliation splits a differing bucket
        into 16 parts, and the peer asks for each part's fingerprint in turn, each in a
        read transaction of its own, so without it the bucket would be read and its keys
        hashed 16 times. (Read transactions only: a write transaction's id is the next
        commit's, which an abort leaves to another.)"""
        snapshot = txn.id()
        found = self._indexes.get((ns_id, bucket))
        if found is not None and found[0] == snapshot:
            return found[1], found[2], found[3]
        hash_of, ekey_at = layout.hash_encoded_key, layout.ROW_EKEY
        rows = []
        for rkey, data in self.scan(txn, ns_id, bucket * _WIDTH, (bucket + 1) * _WIDTH):
            ekey = rkey[ekey_at:]
            rows.append((hash_of(ekey), layout.row_hash(data), ekey))
        rows.sort()
        hashes, xors, ekeys = [], [0], []
        for khash, ehash, ekey in rows:
            hashes.append(khash)
            xors.append(xors[-1] ^ ehash)
            ekeys.append(ekey)
        if len(self._indexes) >= BUCKET_INDEXES_KEPT:
            self._indexes.clear()
        self._indexes[(ns_id, bucket)] = (snapshot, hashes, xors, ekeys)
        return hashes, xors, ekeys

    def entries(
        self, txn: lmdb.Transaction, ns_id: int, stamped: bool, lo: int, hi: int
    ) -> dict[Any, dict[Dot, Any]]:
        """The entries of ``[lo, hi)``, decoded (``read_range``'s)."""
        entries = {}
        for rkey, data in self.read_scan(txn, ns_id, lo, hi):
            key = layout.unpack_stored(layout.row_ekey(rkey))
            entries[key] = entry_from_row(layout.row_dots(data), stamped)
        return entries

    def packed(
        self,
        txn: lmdb.Transaction,
        ns_id: int,
        type_name: str,
        lo: int,
        hi: int,
        max_bytes: int | None,
    ) -> PackedRange | None:
        """The entries of ``[lo, hi)`` encoded straight from the rows: an entry on the wire
        is ``[key, dots]``, and a row holds the encoded key (in its row key) and the
        encoded dots (after its entry hash), in reconciliation order, so shipping a range
        decodes and re-encodes nothing. None past ``max_bytes``."""
        packer = msgpack.Packer(use_bin_type=True)
        room = None if max_bytes is None else max_bytes - 1  # the array's header
        entries = []
        size = 0
        ekey_at = layout.ROW_EKEY
        for rkey, data in self.read_scan(txn, ns_id, lo, hi):
            entry = ENTRY_HEAD + rkey[ekey_at:] + data[8:]  # [encoded key, encoded dots]
            size += len(entry)
            if room is not None and size > room:
                return None  # stop scanning as soon as the budget is passed
            entries.append(entry)
        packed = packer.pack_array_header(len(entries)) + b"".join(entries)
        if max_bytes is not None and len(packed) > max_bytes:
            return None
        return PackedRange(type_name, len(entries), packed)
