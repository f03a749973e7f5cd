"""Reading and writing state rows inside one LMDB write transaction.

Invariant kept by :class:`RowWriter`: a row exists exactly when its entry has a live dot,
its stored entry hash is ``entry_hash(key, dots)``, and the bucket row of its namespace
and key-hash prefix holds the XOR and count of the live rows under it. Bucket changes are
summed in memory and written once by :meth:`RowWriter.flush`, inside the same transaction.
Its transaction's default database is the state table (``LMDBReplica._begin_write``), so
row gets and puts name none.
"""

from __future__ import annotations

from typing import Any

import lmdb

from crdtstore.crdt import Dot
from crdtstore.errors import DecodeError
from crdtstore.storage import layout
from crdtstore.storage.journal import Group

Entry = dict[Dot, Any]


def entry_from_row(dots: list[list[Any]], stamped: bool) -> Entry:
    layout.checked_dots(dots, stamped)  # a corrupt row: DecodeError, not a bad Dot
    if stamped:
        return {Dot(d[0], d[1]): (d[2], d[3]) for d in dots}
    return {Dot(d[0], d[1]): None for d in dots}


def winning_value(dots: list[list[Any]]) -> Any:
    """The value a reader sees in an LWW row (``dots`` non-empty, a row's); DecodeError if
    they are not dots (a corrupt row: readers get the project's error, not a TypeError)."""
    try:
        if len(dots) == 1:
            return dots[0][3]
        best = max(dots, key=lambda d: (d[2], d[0]))
        return best[3]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise DecodeError(f"corrupt state row: {dots!r:.80} are not dots ({exc})") from exc


class RowWriter:
    """Writes entries of several namespaces in one transaction, tracking buckets and events."""

    def __init__(self, txn: lmdb.Transaction, buckets: Any) -> None:
        self.txn = txn  # its default database is the state table
        self.buckets_db = buckets
        self.buckets: dict[int, list[int]] = {}
        """Bucket code, ``ns_id << 8 | bucket``, -> [XOR of entry hashes, change of count]
        (writers hold this dict: flush clears it, never replaces it)."""
        self.groups: list[Group] = []
        """The transaction's change events, as the journal holds them (see :meth:`event`);
        a local write keeps one group per namespace, some maybe empty."""

    def event(self, namespace: str, key: Any, old: Any, new: Any, origin: str | None) -> None:
        """Record a visible change, after every one recorded before it."""
        self.group(namespace, origin).extend((key, old, new))

    def group(self, namespace: str, origin: str | None) -> list[Any]:
        """The list of events that the next change of ``namespace`` by ``origin`` extends
        by ``key, old, new``: the last group's if it is theirs, else a new group's. (A loop
        holds it while the origin stays the same: a call less per event.)"""
        groups = self.groups
        if groups:
            last = groups[-1]
            if last[0] == namespace and last[1] == origin:
                flat: list[Any] = last[2]
                return flat
        flat = []
        groups.append([namespace, origin, flat])
        return flat

    def changed(self) -> bool:
        """Whether any visible change was recorded."""
        return any(g[2] for g in self.groups)

    def get(self, rkey: bytes) -> bytes | None:
        data = self.txn.get(rkey)  # a replica's transactions default to the state table
        return data  # type: ignore[return-value]  # bytes: buffers=False

    def put_row(
        self, ns_id: int, bucket: int, rkey: bytes, old: bytes | None, new: bytes | None
    ) -> None:
        """Replace row ``rkey`` (currently ``old``; its key hash's first byte is
        ``bucket``) by ``new`` (None deletes it)."""
        old_hash = layout.row_hash(old) if old else 0
        new_hash = layout.row_hash(new) if new else 0
        if new is not None:
            self.txn.put(rkey, new)
        elif old is not None:
            self.txn.delete(rkey)
        if old_hash != new_hash:
            acc = self.buckets.setdefault(ns_id << 8 | bucket, [0, 0])
            acc[0] ^= old_hash ^ new_hash
            acc[1] += (new is not None) - (old is not None)

    def flush(self) -> None:
        # A commit of 1,000 keys changes most of a namespace's 256 bucket rows: read them
        # and write them in one call each (getmulti / putmulti) rather than two per bucket,
        # in key order. A bucket row's key, ns_id (4 bytes) + bucket (1), is its code in 5
        # big-endian bytes: ints sort and encode fastest (sorting (ns_id, bucket) tuples
        # took a third of this).
        changed = self.buckets
        codes = sorted(code for code, acc in changed.items() if acc[0] or acc[1])
        if not codes:
            changed.clear()
            return
        keys = [code.to_bytes(5, "big") for code in codes]
        unpack, pack = layout.BUCKET_ROW.unpack, layout.BUCKET_ROW.pack
        with self.txn.cursor(db=self.buckets_db) as cur:
            stored = dict(cur.getmulti(keys))
            puts = []
            for bkey, code in zip(keys, codes, strict=True):
                xor, delta = changed[code]
                data = stored.get(bkey)
                fp, count = unpack(data) if data else (0, 0)
                count += delta
                if count:
                    puts.append((bkey, pack(fp ^ xor, count)))
                elif data is not None:
                    self.txn.delete(bkey, db=self.buckets_db)
            cur.putmulti(puts)
        changed.clear()
