"""One node directory's LMDB environment: its tables, its transactions and its map size.

Invariants:

- Every transaction of this process begins and ends while it holds the
  :class:`~crdtstore.storage.gate.Gate` shared; the map is resized only while it is held
  exclusive, so a resize never invalidates an open transaction.
- Every transaction has the state table as its default database: the hot paths (a row's
  get and put, once per key written, read or received) name no ``db=``, which py-lmdb
  would parse at every call. Every other table is named.
- The map grows by itself: a write that fills it is run again after doubling the map (up
  to ``max_map_size``); a process that finds the map grown by another adopts the new size.
- The environment is never used in a process other than the one that opened it (LMDB
  forbids using it after ``fork()``), nor after :meth:`Environment.close`.
- With ``durability="sync"`` a write returns only once its commit is on disk. LMDB is
  opened with ``metasync=False`` (``MDB_NOMETASYNC``): a commit flushes its data pages
  (under LMDB's writer lock) and writes the meta page without flushing it; the meta
  page reaches the disk with the next commit's data flush or :meth:`make_durable`'s
  ``fsync``, which runs outside the writer lock, so the next commit proceeds meanwhile
  and one ``fsync`` covers every commit finished before it. Integrity does not depend on
  it: the data a meta page points to is always on disk first (LMDB's documented
  guarantee for this flag); only the last commits wait for their meta flush.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from crdtstore.errors import ClosedError, StorageError
from crdtstore.settings import NodeSettings
from crdtstore.storage import layout
from crdtstore.storage.gate import Gate

log = logging.getLogger(__name__)

T = TypeVar("T")


class Environment:
    """The LMDB environment of ``path``, its named tables (``dbs``) and its gate."""

    def __init__(self, path: Path, settings: NodeSettings, stats: Counter[str]) -> None:
        self.path = path
        self.settings = settings
        self.stats = stats
        self.gate = Gate()
        self.closed = False
        self._sync_commits = settings.durability == "sync"
        self._tickets = threading.Lock()  # the counters below
        self._flushing = threading.Lock()  # one fsync at a time
        self._issued = 0
        """Tickets handed out: one per commit, in commit order (taken under the writer lock)."""
        self._finished = 0
        """The highest ticket whose commit returned (its meta page written)."""
        self._durable = 0
        """Every commit with a ticket up to this one is on disk."""
        self._pid = os.getpid()
        self.env = self._open()
        try:
            self.dbs: dict[str, Any] = self._open_dbs()
        except BaseException:
            self.env.close()
            raise
        self.state = self.dbs["state"]
        self.map_size: int = self.env.info()["map_size"]
        self.get: Callable[[bytes], bytes | None] = partial(
            self.gate.read_one, partial(self.env.begin, self.state), self._read_failed
        )
        """The state row stored under a key, in a fresh snapshot: the hot path of a read.
        A new read transaction per call, so commits of other processes are seen at once;
        py-lmdb renews a spare reader slot for it (``max_spare_txns``), which is cheap.
        (:meth:`Gate.read_one` bound: no frame of its own.)"""

    def _open(self) -> lmdb.Environment:
        sync = self.settings.durability == "sync"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            return lmdb.open(
                str(self.path),
                map_size=self.settings.map_size,
                max_dbs=len(layout.TABLES) + 1,
                sync=sync,
                metasync=False,  # the meta page's flush is make_durable's (see above)
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
                return {name: self.env.open_db(name.encode()) for name in layout.TABLES}
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
        raise StorageError(f"{self.path}: the map kept growing while it was being opened")

    def close(self) -> None:
        """Flush (with async durability) and close; the caller makes it happen once."""
        self.closed = True
        if os.getpid() == self._pid:
            try:
                if self.settings.durability == "async":
                    self.env.sync(True)
            finally:
                self.env.close()

    def check(self) -> None:
        """Raise unless this environment may be used here and now."""
        if self.closed:
            raise ClosedError(f"replica {self.path} is closed")
        if os.getpid() != self._pid:
            raise StorageError(
                f"replica {self.path} was opened in process {self._pid} and used after a fork; "
                "open it in the child instead"
            )

    # -- transactions -----------------------------------------------------------------------

    def begin_write(self) -> lmdb.Transaction:
        """Begin a write transaction; the caller holds the gate shared."""
        return self.env.begin(write=True, db=self.state)

    def commit(self, txn: lmdb.Transaction, dirty: bool = False) -> int:
        """Commit the write transaction ``txn``; its ticket for :meth:`make_durable`.
        ``dirty``: the caller knows ``txn`` changed pages (LMDB flushes nothing for a
        transaction that changed none)."""
        with self._tickets:  # under LMDB's writer lock still: tickets follow commit order
            self._issued += 1
            ticket = self._issued
        txn.commit()
        with self._tickets:
            self._finished = max(self._finished, ticket)
            if dirty and self._sync_commits:
                # Its data flush took the meta pages of every earlier commit along (each
                # finished before this one began): those are on disk now.
                self._durable = max(self._durable, ticket - 1)
        return ticket

    def make_durable(self, ticket: int) -> None:
        """Return once the commit of ``ticket`` is on disk (with sync durability)."""
        if not self._sync_commits or self._durable >= ticket:
            return
        with self._flushing:
            if self._durable >= ticket:
                return  # the fsync this thread waited for covered it
            with self._tickets:
                covered = self._finished
            try:
                self.sync()
            except lmdb.Error as exc:
                raise StorageError(
                    f"{self.path}: committed, but flushing it to disk failed: {exc}"
                ) from exc
            with self._tickets:
                self._durable = max(self._durable, covered)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction, growing the map and retrying as needed;
        return once it is committed (and durable, with sync durability).

        ``fn`` may run several times; it must change Python state only through its result.
        """
        gate = self.gate
        while True:
            seen = self.map_size
            ticket = 0
            gate.enter()
            try:
                txn = self.begin_write()
                try:
                    result = fn(txn)
                    ticket = self.commit(txn)
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
                gate.exit()
            if ticket:
                self.make_durable(ticket)
                return result
            if seen < 0:
                self.adopt_map_size()
            else:
                self.grow(seen)

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one read transaction (one consistent snapshot)."""
        self.check()
        txn = self.hold(write=False)
        try:
            return fn(txn)
        except lmdb.Error as exc:
            raise StorageError(f"read from {self.path} failed: {exc}") from exc
        finally:
            self.release(txn)

    def hold(self, write: bool) -> lmdb.Transaction:
        """Begin a transaction that stays open until :meth:`release`: the gate is held
        shared meanwhile, so the thread must begin no other."""
        gate = self.gate
        while True:
            gate.enter()
            try:
                return self.env.begin(write=write, db=self.state)
            except lmdb.MapResizedError:
                gate.exit()
            except lmdb.Error as exc:
                gate.exit()
                if write:
                    raise StorageError(f"cannot begin a write on {self.path}: {exc}") from exc
                raise StorageError(f"read from {self.path} failed: {exc}") from exc
            except BaseException:
                gate.exit()
                raise
            self.adopt_map_size()

    def release(self, txn: lmdb.Transaction) -> None:
        """End a transaction of :meth:`hold` (abort: a committed one stays committed)."""
        try:
            txn.abort()
        finally:
            self.gate.exit()

    def _read_failed(self, error: Exception, key: bytes) -> bytes | None:
        """What :attr:`get` answers when its read raised ``error``."""
        if self.closed:
            raise ClosedError(f"replica {self.path} is closed") from error
        if isinstance(error, lmdb.MapResizedError):  # another process grew the map
            self.adopt_map_size()
            return self.get(key)
        if isinstance(error, lmdb.Error):
            raise StorageError(f"read from {self.path} failed: {error}") from error
        raise error

    def sync(self) -> None:
        """Force everything committed so far to disk."""
        self.gate.enter()
        try:
            self.env.sync(True)
        finally:
            self.gate.exit()

    # -- map size ---------------------------------------------------------------------------

    def grow(self, seen: int) -> None:
        """Double the map after a MapFullError seen at size ``seen``."""
        with self.gate.exclusive():
            if self.map_size > seen:
                return  # another thread grew it meanwhile
            current = self.env.info()["map_size"]
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
        with self.gate.exclusive():
            info = self.env.info()
            used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
            limit = self.settings.max_map_size
            if info["map_size"] - used >= nbytes or info["map_size"] >= limit:
                return  # room enough, or the write will fail with a clear error anyway
            self._set_map_size(min(max(info["map_size"] * 2, used + nbytes), limit))

    def _set_map_size(self, size: int) -> None:
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise StorageError(f"{self.path}: cannot grow the map: {exc}") from exc
        self.map_size = self.env.info()["map_size"]
        self.stats["map_grown"] += 1
        log.info("%s: map grown to %d bytes", self.path, self.map_size)

    def adopt_map_size(self) -> None:
        """Another process grew the map: map its new size here."""
        with self.gate.exclusive():
            try:
                self.env.set_mapsize(0)
            except lmdb.Error as exc:
                raise StorageError(f"{self.path}: cannot adopt the grown map: {exc}") from exc
            self.map_size = self.env.info()["map_size"]
            self.stats["map_adopted"] += 1
