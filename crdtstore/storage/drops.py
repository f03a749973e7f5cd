"""Dropping a namespace everywhere: an observed-remove of everything its dropper had seen.

Why observed-remove, not a drop epoch. A drop epoch (a new namespace id, a replicated
"dropped at epoch e" fact, writes of the old epoch discarded) needs the epoch in every
batch, digest and range on the wire, a rule for a write of the old epoch that arrives
after the drop, and every process sharing a directory to notice that the id it cached
is gone. A drop that carries its dropper's causal context ``D`` of the namespace needs
none of that: applying it is exactly joining the delta "no entries, context ``D``" (what
``crdt.join`` does with it), the join this store already computes on every write. So:

- A drop commutes with every batch, repair and range, and with other drops: replicas
  that applied the same drops and deltas hold the same state, whatever the order. A
  write concurrent to the drop (a dot outside ``D``) survives it: add-wins at namespace
  level, as an OR-Set add wins over a concurrent remove and an LWW put over a concurrent
  delete here. The cost: a drop is not a fence against writers who have not heard of it.
- Nothing dropped comes back. Once ``D`` is in the namespace's context, every join
  (a batch, a repair, a reconciled range, from a peer that has not heard of the drop)
  treats a dot of ``D`` with no row here as removed (``kernel.join_dots``,
  ``kernel.unseen_dots``), and a batch within ``D`` as applied already.
- The namespace's record (id and type) stays, with its context: ids are never reused and
  every process caches them for its life (:mod:`.namespaces`), so a process sharing the
  directory needs no invalidation; its reads go to LMDB and find the rows gone from the
  drop's commit on. The rows, their bucket rows and the logged batches within ``D`` are
  freed. Kept: the context (a version vector, compacted) and the drop record. The
  namespace cannot be recreated with another type.

Delivery. A drop is the record ``[namespace, dropper] -> {namespace, type, by, context}``
in the reserved LWW-map :data:`DROPS_NAMESPACE`, which every node replicates, repairs and
bootstraps like ``__members``: a lost publication, or a node that was down, still gets
it. A dropper's contexts only grow, so its latest record of a namespace covers its
earlier ones; records of several droppers join. The dropper writes its record in the
transaction that drops the rows. A received record is applied by the role holder
(:meth:`ReceivedDrops.apply`, each sync tick), in one transaction with the marker below.

Invariant: ``meta`` row ``META_DROPPED + ns_id`` holds the join of the drops applied to
that namespace, written in the transaction that applied them; no row of the namespace
holds a dot it covers, and the namespace's context covers it (every later join adds only
dots the context has not seen). A record it covers is applied already.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from crdtstore.codec import LWW_MAP, STORED_MAX_CLOUD_DOTS, decode_context, encode_context
from crdtstore.crdt import CRDT_TYPES, CausalContext
from crdtstore.errors import DecodeError, Error, StorageError
from crdtstore.storage import layout
from crdtstore.storage.deltalog import DeltaLog
from crdtstore.storage.journal import DELETE, PUT, REMOVE, Journal
from crdtstore.storage.kernel import pack_row, winning_dot
from crdtstore.storage.namespaces import Namespaces
from crdtstore.storage.receive import holds_run
from crdtstore.storage.rows import RowWriter

log = logging.getLogger(__name__)

DROPS_NAMESPACE = "__drops"
"""The reserved LWW-map of drop records (``sync.settings.reserved_namespaces`` names it)."""

SCAN_CHUNK = 1024
"""Rows read per cursor pass while a drop removes them (a pass reads, then writes)."""


@dataclass(frozen=True, slots=True)
class DropRecord:
    namespace: str
    type_name: str
    by: str
    context: CausalContext


def record_key(namespace: str, by: str) -> bytes:
    """The key of ``by``'s drop record of ``namespace`` (msgpack of the pair: any names)."""
    return layout.pack([namespace, by])


def record_value(record: DropRecord) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "type": record.type_name,
        "by": record.by,
        "context": encode_context(record.context),
    }


def parse_record(value: Any) -> DropRecord:
    """A record as a peer wrote it (untrusted); DecodeError naming what is wrong."""
    if not isinstance(value, dict):
        raise DecodeError(f"drop record {value!r:.80} is not a map")
    namespace, type_name, by = value.get("namespace"), value.get("type"), value.get("by")
    if not isinstance(namespace, str) or not isinstance(by, str):
        raise DecodeError(f"drop record {value!r:.80} lacks its namespace or dropper")
    if type_name not in CRDT_TYPES:
        raise DecodeError(f"drop record of {namespace!r} names an unknown type {type_name!r}")
    context = decode_context(value.get("context"), STORED_MAX_CLOUD_DOTS)
    return DropRecord(namespace, str(type_name), by, context)


def read_marker(txn: lmdb.Transaction, meta: Any, ns_id: int) -> CausalContext:
    """The join of the drops applied to namespace ``ns_id`` (empty: none)."""
    data = txn.get(layout.META_DROPPED + layout.ns_prefix(ns_id), db=meta)
    return CausalContext() if data is None else layout.unpack_context(data)


def _covered(dot: list[Any], vv: Mapping[str, int], cloud: frozenset[Any]) -> bool:
    return bool(dot[1] <= vv.get(dot[0], 0) or (dot[0], dot[1]) in cloud)


def remove_dropped(
    txn: lmdb.Transaction,
    writer: RowWriter,
    names: Namespaces,
    deltalog: DeltaLog,
    meta: Any,
    ns_id: int,
    namespace: str,
    type_name: str,
    dropped: CausalContext,
    by: str,
) -> CausalContext | None:
    """Apply the drop ``dropped`` (by ``by``) to namespace ``ns_id`` in ``txn``: remove
    the dots it covers from every row (a row left with none goes, its bucket follows),
    journal what readers see change, free the logged batches it covers, join it into the
    namespace's context and the marker. The new context, or None if the marker covered
    ``dropped`` already (nothing done). A corrupt row raises DecodeError (the caller's
    transaction is aborted: nothing changes)."""
    marker = read_marker(txn, meta, ns_id)
    if dropped <= marker:
        return None
    stamped = type_name == LWW_MAP
    vv, cloud = dropped.vv, dropped.cloud
    base = layout.bucket_base(ns_id)
    after: bytes | None = None
    while True:
        chunk = _rows_after(txn, writer, ns_id, after)
        if not chunk:
            break
        after = chunk[-1][0]
        for rkey, data in chunk:
            try:
                dots = layout.checked_dots(layout.row_dots(data), stamped)
            except DecodeError as exc:
                raise DecodeError(f"namespace {namespace!r}: {exc}") from exc
            kept = [d for d in dots if not _covered(d, vv, cloud)]
            if len(kept) == len(dots):
                continue
            ekey = bytes(layout.row_ekey(rkey))
            writer.put_row(base | rkey[4], rkey, data, pack_row(ekey, kept) if kept else None)
            key = layout.unpack_stored(ekey)
            if not stamped:
                if not kept:
                    writer.event(namespace, key, True, False, by, REMOVE)
                continue
            was = winning_dot(dots)
            if not kept:
                writer.event(namespace, key, was[3], None, by, DELETE)
            else:
                now = winning_dot(kept)
                if (now[0], now[1]) != (was[0], was[1]):
                    writer.event(namespace, key, was[3], now[3], by, PUT)
    deltalog.drop_where(
        txn, ns_id, lambda origin, first, last: holds_run(dropped, origin, first, last)
    )
    ctx = names.load_context(txn, ns_id)
    new_ctx = ctx.join(dropped)
    if new_ctx != ctx:
        names.store_context(txn, ns_id, new_ctx)
    txn.put(
        layout.META_DROPPED + layout.ns_prefix(ns_id),
        layout.pack_stored(encode_context(marker.join(dropped))),
        db=meta,
    )
    return new_ctx


def _rows_after(
    txn: lmdb.Transaction, writer: RowWriter, ns_id: int, after: bytes | None
) -> list[tuple[bytes, bytes]]:
    """Up to :data:`SCAN_CHUNK` state rows of ``ns_id`` after row key ``after``, copied:
    the caller rewrites them once the cursor is closed."""
    prefix = layout.ns_prefix(ns_id)
    out: list[tuple[bytes, bytes]] = []
    with txn.cursor() as cur:  # the transaction's default table: state
        ok = cur.set_range(after if after is not None else prefix)
        if ok and after is not None and cur.key() == after:
            ok = cur.next()
        while ok and len(out) < SCAN_CHUNK:
            rkey = bytes(cur.key())
            if rkey[:4] != prefix:
                break
            out.append((rkey, bytes(cur.value())))
            ok = cur.next()
    return out


class ReceivedDrops:
    """Applies the drop records this directory received (the role holder calls
    :meth:`apply` each sync tick). Cheap while :data:`DROPS_NAMESPACE` is unchanged: one
    read of its context row."""

    def __init__(
        self,
        write: Callable[[Callable[[lmdb.Transaction], Any]], Any],
        read: Callable[[Callable[[lmdb.Transaction], Any]], Any],
        dbs: Mapping[str, Any],
        names: Namespaces,
        deltalog: DeltaLog,
        journal: Journal,
        topics: Callable[[lmdb.Transaction], tuple[str, ...] | None],
        stats: Counter[str],
        path: Path,
    ) -> None:
        self._write, self._read = write, read
        self._dbs = dbs
        self._names = names
        self._log = deltalog
        self._journal = journal
        self._topics = topics
        self._stats = stats
        self._path = path
        self._seen: bytes | None = None  # DROPS_NAMESPACE's context row when last applied
        self._failing: bytes | None = None  # the records whose apply last met a full store

    def _version(self, txn: lmdb.Transaction) -> bytes | None:
        found = self._names.lookup(txn, DROPS_NAMESPACE)
        if found is None:
            return None
        data = txn.get(layout.context_key(found[0]), db=self._dbs["logorder"])
        return None if data is None else bytes(data)

    def retry_due(self) -> bool:
        """Whether the last application failed for want of room and waits to be tried
        again (a caller that looks only when the directory changed must look anyway)."""
        return self._failing is not None

    def apply(self) -> list[str]:
        """Apply every record not applied yet; the namespaces whose rows changed."""
        version = self._read(self._version)
        if version is None or version == self._seen:
            return []
        try:
            dropped: list[str] = self._write(self._apply)
        except StorageError as exc:
            # Nothing was applied (one transaction), and room may come back (a full map
            # or disk): tried again next tick, as repair tries its batches again; said
            # once per set of records, counted every time.
            if self._failing != version:
                self._failing = version
                self._refuse("drops_failed", f"applying the drop records failed: {exc}")
            else:
                self._stats["drops_failed"] += 1
            return []
        except Error as exc:
            # Nothing was applied. Tried again when a record changes or the role holder
            # restarts, not each tick: the cause (a corrupt row) is an operator's to fix,
            # and was said once.
            self._refuse("drops_failed", f"applying the drop records failed: {exc}")
            dropped = []
        self._seen = version
        self._failing = None
        self._stats["drops_applied"] += len(dropped)
        for name in dropped:
            log.info("%s: applied a drop of namespace %r", self._path, name)
        return dropped

    def _apply(self, txn: lmdb.Transaction) -> list[str]:
        found = self._names.lookup(txn, DROPS_NAMESPACE)
        if found is None:
            return []
        joined: dict[str, DropRecord] = {}
        for dots in _all_dots(txn, found[0]):
            try:
                rec = parse_record(winning_dot(layout.checked_dots(dots, stamped=True))[3])
            except DecodeError as exc:
                self._refuse("drop_records_invalid", f"a drop record is malformed: {exc}")
                continue
            held = joined.get(rec.namespace)
            if held is not None:
                context = held.context.join(rec.context)
                rec = DropRecord(rec.namespace, held.type_name, rec.by, context)
            joined[rec.namespace] = rec
        topics = self._topics(txn)
        writer = RowWriter(txn, self._dbs["buckets"])
        done = []
        for name, rec in sorted(joined.items()):
            target = self._names.lookup(txn, name)
            if target is None:
                if topics is not None and name not in topics:
                    continue  # not held here: nothing to remove, nothing to guard
                # Held here from now on, empty and with the drop's context, so a peer that
                # has not heard of the drop cannot bring the dropped entries here.
                target = self._names.ensure(txn, name, rec.type_name)[:2]
            if target[1] != rec.type_name:
                self._refuse(
                    "drop_records_type_mismatch",
                    f"drop of {name!r} by {rec.by!r} names a {rec.type_name}; here it holds "
                    f"a {target[1]}: not applied",
                )
                continue
            ctx = remove_dropped(
                txn, writer, self._names, self._log, self._dbs["meta"],
                target[0], name, target[1], rec.context, rec.by,
            )  # fmt: skip
            if ctx is not None:
                done.append(name)
        writer.finish(self._journal)
        return done

    def _refuse(self, counter: str, message: str) -> None:
        self._stats[counter] += 1
        log.error("%s: %s (counted in %s)", self._path, message, counter)


def _all_dots(txn: lmdb.Transaction, ns_id: int) -> list[list[list[Any]]]:
    """The dots of every row of a small namespace (the drop records)."""
    prefix = layout.ns_prefix(ns_id)
    out = []
    with txn.cursor() as cur:  # the transaction's default table: state
        ok = cur.set_range(prefix)
        while ok and cur.key()[:4] == prefix:
            try:
                out.append(layout.row_dots(cur.value()))
            except DecodeError as exc:
                log.error("a row of %s is corrupt, skipped: %s", DROPS_NAMESPACE, exc)
            ok = cur.next()
    return out
