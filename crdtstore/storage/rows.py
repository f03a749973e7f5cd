"""Writing state rows inside one LMDB write transaction, and reading them as entries.

Invariant kept by :class:`RowWriter`: a row exists exactly when its entry has a live dot,
its stored entry hash is ``entry_hash(key, dots)``, and the bucket row of its namespace
and key-hash prefix holds the XOR and count of the live rows under it. Bucket changes are
summed in memory (:func:`crdtstore.storage.kernel.tally`, by every write path) and
written once by :meth:`RowWriter.flush`, inside the same transaction. Its transaction's
default database is the state table (``Environment.begin_write``), so row gets and puts
name none.
"""

from __future__ import annotations

from typing import Any

import lmdb

from crdtstore.crdt import Dot
from crdtstore.storage import layout
from crdtstore.storage.journal import Group, Journal
from crdtstore.storage.kernel import tally
from crdtstore.storage.kernel import winning_value as winning_value  # where readers look

Entry = dict[Dot, Any]


def entry_from_row(dots: list[list[Any]], stamped: bool) -> Entry:
    layout.checked_dots(dots, stamped)  # a corrupt row: DecodeError, not a bad Dot
    if stamped:
        return {Dot(d[0], d[1]): (d[2], d[3]) for d in dots}
    return {Dot(d[0], d[1]): None for d in dots}


class RowWriter:
    """Writes entries of several namespaces in one transaction, tracking buckets and events."""

    def __init__(self, txn: lmdb.Transaction, buckets: Any) -> None:
        self.txn = txn  # its default database is the state table
        self.buckets_db = buckets
        self.buckets: dict[int, list[int]] = {}
        """Bucket code (``layout.bucket_base``) -> [XOR of entry hashes, change of count]
        (writers hold this dict: flush clears it, never replaces it)."""
        self.groups: list[Group] = []
        """The transaction's change events, as the journal holds them (see :meth:`event`);
        a local write keeps one group per namespace, some maybe empty."""

    def event(
        self, namespace: str, key: Any, old: Any, new: Any, origin: str | None, kind: int
    ) -> None:
        """Record a visible change (``kind``: :data:`~.journal.PUT`, ...), after every one
        recorded before it."""
        self.group(namespace, origin).extend((key, old, new, kind))

    def group(self, namespace: str, origin: str | None) -> list[Any]:
        """The list of events that the next change of ``namespace`` by ``origin`` extends
        by ``key, old, new, kind``: the last group's if it is theirs, else a new group's.
        (A loop holds it while the origin stays the same: a call less per event.)"""
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

    def put_row(self, code: int, rkey: bytes, old: bytes | None, new: bytes | None) -> None:
        """Replace row ``rkey`` (currently ``old``; in the bucket ``code``) by ``new`` (None
        deletes it)."""
        if new is not None:
            self.txn.put(rkey, new)
        elif old is not None:
            self.txn.delete(rkey)
        tally(self.buckets, code, old, new)

    def finish(self, journal: Journal) -> None:
        """Write the bucket changes and journal the events: the end of every write."""
        self.flush()
        journal.record(self.txn, self.groups)

    def flush(self) -> None:
        """Add the bucket changes summed so far to the bucket rows."""
        # A commit of 1,000 keys changes most of a namespace's 256 bucket rows: read them
        # and write them in one call each (getmulti / putmulti) rather than two per bucket,
        # in key order.
        changed = self.buckets
        codes = sorted(code for code, acc in changed.items() if acc[0] or acc[1])
        if not codes:
            changed.clear()
            return
        keys = [layout.code_key(code) for code in codes]
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
