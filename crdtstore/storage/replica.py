"""The LMDB replica: one node directory's state, contexts, delta log and change journal.

Theory of operation. One LMDB environment per node directory holds the tables listed in
:mod:`crdtstore.storage.layout`. Every change, local or remote, happens in one LMDB write
transaction that updates the state rows it touches, their fingerprint buckets, the
namespace's causal context, the delta log and the change journal together: a crash
leaves all of a change or none of it. Nothing of the state is loaded at open; every read
goes to LMDB, so several processes sharing the directory see each other's commits at
once (LMDB is multi-process safe; it is never opened with ``lock=False``).

:class:`LMDBReplica` is a facade over parts that each own their state and are handed the
others they need:

- :class:`~.environment.Environment`: the environment, its tables, the gate, map growth;
- :class:`~.meta.DirectoryMeta` and :class:`~.migrations.FormatMigration`: format, node
  id, topics, and older formats brought up to date when opened;
- :class:`~.namespaces.Namespaces`: namespace records and causal contexts, cached;
- :class:`~.deltalog.DeltaLog`: logged batches, kept to serve repairs, bounded;
- :class:`~.ranges.Ranges`: range scans, fingerprints and the bucket index;
- :class:`~.journal.Journal`: the change events every process's watchers follow;
- :class:`~.receive.Receiver` and :class:`~.local.LocalWrite`: the writes, remote and
  local, which build every row with :mod:`~.kernel`;
- :class:`~.group.GroupCommit`: the queue through which concurrent local writers share
  a commit (and its fsync);
- :class:`~.flusher.Flusher`: the background flush of async durability.

Rules of use:

- Never open a directory before ``fork()`` and use it after (LMDB forbids it). A replica
  refuses calls from a process other than the one that opened it.
- The map grows by itself (see :mod:`.environment`).
- Remote LWW timestamps further ahead than ``max_clock_drift_ms`` make the whole batch
  or range be rejected (:class:`~crdtstore.errors.ClockDriftError`, counted).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmdb

from crdtstore.codec import LWW_MAP, MAX_REPLICA_ID_LEN
from crdtstore.crdt import CRDT_TYPES, CausalContext, DotMap, HybridClock
from crdtstore.errors import InvalidValue, TypeMismatch
from crdtstore.settings import NodeSettings
from crdtstore.storage import layout, reads
from crdtstore.storage.deltalog import DeltaLog
from crdtstore.storage.drops import ReceivedDrops
from crdtstore.storage.environment import Environment
from crdtstore.storage.flusher import Flusher
from crdtstore.storage.group import GroupCommit
from crdtstore.storage.journal import Bounds, Change, Journal
from crdtstore.storage.local import LastStamp, LocalWrite
from crdtstore.storage.meta import DirectoryMeta
from crdtstore.storage.migrations import FormatMigration
from crdtstore.storage.namespaces import Namespaces, check_namespace
from crdtstore.storage.ranges import Ranges
from crdtstore.storage.receive import Receiver
from crdtstore.sync.messages import DeltaBatch, PackedRange
from crdtstore.sync.shipped import ShippedEntries

MAP_BYTES_PER_WIRE_BYTE = 3
"""Map space a reconciliation's ranges take per byte they took on the wire: rows (key
hash, entry hash, key and dots again), journal, B-tree pages; a little over what
bench_bootstrap measures for bootstraps of 100,000 and 1,000,000 entries."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


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

    get_row: Callable[[bytes], bytes | None]
    """The state row stored under a row key, in a fresh snapshot: the hot path of ``get`` /
    ``in`` (``layout.ns_prefix`` + ``layout.row_key_suffix``); the environment's
    :attr:`~.environment.Environment.get` itself."""

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
        if node_id is not None:
            check_node_id(node_id)
        self._env = env = Environment(self.path, self.settings, self.stats)
        try:
            self._meta = DirectoryMeta(
                self.path, env.dbs["meta"], FormatMigration(env.env, env.dbs)
            )
            self._node_id = env.write(lambda txn: self._meta.open(txn, node_id))
        except BaseException:
            env.env.close()
            raise
        s = self.settings
        self._names = Namespaces(env.dbs)
        self._log = DeltaLog(env.dbs, s.log_max_bytes)
        self._ranges = Ranges(env.dbs, self.path)
        bounds = Bounds(s.journal_max_entries, s.journal_max_bytes, s.journal_max_age_ms)
        self._journal = Journal(env.dbs["journal"], bounds, self.stats, self.path, now_ms)
        self._receiver = Receiver(env, self._names, self._log, self._ranges, self._journal, now_ms)
        self._stamps = LastStamp()
        self.group = GroupCommit(self.begin_local, env.make_durable, self.stats)
        """Local writes outside ``transaction()`` go through it (see :mod:`.group`)."""
        self._drops = ReceivedDrops(
            env.write, env.read, env.dbs, self._names, self._log, self._journal,
            self._meta.topics, self.stats, self.path,
        )  # fmt: skip
        self.get_row = env.get
        self._flusher: Flusher | None = None
        if self.settings.durability == "async":
            interval = self.settings.flush_interval_ms / 1000
            self._flusher = Flusher(env.sync, interval, self.stats, self.path)

    # -- opening and closing --------------------------------------------------------------

    def close(self) -> None:
        """Flush (with async durability) and close. Idempotent."""
        if self._env.closed:
            return
        self._env.closed = True
        if self._flusher is not None:
            self._flusher.stop()
        self._env.close()

    def __enter__(self) -> LMDBReplica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def node_id(self) -> str:
        return self._node_id

    def forget_new_node_id(self) -> bool:
        """Un-write the node id this open gave a new directory (True if it did): called when
        the first start fails, so the next start may choose the id (``--node-id``)."""
        return self._env.write(lambda txn: self._meta.forget_id(txn, self._node_id))

    def map_use(self) -> tuple[int, int]:
        """Bytes of the LMDB map in use (pages up to the last one written), and its size."""
        info = self._env.env.info()
        page = self._env.env.stat()["psize"]
        return (info["last_pgno"] + 1) * page, info["map_size"]

    def last_commit(self) -> int:
        """The id of the newest transaction committed to the directory by any process
        (LMDB's ``last_txnid``, read without a transaction): while it stays the same,
        nothing was written."""
        self._env.check()
        return int(self._env.env.info()["last_txnid"])

    @property
    def env(self) -> lmdb.Environment:
        return self._env.env

    @property
    def dbs(self) -> dict[str, Any]:
        """The environment's named tables (for tools and tests that read them raw)."""
        return self._env.dbs

    def topics(self) -> tuple[str, ...] | None:
        """The namespaces this directory replicates, as last declared (None: all)."""
        return self._env.read(self._meta.topics)

    def declare_topics(self, topics: tuple[str, ...] | None) -> None:
        """Persist the topics, so every process sharing the directory enforces them."""
        self._env.check()
        self._env.write(lambda txn: self._meta.declare_topics(txn, topics))

    # -- transactions, map growth ---------------------------------------------------------

    def reserve(self, nbytes: int) -> None:
        """Grow the map now if fewer than ``nbytes`` of it are free (see
        :meth:`Environment.reserve`)."""
        self._env.reserve(nbytes)

    def begin_local(self) -> LocalWrite:
        """A write transaction for local mutations (see :class:`LocalWrite`)."""
        self._env.check()
        return LocalWrite(
            self._env, self._names, self._log, self._journal, self._stamps, self._node_id,
            self.now_ms,
        )  # fmt: skip

    def make_durable(self, ticket: int) -> None:
        """Return once the commit of ``ticket`` (:attr:`Committed.ticket`) is on disk."""
        self._env.make_durable(ticket)

    @property
    def clock(self) -> HybridClock:
        """The last timestamp this process issued."""
        return HybridClock(self._stamps.last)

    def read_txn(self) -> _ReadTxn:
        """A read transaction as a context manager (holds the gate while open)."""
        self._env.check()
        return _ReadTxn(self._env)

    def sync(self) -> None:
        """Force everything committed so far to disk (used by the async flusher)."""
        self._env.sync()

    # -- namespaces and contexts ------------------------------------------------------------

    def remember_ns(self, name: str, ns_id: int, type_name: str) -> None:
        """Cache a namespace once the transaction that created or read it committed."""
        self._names.remember(name, ns_id, type_name)

    def load_ctx(self, txn: lmdb.Transaction, ns_id: int) -> CausalContext:
        return self._names.load_context(txn, ns_id)

    def store_ctx(self, txn: lmdb.Transaction, ns_id: int, ctx: CausalContext) -> bytes:
        return self._names.store_context(txn, ns_id, ctx)

    def namespaces(self) -> Mapping[str, str]:
        return self._env.read(self._names.all)

    def ensure_namespace(self, namespace: str, type_name: str) -> None:
        self.namespace_id(namespace, type_name)

    def namespace_id(self, namespace: str, type_name: str) -> int:
        """Id of ``namespace``, created as ``type_name`` if new (TypeMismatch if it differs)."""
        self._env.check()
        check_namespace(namespace)
        hit = self._names.cached(namespace)
        if hit is not None:
            if hit[1] != type_name:
                raise TypeMismatch(f"namespace {namespace!r} holds a {hit[1]}, not a {type_name}")
            return hit[0]
        ns_id, tname, _ = self._env.write(lambda txn: self._names.ensure(txn, namespace, type_name))
        self._names.remember(namespace, ns_id, tname)
        return ns_id

    def existing_namespace(self, namespace: str, type_name: str) -> int | None:
        """Id of ``namespace`` if it exists (TypeMismatch if it holds another type), else
        None, creating nothing: a read of a namespace must not create it."""
        self._env.check()
        check_namespace(namespace)
        found = self._names.cached(namespace)
        if found is None:
            found = self._env.read(lambda txn: self._names.lookup(txn, namespace))
            if found is None:
                return None
            self._names.remember(namespace, *found)
        if found[1] != type_name:
            raise TypeMismatch(f"namespace {namespace!r} holds a {found[1]}, not a {type_name}")
        return found[0]

    def apply_drops(self) -> list[str]:
        """Apply the drop records received since the last call (:mod:`.drops`); the
        namespaces whose entries went. One read when there is none."""
        self._env.check()
        return self._drops.apply()

    def drops_retry_due(self) -> bool:
        """Whether drop records wait to be applied again (the last try met a full store)."""
        return self._drops.retry_due()

    def dropped_namespaces(self) -> set[str]:
        """Namespaces dropped here that hold no entry (none written since the drop)."""

        def read(txn: lmdb.Transaction) -> set[str]:
            meta, buckets = self._env.dbs["meta"], self._env.dbs["buckets"]
            out = set()
            for name, data in txn.cursor(db=self._env.dbs["namespaces"]):
                ns_id = int(layout.unpack_stored(data)[0])
                if txn.get(layout.META_DROPPED + layout.ns_prefix(ns_id), db=meta) is None:
                    continue
                if reads.count_live(txn, buckets, ns_id) == 0:
                    out.add(bytes(name).decode())
            return out

        return self._env.read(read)

    def context(self, namespace: str) -> CausalContext:
        def read(txn: lmdb.Transaction) -> CausalContext:
            found = self._names.lookup(txn, namespace)
            return CausalContext() if found is None else self._names.load_context(txn, found[0])

        return self._env.read(read)

    def _ns_id(self, txn: lmdb.Transaction, namespace: str) -> tuple[int, str]:
        found = self._names.lookup(txn, namespace)
        if found is None:
            raise InvalidValue(f"namespace {namespace!r} does not exist here")
        return found

    # -- the sync engine's side: batches, log, ranges ---------------------------------------

    def apply_batch(self, batch: DeltaBatch, encoded: bytes) -> bool:
        return self.apply_batches([(batch, encoded)])[0]

    def apply_batches(self, batches: Sequence[tuple[DeltaBatch, bytes]]) -> list[bool]:
        """``apply_batch`` of each, in order, in ONE transaction: one commit (one fsync)
        for a node catching up on several. Raises, changing nothing, where one batch alone
        would raise."""
        self._env.check()
        return self._receiver.apply_batches(batches)

    def log_put(
        self, txn: lmdb.Transaction, ns_id: int, origin: str, first: int, last: int, encoded: bytes
    ) -> None:
        """Log a batch (replacing a shorter one with the same origin and first seq)."""
        self._log.put(txn, ns_id, origin, first, last, encoded)

    def log_batches(self, namespace: str, origin: str, first: int, last: int) -> list[bytes] | None:
        def read(txn: lmdb.Transaction) -> list[bytes] | None:
            found = self._names.lookup(txn, namespace)
            if found is None:
                return None
            return self._log.batches(txn, found[0], origin, first, last)

        return self._env.read(read)

    def trim_log(self, namespace: str, origin: str, upto: int) -> int:
        self._env.check()

        def trim(txn: lmdb.Transaction) -> int:
            found = self._names.lookup(txn, namespace)
            return 0 if found is None else self._log.trim(txn, found[0], origin, upto)

        return self._env.write(trim)

    def bound_log(self, namespace: str, max_batches: int) -> int:
        """Drop the oldest logged batches (append order) until at most ``max_batches`` stay."""
        self._env.check()

        def bound(txn: lmdb.Transaction) -> int:
            found = self._names.lookup(txn, namespace)
            return 0 if found is None else self._log.bound(txn, found[0], max_batches)

        return self._env.write(bound)

    def fingerprints(
        self, namespace: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        def read(txn: lmdb.Transaction) -> list[tuple[int, int]]:
            found = self._names.lookup(txn, namespace)
            if found is None:
                return [(0, 0) for _ in ranges]
            return self._ranges.fingerprints(txn, found[0], ranges)

        return self._env.read(read)

    def read_range(self, namespace: str, lo: int, hi: int) -> DotMap[Any]:
        def read(txn: lmdb.Transaction) -> DotMap[Any]:
            ns_id, tname = self._ns_id(txn, namespace)
            entries = self._ranges.entries(txn, ns_id, tname == LWW_MAP, lo, hi)
            ctx = self._names.load_context(txn, ns_id)
            return CRDT_TYPES[tname](entries, ctx, is_delta=True)

        return self._env.read(read)

    def read_range_packed(
        self, namespace: str, lo: int, hi: int, max_bytes: int | None
    ) -> PackedRange | None:
        """``read_range``'s entries, encoded straight from the rows (see
        :meth:`Ranges.packed`): shipping a range decodes and re-encodes nothing."""

        def read(txn: lmdb.Transaction) -> PackedRange | None:
            ns_id, tname = self._ns_id(txn, namespace)
            return self._ranges.packed(txn, ns_id, tname, lo, hi, max_bytes)

        return self._env.read(read)

    def apply_range(self, namespace: str, lo: int, hi: int, shipped: DotMap[Any]) -> None:
        self._env.check()
        self._receiver.apply_ranges(namespace, [(lo, hi, shipped)], None)

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
        self._env.check()
        self._env.reserve(size_hint * MAP_BYTES_PER_WIRE_BYTE)
        self._receiver.apply_ranges(namespace, ranges, context)

    def merge_context(self, namespace: str, context: CausalContext) -> None:
        self._env.check()
        names = self._names

        def merge(txn: lmdb.Transaction) -> tuple[int, CausalContext, bytes] | None:
            ns_id = self._ns_id(txn, namespace)[0]
            ctx = names.load_context(txn, ns_id)
            new_ctx = ctx.join(context)
            if new_ctx == ctx:
                return None
            return ns_id, new_ctx, names.store_context(txn, ns_id, new_ctx)

        done = self._env.write(merge)
        if done is not None:
            names.remember_context(done[0], done[2], done[1])

    # -- reads for the Node API -------------------------------------------------------------

    def read_dots(self, ns_id: int, ekey: bytes) -> list[list[Any]] | None:
        """The dots of the key encoded ``ekey`` in namespace ``ns_id``, None if it has no
        row, in a fresh snapshot."""
        return self._env.read(lambda txn: reads.get_dots(txn, self._env.state, ns_id, ekey))

    def count_live(self, ns_id: int) -> int:
        """The live entries of namespace ``ns_id``, in a fresh snapshot."""
        return self._env.read(lambda txn: reads.count_live(txn, self._env.dbs["buckets"], ns_id))

    def scan_rows(
        self, ns_id: int, after: bytes | None, limit: int
    ) -> list[tuple[layout.Buf, Any, list[list[Any]]]]:
        """Up to ``limit`` rows ``(row key, key, dots)`` of ``ns_id`` after row key
        ``after`` (None: from the first), in a fresh snapshot."""
        return self._env.read(
            lambda txn: reads.scan_chunk(txn, self._env.state, ns_id, after, limit)
        )

    def journal_last(self) -> int:
        return self._env.read(self._journal.last)

    def journal_after(self, after: int, limit: int) -> tuple[int, list[tuple[int, list[Change]]]]:
        """``(first seq still held, up to ``limit`` journal rows after ``after``)``. A
        corrupt row comes with no changes (counted in ``journal_rows_corrupt``, logged):
        its changes are lost to watchers, and those after it still reach them."""
        return self._env.read(lambda txn: self._journal.after(txn, after, limit))


class _ReadTxn:
    __slots__ = ("_env", "txn")

    def __init__(self, env: Environment) -> None:
        self._env = env

    def __enter__(self) -> lmdb.Transaction:
        self.txn: lmdb.Transaction = self._env.hold(write=False)
        return self.txn

    def __exit__(self, *exc: object) -> None:
        self._env.release(self.txn)
