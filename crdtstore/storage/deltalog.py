"""The delta log (the outbox): every batch a namespace applied or made, kept to serve repairs.

Invariants (the row layout is :mod:`crdtstore.storage.layout`'s):

- Each logged batch has one log row, keyed by namespace, origin and first seq, and one
  order row, keyed by namespace and a serial that grows with every batch logged there:
  the oldest batches in append order go first when the log is bounded.
- A namespace's count row holds exactly how many batches it logs; it sits after the
  namespace's order rows and its context row, so a commit that logs a batch and rewrites
  the context dirties one page of ``logorder``.
- A batch replaces a logged one with the same origin and first seq only if it reaches
  further; its order row and count follow.
- The ``log`` table holds at most about ``max_bytes`` of pages (LMDB's own count, read in
  O(1)), whatever the batches' sizes: a batch put beyond it drops its namespace's oldest
  batches (never itself) down to 15/16 of it, in the same transaction. The count bound
  and the peers' acknowledgements (:mod:`crdtstore.sync.trim`) trim more, but only where
  a replicator runs; this bound holds for every process that writes, local-only ones too.
  A peer that needed what went reconciles by ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lmdb

from crdtstore.storage import layout
from crdtstore.storage.tables import table_bytes


class DeltaLog:
    """The ``log`` and ``logorder`` tables, read and written in the caller's transactions."""

    def __init__(self, dbs: Mapping[str, Any], max_bytes: int) -> None:
        self._log = dbs["log"]
        self._order = dbs["logorder"]
        self._max_bytes = max_bytes

    def put(
        self, txn: lmdb.Transaction, ns_id: int, origin: str, first: int, last: int, encoded: bytes
    ) -> None:
        """Log a batch (replacing a shorter one with the same origin and first seq)."""
        lkey = layout.log_key(ns_id, origin, first)
        old = txn.get(lkey, db=self._log)
        if old is not None:
            if layout.log_last(old) >= last:
                return
            self._forget(txn, ns_id, old)
        count, serial = self._tail(txn, ns_id)
        txn.put(lkey, layout.pack_log(last, serial + 1, origin, encoded), db=self._log)
        txn.put(layout.log_order_key(ns_id, serial + 1), lkey, db=self._order)
        txn.put(layout.log_count_key(ns_id), layout.u64(count + 1), db=self._order)
        if table_bytes(txn, self._log) > self._max_bytes:
            self._shed(txn, ns_id, serial + 1)

    def _shed(self, txn: lmdb.Transaction, ns_id: int, newest: int) -> None:
        """Drop the oldest batches of ``ns_id`` logged before serial ``newest`` until the
        table is 1/16 under its bound (so the next puts do not shed again)."""
        target = self._max_bytes - self._max_bytes // 16
        newest_key = layout.log_order_key(ns_id, newest)
        dropped = 0
        with txn.cursor(db=self._order) as cur:
            ok = cur.set_range(layout.ns_prefix(ns_id))
            while ok and bytes(cur.key()) < newest_key:
                txn.delete(cur.value(), db=self._log)
                ok = cur.delete()
                dropped += 1
                if table_bytes(txn, self._log) <= target:
                    break
        if dropped:
            self._count(txn, ns_id, -dropped)

    def batches(
        self, txn: lmdb.Transaction, ns_id: int, origin: str, first: int, last: int
    ) -> list[bytes] | None:
        """Encoded batches of ``origin`` covering ``first..last``; None if not all held."""
        prefix = layout.log_prefix(ns_id, origin)
        out: list[bytes] = []
        need, best_last = first, 0
        best: layout.Buf = b""
        with txn.cursor(db=self._log) as cur:
            ok = cur.set_range(prefix)
            while need <= last:
                # Take every batch starting at or before `need`; keep the furthest-reaching.
                while ok and cur.key()[:12] == prefix and layout.log_first(cur.key()) <= need:
                    value = cur.value()
                    blast = layout.log_last(value)
                    if blast > best_last:
                        best_last, best = blast, value
                    ok = cur.next()
                if best_last < need:
                    return None
                out.append(layout.unpack_log(best)[2])
                need = best_last + 1
        return out

    def trim(self, txn: lmdb.Transaction, ns_id: int, origin: str, upto: int) -> int:
        """Drop the batches of ``origin`` that end at or below ``upto``; how many went."""
        prefix = layout.log_prefix(ns_id, origin)
        dropped = 0
        with txn.cursor(db=self._log) as cur:
            ok = cur.set_range(prefix)
            # A batch starting above `upto` ends above it too: stop there.
            while ok and cur.key()[:12] == prefix and layout.log_first(cur.key()) <= upto:
                if layout.log_last(cur.value()) <= upto:
                    self._forget(txn, ns_id, cur.value())
                    ok = cur.delete()
                    dropped += 1
                else:
                    ok = cur.next()
        return dropped

    def bound(self, txn: lmdb.Transaction, ns_id: int, max_batches: int) -> int:
        """Drop the oldest batches (append order) until at most ``max_batches`` stay."""
        excess = self._count(txn, ns_id, 0) - max_batches
        if excess <= 0:
            return 0
        dropped = 0
        end = layout.context_key(ns_id)  # then its count: the order rows are before
        with txn.cursor(db=self._order) as cur:
            ok = cur.set_range(layout.ns_prefix(ns_id))
            while dropped < excess and ok and bytes(cur.key()) < end:
                lkey = cur.value()
                txn.delete(lkey, db=self._log)
                ok = cur.delete()
                dropped += 1
        if dropped:
            self._count(txn, ns_id, -dropped)
        return dropped

    def drop_where(
        self, txn: lmdb.Transaction, ns_id: int, covered: Callable[[str, int, int], bool]
    ) -> int:
        """Drop the batches ``(origin, first, last)`` of ``ns_id`` that ``covered`` says
        to (a namespace's drop: :mod:`.drops`); how many went."""
        prefix = layout.ns_prefix(ns_id)
        dropped = 0
        with txn.cursor(db=self._log) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[:4] == prefix:
                value = cur.value()
                last, origin, _ = layout.unpack_log(value)
                if covered(origin, layout.log_first(cur.key()), last):
                    self._forget(txn, ns_id, value)
                    ok = cur.delete()
                    dropped += 1
                else:
                    ok = cur.next()
        return dropped

    def _tail(self, txn: lmdb.Transaction, ns_id: int) -> tuple[int, int]:
        """``(logged batches, newest serial)`` of a namespace: its count row, and the newest
        order row just before its context row (read together: they share a page)."""
        with txn.cursor(db=self._order) as cur:
            if not cur.set_key(layout.log_count_key(ns_id)):
                return 0, 0  # nothing was ever logged here
            count = layout.read_u64(cur.value())
            ok = cur.prev()
            if ok and cur.key() == layout.context_key(ns_id):
                ok = cur.prev()
            if ok and cur.key()[:4] == layout.ns_prefix(ns_id):
                return count, layout.read_u64(cur.key(), 4)
            return count, 0

    def _forget(self, txn: lmdb.Transaction, ns_id: int, value: layout.Buf) -> None:
        """Drop the order row of a log row the caller deletes or replaces, and count it."""
        txn.delete(layout.log_order_key(ns_id, layout.log_serial(value)), db=self._order)
        self._count(txn, ns_id, -1)

    def _count(self, txn: lmdb.Transaction, ns_id: int, delta: int) -> int:
        ckey = layout.log_count_key(ns_id)
        data = txn.get(ckey, db=self._order)
        count = (layout.read_u64(data) if data else 0) + delta
        if delta:
            txn.put(ckey, layout.u64(count), db=self._order)
        return count
