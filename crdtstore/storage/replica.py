"""The LMDB replica: one node directory's state, contexts, delta log and change journal.

Theory of operation. One LMDB environment per node directory holds the tables listed in
:mod:`crdtstore.storage.layout`. Every change, local or remote, happens in one LMDB write
transaction that updates the state rows it touches, their fingerprint buckets, the
namespace's causal context, the delta log and the change journal together: a crash
leaves all of a change or none of it. Nothing of the state is loaded at open; every read
goes to LMDB, so several processes sharing the directory see each other's commits at
once (LMDB is multi-process safe; it is never opened with ``lock=False``).

Fingerprints: each row stores its entry hash, and per namespace 256 bucket rows (by the
first byte of the key hash) hold the XOR and count of their rows, updated in the same
transaction. A fingerprint of whole buckets reads bucket rows; only the partial buckets at
a range's edges are scanned.

Rules of use:

- Never open a directory before ``fork()`` and use it after (LMDB forbids it). A replica
  refuses calls from a process other than the one that opened it.
- The map grows by itself: a write that fills it is retried after doubling the map (up
  to ``max_map_size``); a process that finds the map grown by another adopts the new
  size. :class:`~crdtstore.storage.gate.Gate` keeps resizes away from open transactions.
- Remote LWW timestamps further ahead than ``max_clock_drift_ms`` make the whole batch
  or range be rejected (:class:`~crdtstore.errors.ClockDriftError`, counted).
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import msgpack

from crdtstore.codec import MAX_REPLICA_ID_LEN, Row, encode_context
from crdtstore.crdt import (
    CRDT_TYPES,
    CausalContext,
    Dot,
    DotMap,
    HybridClock,
    check_drift,
)
from crdtstore.errors import (
    ClockDriftError,
    ClosedError,
    DecodeError,
    IdentityMismatch,
    InvalidValue,
    StorageError,
    TypeMismatch,
)
from crdtstore.keyhash import entry_digest
from crdtstore.settings import NodeSettings
from crdtstore.storage import journal, layout
from crdtstore.storage.gate import Gate
from crdtstore.storage.rows import RowWriter, entry_from_row
from crdtstore.sync.messages import MAX_NAMESPACE_LEN, DeltaBatch, PackedRange
from crdtstore.sync.shipped import ShippedEntries

if TYPE_CHECKING:
    from crdtstore.storage.local import LocalWrite

log = logging.getLogger(__name__)

T = TypeVar("T")
EVENTS_PER_JOURNAL_ROW = 16_384
"""A commit's change events go in rows of at most this many (all rows of one commit
become visible together)."""
LWW = "lww_map"
ORSET = "or_set"
_NO_GROUP = object()  # an origin no event has (None is one: a repair that revealed a removal)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def check_namespace(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidValue(f"namespace name {name!r} has type {type(name).__name__}; expected str")
    try:
        size = len(name.encode())
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"namespace name {name!r} is not valid UTF-8") from exc
    if not 1 <= size <= MAX_NAMESPACE_LEN:
        raise InvalidValue(
            f"namespace name {name!r} is {size} bytes; allowed 1 to {MAX_NAMESPACE_LEN}"
        )
    return name


def check_node_id(node_id: object) -> str:
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_REPLICA_ID_LEN:
        raise InvalidValue(f"node id {node_id!r} must be a str of 1 to {MAX_REPLICA_ID_LEN} chars")
    try:
        node_id.encode()
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"node id {node_id!r} is not valid UTF-8") from exc
    return node_id


class LMDBReplica:
    """Implements :class:`crdtstore.sync.replica.Replica` over one LMDB environment."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        node_id: str | None = None,
        settings: NodeSettings | None = None,
        *,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings if settings is not None else NodeSettings()
        self.path = Path(path)
        self.now_ms = now_ms
        self.stats: Counter[str] = Counter()
        self._pid = os.getpid()
        self._gate = Gate()
        self._ns_cache: dict[str, tuple[int, str]] = {}
        self._ctx_cache: dict[int, tuple[bytes, CausalContext]] = {}
        self._bucket_indexes: dict[
            tuple[int, int], tuple[int, list[int], list[int], list[bytes]]
        ] = {}
        self._clock_last = 0
        self._closed = False
        if node_id is not None:
            check_node_id(node_id)
        self._env = self._open_env()
        try:
            self.dbs = self._open_dbs()
            self._meta, self._nsdb = self.dbs["meta"], self.dbs["namespaces"]
            self._state, self._orderdb = self.dbs["state"], self.dbs["logorder"]
            self._bucketdb, self._logdb = self.dbs["buckets"], self.dbs["log"]
            self._journaldb = self.dbs["journal"]
            self._map_size: int = self._env.info()["map_size"]
            self._node_id = self._write(lambda txn: self._init_meta(txn, node_id))
        except BaseException:
            self._env.close()
            raise
        self._flusher: _Flusher | None = None
        if self.settings.durability == "async":
            self._flusher = _Flusher(self, self.settings.flush_interval_ms / 1000)

    # -- opening and closing --------------------------------------------------------------

    def _open_env(self) -> lmdb.Environment:
        sync = self.settings.durability == "sync"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            return lmdb.open(
                str(self.path),
                map_size=self.settings.map_size,
                max_dbs=len(layout.TABLES) + 1,
                sync=sync,
                metasync=sync,
                lock=True,
                subdir=True,
                max_spare_txns=1,
            )
        except (OSError, lmdb.Error) as exc:
            raise StorageError(f"cannot open node directory {self.path}: {exc}") from exc

    def _open_dbs(self) -> dict[str, Any]:
        """The named databases. Another process may grow the map at any moment (before
        or while we open): adopt the file's size and retry, as every transaction does."""
        for _ in range(100):
            try:
                return {name: self._env.open_db(name.encode()) for name in layout.TABLES}
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
        raise StorageError(f"{self.path}: the map kept growing while it was being opened")

    def _init_meta(self, txn: lmdb.Transaction, node_id: str | None) -> str:
        meta = self.dbs["meta"]
        fmt = txn.get(layout.META_FORMAT, db=meta)
        version = layout.read_u64(fmt) if fmt is not None and len(fmt) == 8 else fmt
        if version is None:
            txn.put(layout.META_FORMAT, layout.u64(layout.FORMAT_VERSION), db=meta)
            txn.put(layout.META_NEXT_NS, layout.u64(1), db=meta)
        elif version in (1, 2, 3, 4, 5):
            if version == 1:
                _migrate_from_format_1(txn, self.dbs)
            if version <= 2:
                _migrate_from_format_2(self._env, txn, self.dbs)
            # 4 -> 5 rewrote nothing: format 5 reads what format 4 wrote (clouds without
            # runs, batches of wire format 1); it only kept a build for 4 from reading
            # what 5 writes. 5 -> 6 moves every key to its new bucket.
            _rebucket_state(self._env, txn, self.dbs, 12 if version <= 3 else layout.ROW_EKEY)
            txn.put(layout.META_FORMAT, layout.u64(layout.FORMAT_VERSION), db=meta)
            log.info("storage format migrated from %d to %d", version, layout.FORMAT_VERSION)
        elif version != layout.FORMAT_VERSION:
            raise StorageError(
                f"{self.path} has storage format version {version!r}; this build reads only "
                f"version {layout.FORMAT_VERSION}"
            )
        stored = txn.get(layout.META_NODE_ID, db=meta)
        if stored is not None:
            stored_id = bytes(stored).decode()
            if node_id is not None and node_id != stored_id:
                raise IdentityMismatch(
                    f"{self.path} belongs to node {stored_id!r}, not {node_id!r}"
                )
            return stored_id
        chosen = node_id if node_id is not None else secrets.token_hex(4)
        txn.put(layout.META_NODE_ID, chosen.encode(), db=meta)
        return chosen

    def topics(self) -> tuple[str, ...] | None:
        """The namespaces this directory replicates, as last declared (None: all)."""

        def read(txn: lmdb.Transaction) -> tuple[str, ...] | None:
            data = txn.get(layout.META_TOPICS, db=self.dbs["meta"])
            if data is None:
                return None
            value = layout.unpack_stored(data)
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise StorageError(f"{self.path}: corrupt topics record")
            return tuple(value)

        return self._read(read)

    def declare_topics(self, topics: tuple[str, ...] | None) -> None:
        """Persist the topics, so every process sharing the directory enforces them."""

        def write(txn: lmdb.Transaction) -> None:
            if topics is None:
                txn.delete(layout.META_TOPICS, db=self.dbs["meta"])
            else:
                txn.put(layout.META_TOPICS, layout.pack_stored(sorted(topics)), db=self.dbs["meta"])

        self._check()
        self._write(write)

    def close(self) -> None:
        """Flush (with async durability) and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._flusher.stop()
        if os.getpid() == self._pid:
            try:
                if self.settings.durability == "async":
                    self._env.sync(True)
            finally:
                self._env.close()

    def __enter__(self) -> LMDBReplica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"replica {self.path} is closed")
        if os.getpid() != self._pid:
            raise StorageError(
                f"replica {self.path} was opened in process {self._pid} and used after a fork; "
                "open it in the child instead"
            )

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    # -- transactions, map growth ---------------------------------------------------------

    def _begin_write(self) -> lmdb.Transaction:
        """Begin a write transaction; the caller holds the gate shared.

        Every transaction of a replica has the state table as its default database: the
        hot paths (a row's get and put, once per key written, read or received) pass no
        ``db=``, which py-lmdb parses at ~0.15 us a call. Every other table is named."""
        return self._env.begin(write=True, db=self._state)

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction, growing the map and retrying as needed.

        ``fn`` may run several times; it must change Python state only through its result.
        """
        while True:
            seen = self._map_size
            self._gate.enter()
            try:
                txn = self._begin_write()
                try:
                    result = fn(txn)
                    txn.commit()
                    return result
                except BaseException:
                    txn.abort()
                    raise
            except lmdb.MapFullError:
                pass
            except lmdb.MapResizedError:
                seen = -1
            except lmdb.Error as exc:
                raise StorageError(f"write to {self.path} failed: {exc}") from exc
            finally:
                self._gate.exit()
            if seen < 0:
                self._adopt_map_size()
            else:
                self._grow(seen)

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one read transaction (one consistent snapshot)."""
        self._check()
        while True:
            self._gate.enter()
            try:
                try:
                    txn = self._env.begin(db=self._state)  # see _begin_write
                except lmdb.MapResizedError:
                    pass
                else:
                    try:
                        return fn(txn)
                    except lmdb.Error as exc:
                        raise StorageError(f"read from {self.path} failed: {exc}") from exc
                    finally:
                        txn.abort()
            except lmdb.Error as exc:
                raise StorageError(f"read from {self.path} failed: {exc}") from exc
            finally:
                self._gate.exit()
            self._adopt_map_size()

    def _grow(self, seen: int) -> None:
        """Double the map after a MapFullError seen at size ``seen``."""
        with self._gate.exclusive():
            if self._map_size > seen:
                return  # another thread grew it meanwhile
            current = self._env.info()["map_size"]
            limit = self.settings.max_map_size
            if current >= limit:
                self.stats["map_full"] += 1
                raise StorageError(
                    f"{self.path}: the LMDB map is full at max_map_size={limit} bytes; "
                    "nothing was written (raise max_map_size or free space)"
                )
            self._set_map_size(min(max(current * 2, 1 << 20), limit))

    def reserve(self, nbytes: int) -> None:
        """Grow the map now if fewer than ``nbytes`` of it are free: a large write (a
        bootstrap's one transaction) that fills the map is aborted and run again from the
        start after each doubling, so making room first saves repeating most of it."""
        with self._gate.exclusive():
            info = self._env.info()
            used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
            limit = self.settings.max_map_size
            if info["map_size"] - used >= nbytes or info["map_size"] >= limit:
                return  # room enough, or the write will fail with a clear error anyway
            self._set_map_size(min(max(info["map_size"] * 2, used + nbytes), limit))

    def _set_map_size(self, size: int) -> None:
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as exc:
            raise StorageError(f"{self.path}: cannot grow the map: {exc}") from exc
        self._map_size = self._env.info()["map_size"]
        self.stats["map_grown"] += 1
        log.info("%s: map grown to %d bytes", self.path, self._map_size)

    def _adopt_map_size(self) -> None:
        """Another process grew the map: map its new size here."""
        with self._gate.exclusive():
            try:
                self._env.set_mapsize(0)
            except lmdb.Error as exc:
                raise StorageError(f"{self.path}: cannot adopt the grown map: {exc}") from exc
            self._map_size = self._env.info()["map_size"]
            self.stats["map_adopted"] += 1

    def get_row(self, rkey: bytes) -> bytes | None:
        """The state row stored under ``rkey``, in a fresh snapshot: the hot path of ``get``
        / ``in`` (``layout.ns_prefix`` + ``layout.row_key_suffix``).

        A new read transaction per call, so commits of other processes are seen at once;
        py-lmdb renews a spare reader slot for it (``max_spare_txns``), which is cheap.
        """
        if self._closed:
            raise ClosedError(f"replica {self.path} is closed")
        gate = self._gate
        lock = gate._lock
        while True:
            # gate.enter() / gate.exit(), inlined: they are a third of a get otherwise.
            lock.acquire()
            if gate._exclusive:
                lock.release()
                gate.enter()
            else:
                gate._active += 1
                lock.release()
            try:
                txn = self._env.begin(db=self._state)  # see _begin_write
                try:
                    data: bytes | None = txn.get(rkey)
                finally:
                    txn.abort()
                return data
            except lmdb.MapResizedError:
                pass
            except lmdb.Error as exc:
                raise StorageError(f"read from {self.path} failed: {exc}") from exc
            finally:
                lock.acquire()
                gate._active -= 1
                if not gate._active and gate._exclusive:
                    gate._cond.notify_all()
                lock.release()
            self._adopt_map_size()

    def begin_local(self) -> LocalWrite:
        """A write transaction for local mutations (see :class:`LocalWrite`)."""
        from crdtstore.storage.local import LocalWrite

        self._check()
        return LocalWrite(self)

    @property
    def clock(self) -> HybridClock:
        """The last timestamp this process issued."""
        return HybridClock(self._clock_last)

    # -- namespaces and contexts ------------------------------------------------------------

    def _lookup_ns(self, txn: lmdb.Transaction, name: str) -> tuple[int, str] | None:
        hit = self._ns_cache.get(name)
        if hit is not None:
            return hit
        data = txn.get(name.encode(), db=self.dbs["namespaces"])
        if data is None:
            return None
        ns_id, type_name = layout.unpack_stored(data)
        return int(ns_id), str(type_name)

    def _ensure_ns(self, txn: lmdb.Transaction, name: str, type_name: str) -> tuple[int, str, bool]:
        """``(ns_id, type, created)``; raises TypeMismatch, writes only when creating."""
        check_namespace(name)
        if type_name not in CRDT_TYPES:
            raise InvalidValue(f"unknown CRDT type {type_name!r}; known: {sorted(CRDT_TYPES)}")
        found = self._lookup_ns(txn, name)
        if found is not None:
            if found[1] != type_name:
                raise TypeMismatch(f"namespace {name!r} holds a {found[1]}, not a {type_name}")
            return found[0], found[1], False
        meta = self.dbs["meta"]
        ns_id = layout.read_u64(txn.get(layout.META_NEXT_NS, db=meta) or layout.u64(1))
        txn.put(layout.META_NEXT_NS, layout.u64(ns_id + 1), db=meta)
        txn.put(name.encode(), layout.pack_stored([ns_id, type_name]), db=self.dbs["namespaces"])
        return ns_id, type_name, True

    def remember_ns(self, name: str, ns_id: int, type_name: str) -> None:
        """Cache a namespace once the transaction that created or read it committed."""
        self._ns_cache[name] = (ns_id, type_name)

    def load_ctx(self, txn: lmdb.Transaction, ns_id: int) -> CausalContext:
        data = txn.get(layout.context_key(ns_id), db=self._orderdb)
        if data is None:
            return CausalContext()
        cached = self._ctx_cache.get(ns_id)
        if cached is not None and cached[0] == data:
            return cached[1]
        data = bytes(data)
        ctx = layout.unpack_context(data)
        self._ctx_cache[ns_id] = (data, ctx)
        return ctx

    def store_ctx(self, txn: lmdb.Transaction, ns_id: int, ctx: CausalContext) -> bytes:
        data = layout.pack_stored(encode_context(ctx))
        txn.put(layout.context_key(ns_id), data, db=self._orderdb)
        return data

    def namespaces(self) -> Mapping[str, str]:
        def read(txn: lmdb.Transaction) -> dict[str, str]:
            out = {}
            for name, data in txn.cursor(db=self._nsdb):
                out[bytes(name).decode()] = str(layout.unpack_stored(data)[1])
            return out

        return self._read(read)

    def ensure_namespace(self, namespace: str, type_name: str) -> None:
        self._check()
        check_namespace(namespace)
        hit = self._ns_cache.get(namespace)
        if hit is not None and hit[1] == type_name:
            return
        ns_id, tname, _ = self._write(lambda txn: self._ensure_ns(txn, namespace, type_name))
        self.remember_ns(namespace, ns_id, tname)

    def namespace_id(self, namespace: str, type_name: str) -> int:
        """Id of ``namespace``, created as ``type_name`` if new (TypeMismatch if it differs)."""
        self._check()
        hit = self._ns_cache.get(namespace)
        if hit is not None:
            if hit[1] != type_name:
                raise TypeMismatch(f"namespace {namespace!r} holds a {hit[1]}, not a {type_name}")
            return hit[0]
        ns_id, tname, _ = self._write(lambda txn: self._ensure_ns(txn, namespace, type_name))
        self.remember_ns(namespace, ns_id, tname)
        return ns_id

    def context(self, namespace: str) -> CausalContext:
        def read(txn: lmdb.Transaction) -> CausalContext:
            found = self._lookup_ns(txn, namespace)
            return CausalContext() if found is None else self.load_ctx(txn, found[0])

        return self._read(read)

    # -- the sync engine's side: batches, log, ranges ---------------------------------------

    def _check_drift(self, value: DotMap[Any]) -> None:
        if value.type_name != LWW:
            return
        # The newest timestamp is the one that can be too far ahead.
        self._check_newest(
            max((ts for e in value.entries.values() for ts, _ in e.values()), default=0)
        )

    def _check_newest(self, timestamp: int) -> None:
        try:
            check_drift(timestamp, self.now_ms(), self.settings.max_clock_drift_ms)
        except ClockDriftError:
            self.stats["rejected_clock_drift"] += 1
            raise

    def apply_batch(self, batch: DeltaBatch, encoded: bytes) -> bool:
        return self.apply_batches([(batch, encoded)])[0]

    def apply_batches(self, batches: Sequence[tuple[DeltaBatch, bytes]]) -> list[bool]:
        """``apply_batch`` of each, in order, in ONE transaction: one commit (one fsync)
        for a node catching up on several. Raises, changing nothing, where one batch alone
        would raise."""
        self._check()
        for batch, _ in batches:
            if batch.newest:
                self._check_newest(batch.newest)

        def apply(txn: lmdb.Transaction) -> tuple[list[bool], dict[str, _NsApplied]]:
            writer = RowWriter(txn, self._bucketdb)
            done: dict[str, _NsApplied] = {}
            changed = []
            for batch, encoded in batches:
                ns = batch.namespace
                ns_id, tname, _ = self._ensure_ns(txn, ns, batch.type_name)
                held = done.get(ns)
                if held is None:
                    held = done[ns] = _NsApplied(ns_id, tname, self.load_ctx(txn, ns_id))
                ctx, origin = held.ctx, batch.origin
                if _holds_run(ctx, origin, batch.first, batch.last):
                    changed.append(False)  # this batch's deltas were applied
                    continue
                stamped, their_ctx = tname == LWW, batch.rest
                run = (origin, batch.first, batch.last)
                prefix = layout.ns_prefix(ns_id)
                fresh: list[_Received] = []
                for row in batch.rows:  # checked when the batch was decoded
                    if not self._join_key(
                        writer, ns_id, prefix, ns, stamped, ctx, row, their_ctx, run, origin
                    ):
                        fresh.append(row)
                _insert_rows(writer, ns_id, ns, stamped, fresh, ctx, origin)
                held.ctx = ctx.join(their_ctx).with_run(*run)
                held.changed = True
                self.log_put(txn, ns_id, origin, batch.first, batch.last, encoded)
                changed.append(True)
            for held in done.values():
                if held.changed:
                    held.data = self.store_ctx(txn, held.ns_id, held.ctx)
            self._finish(writer)
            return changed, done

        changed, done = self._write(apply)
        for ns, held in done.items():
            self.remember_ns(ns, held.ns_id, held.type_name)
            if held.changed:
                self._ctx_cache[held.ns_id] = (held.data, held.ctx)
        self.stats["batches_applied"] += sum(changed)
        return changed

    def _join_key(
        self,
        writer: RowWriter,
        ns_id: int,
        prefix: bytes,
        namespace: str,
        stamped: bool,
        my_ctx: CausalContext,
        theirs: _Received,
        their_ctx: CausalContext,
        run: tuple[str, int, int] | None,
        origin: str | None,
    ) -> bool:
        """Join one key's received dots (a checked row, :data:`crdtstore.codec.Row`) into
        its row here; False, doing nothing, when the key has no row here: callers collect
        those for :func:`_insert_rows`, one loop for all.

        ``join_entry``, and ``lwwmap.winner`` for the change event, on the dots as stored
        and as received, without building an entry of Dot objects. Their context is
        ``their_ctx`` plus ``run`` (a batch's own dots, ``(origin, first, last)``). The
        differential tests compare the result, events included, with the pure values."""
        key, ekey, position, their_dots, edig = theirs
        rkey = prefix + position
        old = writer.get(rkey)
        if old is None:
            return False
        dots = layout.checked_dots(layout.row_dots(old), stamped)  # a corrupt row: DecodeError
        tvv, tcloud = their_ctx.vv, their_ctx.cloud
        rr, r_first, r_last = run if run is not None else ("", 0, -1)
        if len(dots) == 1 and len(their_dots) == 1 and edig is not None:
            # The usual update: one dot here, which their context covers, replaced by one
            # dot we have not seen. The row becomes theirs as received (its hash came with
            # it), and the one value a reader sees changes.
            mine, got = dots[0], their_dots[0]
            r, s = mine[0], mine[1]
            if (
                (r != got[0] or s != got[1])
                and (s <= tvv.get(r, 0) or (r == rr and r_first <= s <= r_last) or (r, s) in tcloud)
                and got[1] > my_ctx.vv.get(got[0], 0)
                and (got[0], got[1]) not in my_ctx.cloud
            ):
                writer.put_row(ns_id, position[0], rkey, old, edig + layout.pack(their_dots))
                if stamped:
                    writer.event(namespace, key, mine[3], got[3], origin or got[0])
                return True
        live = {(d[0], d[1]) for d in their_dots}
        kept = [
            d
            for d in dots
            if (d[0], d[1]) in live
            or (
                d[1] > tvv.get(d[0], 0)
                and (d[0], d[1]) not in tcloud
                and not (d[0] == rr and r_first <= d[1] <= r_last)
            )
        ]
        held = {(d[0], d[1]) for d in dots}
        vv, cloud = my_ctx.vv, my_ctx.cloud
        added = [
            d
            for d in their_dots
            if (d[0], d[1]) not in held and d[1] > vv.get(d[0], 0) and (d[0], d[1]) not in cloud
        ]
        if not added and len(kept) == len(dots):
            return True
        row = kept + added
        new: bytes | None = None
        if row:
            row.sort(key=_dot_order)
            new = entry_digest(ekey, row) + layout.pack(row)
        writer.put_row(ns_id, position[0], rkey, old, new)
        if stamped:
            was = max(dots, key=_lww_order)
            now = max(row, key=_lww_order) if row else None
            if now is None or (now[0], now[1]) != (was[0], was[1]):
                if origin is None and now is not None:
                    origin = now[0]
                writer.event(namespace, key, was[3], None if now is None else now[3], origin)
        elif not row:  # an OR-Set row changes what a reader sees only when it goes
            writer.event(namespace, key, True, False, origin)
        return True

    def _finish(self, writer: RowWriter) -> None:
        writer.flush()
        self._journal(writer)

    def _journal(self, writer: RowWriter) -> None:
        """Journal the changes ``writer`` recorded, in one row (none if there are none)."""
        groups = [g for g in writer.groups if g[2]]  # a local write's may be empty
        if groups:
            journal.append(writer.txn, self._journaldb, groups, self.settings.journal_max_entries)

    def log_batches(self, namespace: str, origin: str, first: int, last: int) -> list[bytes] | None:
        def read(txn: lmdb.Transaction) -> list[bytes] | None:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                return None
            prefix = layout.log_prefix(found[0], origin)
            out: list[bytes] = []
            need, best_last = first, 0
            best: layout.Buf = b""
            with txn.cursor(db=self._logdb) as cur:
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

        return self._read(read)

    def trim_log(self, namespace: str, origin: str, upto: int) -> int:
        self._check()

        def trim(txn: lmdb.Transaction) -> int:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                return 0
            prefix = layout.log_prefix(found[0], origin)
            dropped = 0
            with txn.cursor(db=self._logdb) as cur:
                ok = cur.set_range(prefix)
                # A batch starting above `upto` ends above it too: stop there.
                while ok and cur.key()[:12] == prefix and layout.log_first(cur.key()) <= upto:
                    if layout.log_last(cur.value()) <= upto:
                        self._log_forget(txn, found[0], cur.value())
                        ok = cur.delete()
                        dropped += 1
                    else:
                        ok = cur.next()
            return dropped

        return self._write(trim)

    def log_put(
        self, txn: lmdb.Transaction, ns_id: int, origin: str, first: int, last: int, encoded: bytes
    ) -> None:
        """Log a batch (replacing a shorter one with the same origin and first seq)."""
        lkey = layout.log_key(ns_id, origin, first)
        old = txn.get(lkey, db=self._logdb)
        if old is not None:
            if layout.log_last(old) >= last:
                return
            self._log_forget(txn, ns_id, old)
        count, serial = self._log_tail(txn, ns_id)
        txn.put(lkey, layout.pack_log(last, serial + 1, origin, encoded), db=self._logdb)
        order = self.dbs["logorder"]
        txn.put(layout.log_order_key(ns_id, serial + 1), lkey, db=order)
        txn.put(layout.log_count_key(ns_id), layout.u64(count + 1), db=order)

    def _log_tail(self, txn: lmdb.Transaction, ns_id: int) -> tuple[int, int]:
        """``(logged batches, newest serial)`` of a namespace: its count row, and the newest
        order row just before its context row (read together: they share a page)."""
        with txn.cursor(db=self.dbs["logorder"]) as cur:
            if not cur.set_key(layout.log_count_key(ns_id)):
                return 0, 0  # nothing was ever logged here
            count = layout.read_u64(cur.value())
            ok = cur.prev()
            if ok and cur.key() == layout.context_key(ns_id):
                ok = cur.prev()
            if ok and cur.key()[:4] == layout.ns_prefix(ns_id):
                return count, layout.read_u64(cur.key(), 4)
            return count, 0

    def _log_forget(self, txn: lmdb.Transaction, ns_id: int, value: layout.Buf) -> None:
        """Drop the order row of a log row the caller deletes or replaces, and count it."""
        txn.delete(layout.log_order_key(ns_id, layout.log_serial(value)), db=self.dbs["logorder"])
        self._log_count(txn, ns_id, -1)

    def _log_count(self, txn: lmdb.Transaction, ns_id: int, delta: int) -> int:
        ckey = layout.log_count_key(ns_id)
        order = self.dbs["logorder"]
        data = txn.get(ckey, db=order)
        count = (layout.read_u64(data) if data else 0) + delta
        if delta:
            txn.put(ckey, layout.u64(count), db=order)
        return count

    def bound_log(self, namespace: str, max_batches: int) -> int:
        """Drop the oldest logged batches (append order) until at most ``max_batches`` stay."""
        self._check()

        def bound(txn: lmdb.Transaction) -> int:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                return 0
            ns_id = found[0]
            excess = self._log_count(txn, ns_id, 0) - max_batches
            if excess <= 0:
                return 0
            dropped = 0
            end = layout.context_key(ns_id)  # then its count: the order rows are before
            with txn.cursor(db=self.dbs["logorder"]) as cur:
                ok = cur.set_range(layout.ns_prefix(ns_id))
                while dropped < excess and ok and bytes(cur.key()) < end:
                    lkey = cur.value()
                    txn.delete(lkey, db=self._logdb)
                    ok = cur.delete()
                    dropped += 1
            if dropped:
                self._log_count(txn, ns_id, -dropped)
            return dropped

        return self._write(bound)

    def _scan(
        self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
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

    def _read_scan(
        self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """:meth:`_scan` in a read transaction: the rows of a bucket the range only cuts
        are picked out by the bucket's index (:meth:`_bucket_index`) and read one by one,
        instead of reading the bucket and hashing every key. A peer repairing a split
        bucket asks for the parts that differ one at a time, as it asked for their
        fingerprints, which built the index."""
        if lo >= hi:
            return
        width, shift = 1 << layout.BUCKET_SHIFT, layout.BUCKET_SHIFT
        _, _, first_cut, last_cut = layout.range_scan(ns_id, lo, hi)  # cut buckets, or -1
        if first_cut >= 0:
            yield from self._cut_rows(txn, ns_id, first_cut, lo, hi)
        whole_lo = (lo >> shift) + (first_cut >= 0)  # whole buckets: whole_lo..whole_hi-1
        whole_hi = ((hi - 1) >> shift) + 1 - (last_cut >= 0)
        if whole_lo < whole_hi:
            yield from self._scan(txn, ns_id, whole_lo * width, whole_hi * width)
        if last_cut >= 0 and last_cut != first_cut:  # one bucket cut at both ends: done
            yield from self._cut_rows(txn, ns_id, last_cut, lo, hi)

    def _cut_rows(
        self, txn: lmdb.Transaction, ns_id: int, bucket: int, lo: int, hi: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """The rows of ``bucket`` whose key hash is in ``[lo, hi)``, in row order."""
        width = 1 << layout.BUCKET_SHIFT
        hashes, _, ekeys = self._bucket_index(txn, ns_id, bucket)
        i = bisect.bisect_left(hashes, max(lo, bucket * width))
        j = bisect.bisect_left(hashes, min(hi, (bucket + 1) * width))
        head = layout.bucket_key(ns_id, bucket)  # a row key's namespace and bucket
        get = txn.get
        for ekey in sorted(ekeys[i:j]):  # a bucket's rows are in encoded-key order
            rkey = head + ekey
            data = get(rkey)
            if not isinstance(data, bytes):  # None: the index is of this very snapshot
                raise StorageError(f"{self.path}: bucket index out of date at {rkey!r}")
            yield rkey, data

    def fingerprints(
        self, namespace: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        def read(txn: lmdb.Transaction) -> list[tuple[int, int]]:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                return [(0, 0) for _ in ranges]
            return self._fingerprints(txn, found[0], ranges)

        return self._read(read)

    def _fingerprints(
        self, txn: lmdb.Transaction, ns_id: int, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Whole buckets from their bucket rows; the parts of buckets a range only cuts
        from the bucket's rows, whose key hashes must be computed there (a bucket's rows
        are in key order): see :meth:`_bucket_index`."""
        width = 1 << layout.BUCKET_SHIFT
        out = []
        for lo, hi in ranges:
            b_lo, b_hi = -(-lo // width), hi // width  # whole buckets b_lo .. b_hi - 1
            fp = count = 0
            if b_lo < b_hi:
                spans = [(lo, b_lo * width), (b_hi * width, hi)]
                with txn.cursor(db=self._bucketdb) as cur:
                    ok = cur.set_range(layout.bucket_key(ns_id, b_lo))
                    while ok:
                        bkey = cur.key()
                        if bkey[:4] != layout.ns_prefix(ns_id) or bkey[4] >= b_hi:
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
                    hashes, xors, _ = self._bucket_index(txn, ns_id, bucket)
                    i = bisect.bisect_left(hashes, max(a, bucket * width))
                    j = bisect.bisect_left(hashes, min(b, (bucket + 1) * width))
                    fp ^= xors[i] ^ xors[j]
                    count += j - i
            out.append((fp, count))
        return out

    def _bucket_index(
        self, txn: lmdb.Transaction, ns_id: int, bucket: int
    ) -> tuple[list[int], list[int], list[bytes]]:
        """The key hashes of a bucket's rows, sorted, the prefix XORs of their entry
        hashes (``xors[i]``: of the first i) and their encoded keys, in the same order, as
        of ``txn``'s snapshot.

        Kept for a few buckets, by snapshot: a reconciliation splits a differing bucket
        into 16 parts, and the peer asks for each part's fingerprint in turn, each in a
        read transaction of its own, so without it the bucket would be read and its keys
        hashed 16 times. A snapshot's id names one committed state of the directory,
        whichever process wrote it, so an entry is valid exactly while the id is the
        same. (Read transactions only: a write transaction's id is the next commit's,
        which an abort leaves to another.)"""
        snapshot = txn.id()
        found = self._bucket_indexes.get((ns_id, bucket))
        if found is not None and found[0] == snapshot:
            return found[1], found[2], found[3]
        hash_of, ekey_at = layout.hash_encoded_key, layout.ROW_EKEY
        width = 1 << layout.BUCKET_SHIFT
        rows = []
        for rkey, data in self._scan(txn, ns_id, bucket * width, (bucket + 1) * width):
            ekey = rkey[ekey_at:]
            rows.append((hash_of(ekey), layout.row_hash(data), ekey))
        rows.sort()
        hashes, xors, ekeys = [], [0], []
        for khash, ehash, ekey in rows:
            hashes.append(khash)
            xors.append(xors[-1] ^ ehash)
            ekeys.append(ekey)
        if len(self._bucket_indexes) >= BUCKET_INDEXES_KEPT:
            self._bucket_indexes.clear()
        self._bucket_indexes[(ns_id, bucket)] = (snapshot, hashes, xors, ekeys)
        return hashes, xors, ekeys

    def read_range(self, namespace: str, lo: int, hi: int) -> DotMap[Any]:
        def read(txn: lmdb.Transaction) -> DotMap[Any]:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                raise InvalidValue(f"namespace {namespace!r} does not exist here")
            ns_id, tname = found
            stamped = tname == LWW
            entries = {}
            for rkey, data in self._read_scan(txn, ns_id, lo, hi):
                key = layout.unpack_stored(layout.row_ekey(rkey))
                entries[key] = entry_from_row(layout.unpack_row(data)[1], stamped)
            return CRDT_TYPES[tname](entries, self.load_ctx(txn, ns_id), is_delta=True)

        return self._read(read)

    def read_range_packed(
        self, namespace: str, lo: int, hi: int, max_bytes: int | None
    ) -> PackedRange | None:
        """``read_range``'s entries, encoded straight from the rows: an entry on the wire
        is ``[key, dots]``, and a row holds the encoded key (in its row key) and the
        encoded dots (after its entry hash), in reconciliation order, so shipping a range
        decodes and re-encodes nothing. (A bootstrap's seed spent ~10 us per entry
        building and encoding values.)"""

        def read(txn: lmdb.Transaction) -> PackedRange | None:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                raise InvalidValue(f"namespace {namespace!r} does not exist here")
            ns_id, tname = found
            packer = msgpack.Packer(use_bin_type=True)
            room = None if max_bytes is None else max_bytes - 1  # the array's header
            pair = packer.pack_array_header(2)
            entries = []
            size = 0
            ekey_at = layout.ROW_EKEY
            for rkey, data in self._read_scan(txn, ns_id, lo, hi):
                entry = pair + rkey[ekey_at:] + data[8:]  # [encoded key, encoded dots]
                size += len(entry)
                if room is not None and size > room:
                    return None  # stop scanning as soon as the budget is passed
                entries.append(entry)
            packed = packer.pack_array_header(len(entries)) + b"".join(entries)
            if max_bytes is not None and len(packed) > max_bytes:
                return None
            return PackedRange(tname, len(entries), packed)

        return self._read(read)

    def apply_range(self, namespace: str, lo: int, hi: int, shipped: DotMap[Any]) -> None:
        self._apply_ranges(namespace, [(lo, hi, shipped)], None)

    def apply_ranges(
        self,
        namespace: str,
        ranges: Iterable[tuple[int, int, DotMap[Any] | ShippedEntries]],
        context: CausalContext,
        size_hint: int = 0,
    ) -> None:
        """Every staged range of a reconciliation, then ``context``, in ONE transaction.

        One commit instead of one per range: a crash cannot leave the ranges applied
        without the context (or half of them), and a bootstrap of n entries costs one
        fsync and one context encoding instead of one per range. ``ranges`` is iterated
        once per attempt, one range at a time (the engine may decode them as it goes).
        ``size_hint`` (the ranges' bytes on the wire) makes room in the map first.
        """
        self._check()
        self.reserve(size_hint * MAP_BYTES_PER_WIRE_BYTE)
        self._apply_ranges(namespace, ranges, context)

    def _apply_ranges(
        self,
        namespace: str,
        ranges: Iterable[tuple[int, int, DotMap[Any] | ShippedEntries]],
        context: CausalContext | None,
    ) -> None:
        self._check()

        def apply(txn: lmdb.Transaction) -> tuple[int, str, CausalContext, bytes]:
            found = self._lookup_ns(txn, namespace)
            ctx = CausalContext() if found is None else self.load_ctx(txn, found[0])
            writer = RowWriter(txn, self._bucketdb)
            received: list[Dot] = []
            # Ranges are disjoint, so each is judged against our context from before the
            # session; only the dots received join it (the sender's context also covers
            # keys outside the ranges), and ``context`` joins once all of them are in.
            for lo, hi, shipped in ranges:
                if found is None:  # a namespace learned from its first range
                    found = self._ensure_ns(txn, namespace, shipped.type_name)[:2]
                ns_id, tname = found
                if shipped.type_name != tname:
                    raise InvalidValue(
                        f"namespace {namespace!r} is a {tname}, the range holds {shipped.type_name}"
                    )
                if isinstance(shipped, ShippedEntries) and self._no_rows(txn, ns_id, lo, hi):
                    # A bootstrap's: every entry is checked in the loop that writes it.
                    entries: Iterable[Row] = shipped.checked(lo, hi)
                    if context is None or context.join(shipped.base) != context:
                        # Some dots may be ones ``context`` will not bring: collect them.
                        # (A session's context is its base, which holds every dot taken.)
                        entries = list(entries)
                        got = [Dot(d[0], d[1]) for it in entries for d in it[3]]
                        received.extend(got if context is None else _not_in(got, context))
                    _insert_rows(writer, ns_id, namespace, tname == LWW, entries, ctx, None)
                else:
                    if isinstance(shipped, ShippedEntries):
                        value = shipped.value(lo, hi)
                    else:
                        value = shipped
                        self._check_drift(value)  # raising here aborts the whole transaction
                    got = self._join_range(txn, writer, ns_id, namespace, tname, ctx, lo, hi, value)
                    received.extend(got if context is None else _not_in(got, context))
                if sum(len(g[2]) for g in writer.groups) >= 3 * EVENTS_PER_JOURNAL_ROW:
                    # A bootstrap changes every key: journal its events as it goes rather
                    # than hold them (and the keys and values they name) to the end.
                    self._journal(writer)
                    writer.groups.clear()
            if found is None:
                raise InvalidValue(f"namespace {namespace!r} does not exist here")
            ns_id, tname = found
            new_ctx = ctx.join(CausalContext.from_dots(received)) if received else ctx
            if context is not None:
                new_ctx = new_ctx.join(context)
            data = self.store_ctx(txn, ns_id, new_ctx)
            self._finish(writer)
            return ns_id, tname, new_ctx, data

        ns_id, tname, new_ctx, data = self._write(apply)
        self.remember_ns(namespace, ns_id, tname)
        self._ctx_cache[ns_id] = (data, new_ctx)

    def _join_range(
        self,
        txn: lmdb.Transaction,
        writer: RowWriter,
        ns_id: int,
        namespace: str,
        tname: str,
        ctx: CausalContext,
        lo: int,
        hi: int,
        shipped: DotMap[Any],
    ) -> list[Dot]:
        stamped = tname == LWW
        theirs: dict[bytes, _Received] = {}
        received: list[Dot] = []
        for key, entry in shipped.entries.items():
            ekey, khash = self._shipped_key(key, lo, hi)
            theirs[ekey] = (
                key,
                ekey,
                bytes((khash >> layout.BUCKET_SHIFT,)) + ekey,
                _stored(entry, stamped),
                None,
            )
            received.extend(entry)
        mine = [
            (layout.unpack_stored(ekey), bytes(ekey), bytes(rkey[4:]))
            for rkey, ekey in (
                (rkey, layout.row_ekey(rkey)) for rkey, _ in self._scan(txn, ns_id, lo, hi)
            )
        ]
        their_ctx, prefix = shipped.context, layout.ns_prefix(ns_id)
        for key, ekey, position in mine:  # each has a row: _join_key joins it
            row = theirs.pop(ekey, None) or (key, ekey, position, [], None)
            self._join_key(
                writer, ns_id, prefix, namespace, stamped, ctx, row, their_ctx, None, None
            )
        # Keys we hold no row for (all of them, in a bootstrap).
        _insert_rows(writer, ns_id, namespace, stamped, theirs.values(), ctx, None)
        return received

    def _shipped_key(self, key: Any, lo: int, hi: int) -> tuple[bytes, int]:
        """A shipped key's encoding and hash; InvalidValue if it is not in its range."""
        ekey = layout.pack_key(key)
        khash = layout.hash_encoded_key(ekey)
        if not lo <= khash < hi:
            self.stats["range_key_outside"] += 1
            raise InvalidValue(f"shipped key {key!r} lies outside [{lo}, {hi})")
        return ekey, khash

    def _no_rows(self, txn: lmdb.Transaction, ns_id: int, lo: int, hi: int) -> bool:
        return next(self._scan(txn, ns_id, lo, hi), None) is None

    def merge_context(self, namespace: str, context: CausalContext) -> None:
        self._check()

        def merge(txn: lmdb.Transaction) -> tuple[int, CausalContext, bytes] | None:
            found = self._lookup_ns(txn, namespace)
            if found is None:
                raise InvalidValue(f"namespace {namespace!r} does not exist here")
            ctx = self.load_ctx(txn, found[0])
            new_ctx = ctx.join(context)
            if new_ctx == ctx:
                return None
            return found[0], new_ctx, self.store_ctx(txn, found[0], new_ctx)

        done = self._write(merge)
        if done is not None:
            self._ctx_cache[done[0]] = (done[2], done[1])

    # -- reads for the Node API -------------------------------------------------------------

    def read_txn(self) -> _ReadTxn:
        """A read transaction as a context manager (holds the gate while open)."""
        self._check()
        return _ReadTxn(self)

    def journal_last(self) -> int:
        return self._read(lambda txn: journal.last_seq(txn, self._journaldb))

    def journal_after(
        self, after: int, limit: int
    ) -> tuple[int, list[tuple[int, list[journal.Change]]]]:
        """``(first seq still held, up to ``limit`` journal rows after ``after``)``. A
        corrupt row comes with no changes (counted in ``journal_rows_corrupt``, logged):
        its changes are lost to watchers, and those after it still reach them."""

        def read(txn: lmdb.Transaction) -> tuple[int, list[tuple[int, list[journal.Change]]]]:
            rows: list[tuple[int, list[journal.Change]]] = []
            for seq, changes in journal.read_after(txn, self._journaldb, after):
                if isinstance(changes, DecodeError):
                    self.stats["journal_rows_corrupt"] += 1
                    log.error("%s: journal row %d is corrupt, skipped: %s", self.path, seq, changes)
                    changes = []
                rows.append((seq, changes))
                if len(rows) >= limit:
                    break
            return journal.first_seq(txn, self._journaldb), rows

        return self._read(read)

    def sync(self) -> None:
        """Force everything committed so far to disk (used by the async flusher)."""
        self._gate.enter()
        try:
            self._env.sync(True)
        finally:
            self._gate.exit()


class _ReadTxn:
    __slots__ = ("_replica", "txn")

    def __init__(self, replica: LMDBReplica) -> None:
        self._replica = replica

    def __enter__(self) -> lmdb.Transaction:
        replica = self._replica
        while True:
            replica._gate.enter()
            try:
                self.txn: lmdb.Transaction = replica._env.begin(db=replica._state)
                return self.txn
            except lmdb.MapResizedError:
                replica._gate.exit()
            except BaseException:
                replica._gate.exit()
                raise
            replica._adopt_map_size()

    def __exit__(self, *exc: object) -> None:
        try:
            self.txn.abort()
        finally:
            self._replica._gate.exit()


class _Flusher:
    """With async durability: calls ``env.sync()`` every ``interval`` seconds until stopped."""

    def __init__(self, replica: LMDBReplica, interval: float) -> None:
        self._replica = replica
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-flusher-{replica.path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._replica.sync()
            except lmdb.Error:
                self._replica.stats["flush_errors"] += 1
                log.exception("%s: background flush failed (counted)", self._replica.path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _migrate_from_format_1(txn: lmdb.Transaction, dbs: Mapping[str, Any]) -> None:
    """Format 1 kept the log's counts and its global append serial in ``meta``, one more
    page for every commit to write; format 2 keeps each namespace's count in a row of
    ``logorder`` beside its newest order row. Order rows are unchanged (a serial only
    orders the rows of its namespace, and the next is taken after the newest)."""
    meta, order = dbs["meta"], dbs["logorder"]
    prefix = layout.META_V1_LOG_COUNT
    with txn.cursor(db=meta) as cur:
        ok = cur.set_range(prefix)
        while ok and cur.key()[: len(prefix)] == prefix:
            ns_id = int.from_bytes(cur.key()[len(prefix) :], "big")
            txn.put(layout.log_count_key(ns_id), bytes(cur.value()), db=order)
            ok = cur.delete()
    txn.delete(layout.META_V1_LOG_SERIAL, db=meta)


def _migrate_from_format_2(
    env: lmdb.Environment, txn: lmdb.Transaction, dbs: Mapping[str, Any]
) -> None:
    """Format 2 kept the causal contexts in a table of their own, pages every commit had
    to write; format 3 keeps each in a row of ``logorder`` beside its log count."""
    old = env.open_db(layout.V2_CONTEXT_TABLE, txn=txn)
    order = dbs["logorder"]
    for key, value in txn.cursor(db=old):
        txn.put(layout.context_key(layout.read_u32(key)), bytes(value), db=order)
    txn.drop(old, delete=True)


def _rebucket_state(
    env: lmdb.Environment, txn: lmdb.Transaction, dbs: Mapping[str, Any], ekey_at: int
) -> None:
    """Key every state row by its bucket (``ns_id + key bucket + key``), and count the
    buckets again from the rows. Up to format 5 a bucket was the first byte of a hash of
    the whole key; format 3 keyed a row by all eight bytes of that hash (``ekey_at`` 12,
    not 5). A row's entry hash, its value's first 8 bytes, did not change. The rows move
    through a scratch table, so no new key can land on an old row not yet moved."""
    state, bucketdb = dbs["state"], dbs["buckets"]
    scratch = env.open_db(b"v5-state", txn=txn)
    for rkey, data in txn.cursor(db=state):
        txn.put(rkey, data, db=scratch, append=True)
    txn.drop(state, delete=False)
    txn.drop(bucketdb, delete=False)
    buckets: dict[bytes, list[int]] = {}
    for rkey, data in txn.cursor(db=scratch):
        ekey = bytes(rkey[ekey_at:])
        head = bytes(rkey[:4]) + bytes((layout.key_bucket(ekey),))
        txn.put(head + ekey, data, db=state)
        acc = buckets.setdefault(head, [0, 0])
        if len(data) >= 8:  # a row too short to hold its hash was never written here
            acc[0] ^= layout.row_hash(data)
            acc[1] += 1
    for bkey, (fp, count) in buckets.items():
        txn.put(bkey, layout.BUCKET_ROW.pack(fp, count), db=bucketdb)
    txn.drop(scratch, delete=True)


BUCKET_INDEXES_KEPT = 4
"""Buckets whose sorted key hashes a replica keeps (``_bucket_index``; about 80 bytes a
row: 320 KB for a bucket of 4,000 rows, as in a namespace of a million keys)."""

MAP_BYTES_PER_WIRE_BYTE = 3
"""Map space a reconciliation's ranges take per byte they took on the wire: rows (key
hash, entry hash, key and dots again), journal, B-tree pages. Measured 2.5-2.7 for
bootstraps of 100,000 and 1,000,000 entries."""


def _not_in(dots: list[Dot], ctx: CausalContext) -> list[Dot]:
    """The dots ``ctx`` does not hold (``d not in ctx``, inlined)."""
    vv, cloud = ctx.vv, ctx.cloud
    return [d for d in dots if d[1] > vv.get(d[0], 0) and d not in cloud]


_Received = tuple[Any, bytes, bytes, list[list[Any]], bytes | None]
"""A :data:`crdtstore.codec.Row`, or one whose entry hash is still to be computed (None):
the dots a key received, in a row's form, to join into its row here."""


@dataclass
class _NsApplied:
    """One namespace's part of ``apply_batches``: its context as the batches join it."""

    ns_id: int
    type_name: str
    ctx: CausalContext
    changed: bool = False
    data: bytes = b""


def _dot_order(d: list[Any]) -> tuple[str, int]:
    return d[0], d[1]


def _lww_order(d: list[Any]) -> tuple[int, str]:
    """``lwwmap.winner``'s order on a stored dot: timestamp, then writer."""
    return d[2], d[0]


def _stored(entry: Mapping[Dot, Any], stamped: bool) -> list[list[Any]]:
    """An entry's dots in a row's form: ``[replica, seq(, timestamp, value)]``."""
    if stamped:
        return [[d[0], d[1], *p] for d, p in entry.items()]
    return [[d[0], d[1]] for d in entry]


def _holds_run(ctx: CausalContext, replica: str, first: int, last: int) -> bool:
    """Whether ``ctx`` holds every dot ``(replica, first..last)``: a batch's, to tell one
    applied already. O(cloud), not O(run) with a Dot for each of its thousands."""
    top = ctx.vv.get(replica, 0)
    if last <= top:
        return True
    lo = max(first, top + 1)  # the seqs below are in the vector
    held = {d.seq for d in ctx.cloud if d.replica == replica and lo <= d.seq <= last}
    return len(held) == last - lo + 1


def _insert_rows(
    writer: RowWriter,
    ns_id: int,
    namespace: str,
    stamped: bool,
    items: Iterable[_Received],
    my_ctx: CausalContext,
    origin: str | None,
) -> None:
    """``_join_key`` of keys that have no row here, each ``(key, encoded key, position,
    their dots in a row's form, their entry hash or None)`` (``position``: the row key
    after its namespace, the key's bucket then the key): the join keeps the dots our context
    has not seen, and the row is written straight. The same result as the generic join
    (the differential tests compare both with the pure values), without its per-dot
    objects: this runs once per key of a bootstrap and of every batch of new keys, so the
    loop's lookups are hoisted. A dot in a row's form is what the wire carries too:
    ``ShippedEntries.checked`` yields entries in this shape (hash included), checked as
    this loop takes them."""
    vv, cloud = my_ctx.vv, my_ctx.cloud
    put, buckets = writer.txn.put, writer.buckets
    events: list[Any] = []  # of the group of origin ``source``
    source: object = _NO_GROUP
    prefix = layout.ns_prefix(ns_id)
    pack = layout.pack
    fresh = not vv and not cloud  # we have seen nothing (a bootstrap): every dot is new
    # A range's keys share their bucket (the key hash's first byte): hold its accumulator
    # until the bucket changes rather than look it up for every key.
    bucket, acc = -1, [0, 0]
    for key, ekey, position, dots, edig in items:
        if not fresh:
            seen = len(dots)
            dots = [d for d in dots if d[1] > vv.get(d[0], 0) and (d[0], d[1]) not in cloud]
            if len(dots) != seen:
                edig = None
        if not dots:
            continue
        if edig is None:
            if len(dots) > 1:
                dots = sorted(dots, key=_dot_order)
            edig = entry_digest(ekey, dots)
        if stamped:
            won = dots[0] if len(dots) == 1 else max(dots, key=_lww_order)
            by = origin or won[0]
            if by != source:
                source, events = by, writer.group(namespace, by)
            events += (key, None, won[3])
        else:
            if origin != source:
                source, events = origin, writer.group(namespace, origin)
            events += (key, False, True)
        put(prefix + position, edig + pack(dots))  # the transaction's default: state
        if position[0] != bucket:  # the key hash's first byte (layout.BUCKET_BITS = 8)
            bucket = position[0]
            acc = buckets.setdefault(ns_id << 8 | bucket, [0, 0])
        acc[0] ^= int.from_bytes(edig, "big")
        acc[1] += 1
