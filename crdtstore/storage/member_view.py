"""The directory's copy of the failure detector's view: ``DIR/members.mdb``.

Invariants:

- Only the process holding the directory's network role writes it (its overlay thread,
  :mod:`crdtstore.overlay_liveness`); every process sharing the directory may read it.
- It is an LMDB environment of its own, not a table of the replica's: it is not state
  (never replicated, journaled or repaired); its writes must not wait behind the replica's
  writer lock, which a bootstrap's apply holds for seconds; and they are not fsynced,
  since after a crash the view is stale anyway (its writer is gone, which readers see).
- A process opens the file once, however many handles use it: LMDB's locks break when a
  process opens one environment twice and closes one of them.
- A write replaces the whole view (the stamp and one row per member) in one transaction,
  so a reader never sees half of one; it puts only the rows that differ from what the
  same handle last wrote (the first write of a handle, or after a failed one, all).

Layout, one unnamed database, values msgpack:

- ``s``: the stamp ``[pid, node_id, router or None, written_at_ms, interval_ms, stopped]``.
- ``m`` + node id: ``[status, incarnation, since_ms, last_heard_ms]``.
- ``c`` + seq (8 bytes BE): one status change ``[node_id, old or None, new, incarnation,
  at_ms]``; the newest ``CHANGES_KEPT`` of them, for watchers in other processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import lmdb

from crdtstore.errors import DecodeError, StorageError
from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.observed import Observation, ViewStamp
from crdtstore.storage.layout import pack_stored, read_u64, u64, unpack_stored

log = logging.getLogger(__name__)

VIEW_FILE = "members.mdb"
MAP_SIZE = 64 * 1024 * 1024
"""Fixed: a view of 10,000 members is about a megabyte, and pages freed by one write are
reused by the next (no reader keeps old snapshots for long)."""
CHANGES_KEPT = 4096
"""Status changes kept for watchers; one that falls further behind reconciles from the rows."""

STAMP_KEY = b"s"
ROW_PREFIX = b"m"
CHANGE_PREFIX = b"c"


@dataclass(frozen=True, slots=True)
class LoggedChange:
    seq: int
    node_id: str
    old: MemberStatus | None
    new: MemberStatus
    incarnation: int
    at_ms: int


class _SharedEnv:
    """One LMDB environment per view file per process, shared by its handles."""

    lock = threading.Lock()
    opened: ClassVar[dict[str, tuple[lmdb.Environment, int, int]]] = {}  # env, users, pid

    @classmethod
    def acquire(cls, path: str) -> lmdb.Environment:
        with cls.lock:
            entry = cls.opened.get(path)
            if entry is not None and entry[2] == os.getpid():
                env, users, pid = entry
                cls.opened[path] = (env, users + 1, pid)
                return env
            env = _open_env(path)
            cls.opened[path] = (env, 1, os.getpid())
            return env

    @classmethod
    def release(cls, path: str) -> None:
        with cls.lock:
            env, users, pid = cls.opened[path]
            if users > 1:
                cls.opened[path] = (env, users - 1, pid)
                return
            del cls.opened[path]
        if pid == os.getpid():
            env.close()


def _open_env(path: str) -> lmdb.Environment:
    try:
        return lmdb.open(
            path,
            subdir=False,
            map_size=MAP_SIZE,
            max_dbs=0,
            sync=False,
            metasync=False,
            lock=True,
            max_spare_txns=2,
        )
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the member view {path}: {exc}") from exc


class MemberViewStore:
    """A handle on a directory's member view. Thread-safe; ``close()`` is idempotent."""

    def __init__(self, directory: str | os.PathLike[str], stats: Counter[str]) -> None:
        self.path = os.path.realpath(os.path.join(os.fspath(directory), VIEW_FILE))
        self._stats = stats
        self._env: lmdb.Environment | None = _SharedEnv.acquire(self.path)
        self._inode = os.stat(self.path).st_ino
        # The rows this handle last wrote (its writer is the file's only one): a write
        # puts only rows that differ, so an idle view costs its stamp, not one row per
        # member. None: not known, so the next write replaces every row.
        self._written: dict[bytes, bytes] | None = None

    @classmethod
    def open_existing(
        cls, directory: str | os.PathLike[str], stats: Counter[str]
    ) -> MemberViewStore | None:
        """The view if some role holder ever wrote one here (readers create nothing)."""
        if not os.path.exists(os.path.join(os.fspath(directory), VIEW_FILE)):
            return None
        return cls(directory, stats)

    @classmethod
    def open_for_writing(
        cls, directory: str | os.PathLike[str], stats: Counter[str]
    ) -> MemberViewStore:
        """The view, for its writer: a file this process cannot open (damaged by an OS
        crash, as unsynced writes may be) is replaced by an empty one. Nothing in it is
        needed: the holder's detector rebuilds the view within a probe period."""
        try:
            return cls(directory, stats)
        except StorageError as exc:
            path = os.path.join(os.fspath(directory), VIEW_FILE)
            log.warning("%s (replacing it with an empty view)", exc)
            stats["member_view_replaced"] += 1
            for name in (path, f"{path}-lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            return cls(directory, stats)

    def replaced(self) -> bool:
        """Whether the file was replaced since it was opened (a holder recreated a damaged
        one): this handle then reads a file nobody writes any more."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def close(self) -> None:
        if self._env is not None:
            self._env = None
            _SharedEnv.release(self.path)

    def _begin(self, write: bool = False) -> lmdb.Transaction:
        if self._env is None:
            raise StorageError(f"member view {self.path} is closed")
        return self._env.begin(write=write)

    # -- writing (the role holder) ----------------------------------------------------------

    def write(
        self,
        stamp: ViewStamp,
        observations: Mapping[str, Observation],
        changes: Sequence[tuple[str, MemberStatus | None, MemberStatus, int]] = (),
    ) -> None:
        """Replace the view with ``observations`` under ``stamp``; log ``changes``
        (``(node_id, old, new, incarnation)``, in the order they happened)."""
        wanted = {
            ROW_PREFIX + node_id.encode(): pack_stored(
                [o.status.value, o.incarnation, o.since_ms, o.last_heard_ms]
            )
            for node_id, o in observations.items()
        }
        try:
            with self._begin(write=True) as txn:
                self._write(txn, stamp, wanted, changes)
        except lmdb.Error as exc:
            self._written = None  # what the file holds is unknown: rewrite all next time
            raise StorageError(f"cannot write the member view {self.path}: {exc}") from exc
        self._written = wanted

    def _write(
        self,
        txn: lmdb.Transaction,
        stamp: ViewStamp,
        wanted: dict[bytes, bytes],
        changes: Sequence[tuple[str, MemberStatus | None, MemberStatus, int]],
    ) -> None:
        written = self._written
        if written is None:
            with txn.cursor() as cur:
                ok = cur.set_range(ROW_PREFIX)
                while ok and cur.key()[:1] == ROW_PREFIX:
                    ok = cur.delete() if bytes(cur.key()) not in wanted else cur.next()
            written = {}
        else:
            for key in written.keys() - wanted.keys():
                txn.delete(key)
        for key, row in wanted.items():
            if written.get(key) != row:
                txn.put(key, row)
        value = [
            stamp.pid,
            stamp.node_id,
            stamp.router,
            stamp.written_at_ms,
            stamp.interval_ms,
            stamp.stopped,
        ]
        txn.put(STAMP_KEY, pack_stored(value))
        if not changes:
            return
        seq = self._last_seq(txn)
        for node_id, old, new, incarnation in changes:
            seq += 1
            change = [node_id, None if old is None else old.value, new.value, incarnation]
            txn.put(CHANGE_PREFIX + u64(seq), pack_stored([*change, stamp.written_at_ms]))
        with txn.cursor() as cur:
            ok = cur.set_range(CHANGE_PREFIX)
            while (
                ok
                and cur.key()[:1] == CHANGE_PREFIX
                and read_u64(cur.key(), 1) + CHANGES_KEPT <= seq
            ):
                ok = cur.delete()

    # -- reading (any process) --------------------------------------------------------------

    def read(self) -> tuple[ViewStamp | None, dict[str, Observation]]:
        """The stamp (None: never written, or unreadable: counted) and the rows."""
        try:
            with self._begin() as txn:
                stamp = self._stamp(txn.get(STAMP_KEY))
                rows: dict[str, Observation] = {}
                with txn.cursor() as cur:
                    ok = cur.set_range(ROW_PREFIX)
                    while ok and cur.key()[:1] == ROW_PREFIX:
                        self._row(bytes(cur.key()), cur.value(), rows)
                        ok = cur.next()
        except lmdb.Error as exc:
            raise StorageError(f"cannot read the member view {self.path}: {exc}") from exc
        return stamp, rows

    def last_seq(self) -> int:
        """The sequence number of the newest logged change (0: none)."""
        try:
            with self._begin() as txn:
                return self._last_seq(txn)
        except lmdb.Error as exc:
            raise StorageError(f"cannot read the member view {self.path}: {exc}") from exc

    def changes_after(self, seq: int) -> tuple[int, list[LoggedChange]]:
        """The logged changes after ``seq`` in order, and the newest seq. A caller whose
        ``seq`` has been trimmed away gets what is left (its first seq tells it so)."""
        out: list[LoggedChange] = []
        try:
            with self._begin() as txn, txn.cursor() as cur:
                last = seq
                ok = cur.set_range(CHANGE_PREFIX + u64(seq + 1))
                while ok and cur.key()[:1] == CHANGE_PREFIX:
                    last = read_u64(cur.key(), 1)
                    change = self._change(last, cur.value())
                    if change is not None:
                        out.append(change)
                    ok = cur.next()
        except lmdb.Error as exc:
            raise StorageError(f"cannot read the member view {self.path}: {exc}") from exc
        return last, out

    @staticmethod
    def _last_seq(txn: lmdb.Transaction) -> int:
        with txn.cursor() as cur:
            after = bytes([CHANGE_PREFIX[0] + 1])  # the first key past every change row
            ok = cur.prev() if cur.set_range(after) else cur.last()
            if ok and cur.key()[:1] == CHANGE_PREFIX:
                return read_u64(cur.key(), 1)
        return 0

    # The view is written by this package only, but a damaged file must cost a reader one
    # member (or the stamp, which makes the view stale), never the call: counted, skipped.

    def _stamp(self, data: Any) -> ViewStamp | None:
        if data is None:
            return None
        try:
            value = unpack_stored(data)
            pid, node_id, router, written, interval, stopped = _fields(value, 6)
            return ViewStamp(
                _int(pid),
                _str(node_id),
                None if router is None else _str(router),
                _int(written),
                _int(interval),
                _bool(stopped),
            )
        except DecodeError:
            self._stats["member_view_corrupt"] += 1
            return None

    def _row(self, key: bytes, data: Any, rows: dict[str, Observation]) -> None:
        try:
            node_id = key[1:].decode()
            status, incarnation, since, heard = _fields(unpack_stored(data), 4)
            rows[node_id] = Observation(
                _status(status), _int(incarnation), _int(since), _int(heard)
            )
        except (DecodeError, UnicodeDecodeError):
            self._stats["member_view_corrupt"] += 1

    def _change(self, seq: int, data: Any) -> LoggedChange | None:
        try:
            node_id, old, new, incarnation, at = _fields(unpack_stored(data), 5)
            return LoggedChange(
                seq,
                _str(node_id),
                None if old is None else _status(old),
                _status(new),
                _int(incarnation),
                _int(at),
            )
        except DecodeError:
            self._stats["member_view_corrupt"] += 1
            return None


def _fields(value: Any, n: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != n:
        raise DecodeError(f"member view entry is not a list of {n}: {value!r}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"member view field {value!r} is not an int")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"member view field {value!r} is not a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"member view field {value!r} is not a bool")
    return value


def _status(value: Any) -> MemberStatus:
    try:
        return MemberStatus(value)
    except ValueError:
        raise DecodeError(f"member view status {value!r} is unknown") from None
