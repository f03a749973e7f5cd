"""Bringing a directory written by an older storage format up to ``layout.FORMAT_VERSION``.

Invariant: a migration runs inside the write transaction that opens the directory, before
anything else reads it, and commits with the new format version or not at all: a
directory is never left half migrated. Each step rewrites what its format changed and
nothing else (``layout.FORMAT_VERSION`` tells the history).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from crdtstore.storage import layout
from crdtstore.storage.kernel import tally
from crdtstore.storage.rows import RowWriter

OLDEST = 1
"""The oldest format a directory can be migrated from."""


class FormatMigration:
    """The steps from any format since :data:`OLDEST` to the current one, on one
    environment's tables."""

    def __init__(self, env: lmdb.Environment, dbs: Mapping[str, Any]) -> None:
        self._env = env
        self._dbs = dbs

    def run(self, txn: lmdb.Transaction, version: int) -> None:
        """Migrate from ``version`` (``OLDEST`` .. ``FORMAT_VERSION - 1``) in ``txn``."""
        if version == 1:
            self._counts_beside_order_rows(txn)
        if version <= 2:
            self._contexts_beside_order_rows(txn)
        # 4 -> 5 rewrote nothing: format 5 reads what format 4 wrote (clouds without runs,
        # batches of wire format 1); it only kept a build for 4 from reading what 5
        # writes. 5 -> 6 moves every key to its new bucket.
        self._rebucket_state(txn, 12 if version <= 3 else layout.ROW_EKEY)

    def _counts_beside_order_rows(self, txn: lmdb.Transaction) -> None:
        """Format 1 kept the log's counts and its global append serial in ``meta``, one
        more page for every commit to write; format 2 keeps each namespace's count in a
        row of ``logorder`` beside its newest order row. Order rows are unchanged (a serial
        only orders the rows of its namespace, and the next is taken after the newest)."""
        meta, order = self._dbs["meta"], self._dbs["logorder"]
        prefix = layout.META_V1_LOG_COUNT
        with txn.cursor(db=meta) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[: len(prefix)] == prefix:
                ns_id = int.from_bytes(cur.key()[len(prefix) :], "big")
                txn.put(layout.log_count_key(ns_id), bytes(cur.value()), db=order)
                ok = cur.delete()
        txn.delete(layout.META_V1_LOG_SERIAL, db=meta)

    def _contexts_beside_order_rows(self, txn: lmdb.Transaction) -> None:
        """Format 2 kept the causal contexts in a table of their own, pages every commit
        had to write; format 3 keeps each in a row of ``logorder`` beside its log count."""
        old = self._env.open_db(layout.V2_CONTEXT_TABLE, txn=txn)
        order = self._dbs["logorder"]
        for key, value in txn.cursor(db=old):
            txn.put(layout.context_key(layout.read_u32(key)), bytes(value), db=order)
        txn.drop(old, delete=True)

    def _rebucket_state(self, txn: lmdb.Transaction, ekey_at: int) -> None:
        """Key every state row by its bucket (``ns_id + key bucket + key``), and count the
        buckets again from the rows. Up to format 5 a bucket was the first byte of a hash
        of the whole key; format 3 keyed a row by all eight bytes of that hash (``ekey_at``
        12, not 5). A row's entry hash, its value's first 8 bytes, did not change. The
        rows move through a scratch table, so no new key can land on an old row not yet
        moved."""
        state, bucketdb = self._dbs["state"], self._dbs["buckets"]
        scratch = self._env.open_db(b"v5-state", txn=txn)
        for rkey, data in txn.cursor(db=state):
            txn.put(rkey, data, db=scratch, append=True)
        txn.drop(state, delete=False)
        txn.drop(bucketdb, delete=False)
        writer = RowWriter(txn, bucketdb)
        for rkey, data in txn.cursor(db=scratch):
            ekey = bytes(rkey[ekey_at:])
            ns_id, bucket = layout.read_u32(rkey), layout.key_bucket(ekey)
            txn.put(layout.ns_prefix(ns_id) + bytes((bucket,)) + ekey, data, db=state)
            if len(data) >= 8:  # a row too short to hold its hash was never written here
                tally(writer.buckets, layout.bucket_base(ns_id) | bucket, None, bytes(data))
        writer.flush()
        txn.drop(scratch, delete=True)
