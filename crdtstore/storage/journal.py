"""Change events and the bounded journal that carries them between processes.

Every commit that changes what a reader would see (a key's value or an element's
presence) appends one journal row holding that commit's :class:`Change` events, in the
same write transaction as the change itself, so a watcher never sees an event for a change
that did not commit, nor misses one that did (unless it falls behind what the journal
still holds, which is counted). Journal sequence numbers only grow; trimming drops the
oldest rows.

The journal is bounded three ways, whichever bites first (like etcd's compaction by
revision count and retention, and its space quota): ``journal_max_entries`` commits,
``journal_max_bytes`` of pages (the table's own page count, from LMDB's stat, so the bound
is on disk use, not on an estimate), and ``journal_max_age_ms``. The newest row always
stays. Rows go in chunks (down to 15/16 of a bound): dropping the oldest row at every
commit would make each commit dirty (and fsync) the journal's first page as well as its
last.

A row is ``0x01 + written_ms (8 BE) + msgpack([[namespace, origin, [key, old, new, kind,
key, old, new, kind, ...]], ...])``: when it was written, then its events in commit order,
in groups of one namespace and one origin, which pack faster and smaller than one list per
event. ``kind`` is an index into :data:`KINDS`, so "set to None" (``put``, ``new=None``)
and "deleted" (``delete``) differ. Rows of storage formats 4 to 6 (a bare msgpack list,
which never starts with byte 0x01: groups ``[namespace, origin, [key, old, new, ...]]``,
or format 4's ``[namespace, key, old, new, origin]``) still read; their kinds are inferred
from the values, so there an LWW-map ``new=None`` reads as ``delete``, and their age as
unknown (they go by count and bytes only).

Events of an OR-Set carry ``old``/``new`` = ``True`` (present) or ``False`` (absent);
events of an LWW-map carry the value before and after, ``None`` for absent. ``origin`` is
the node whose write made the change: the local node, a delta batch's origin, or for a
range repair the writer of the new value (``None`` when a repair revealed a removal).
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lmdb

from crdtstore.errors import DecodeError
from crdtstore.storage.layout import Buf, pack, read_u64, u64, unpack_stored
from crdtstore.storage.tables import table_bytes

log = logging.getLogger(__name__)

Kind = Literal["put", "delete", "add", "remove"]
KINDS: tuple[Kind, ...] = ("put", "delete", "add", "remove")
PUT, DELETE, ADD, REMOVE = range(4)
"""A stored event's kind: its index in :data:`KINDS`."""
EVENT_WIDTH = 4
"""Items per event in a group's flat list: key, old, new, kind."""


@dataclass(frozen=True, slots=True)
class Change:
    """One visible change of one key in one namespace. ``kind`` says what happened:
    ``put`` (an LWW-map key set, maybe to None), ``delete`` (an LWW-map key removed),
    ``add`` or ``remove`` (an OR-Set element)."""

    namespace: str
    key: Any
    old: Any
    new: Any
    origin: str | None
    kind: Kind


Group = list[Any]
"""``[namespace, origin, [key, old, new, kind, ...]]``: consecutive events of one
namespace and origin, as a journal row holds them (the list of events is flat)."""

ROW_TAG = 1
_ROW_HEAD = struct.Struct(">BQ")
"""A row's tag and the wall-clock milliseconds it was written at."""


def last_seq(txn: lmdb.Transaction, db: Any) -> int:
    """Sequence number of the newest journal row, 0 if there is none."""
    with txn.cursor(db) as cur:
        return read_u64(cur.key()) if cur.last() else 0


def pack_row(groups: list[Group], written_ms: int) -> bytes:
    return _ROW_HEAD.pack(ROW_TAG, written_ms) + pack(groups)


def written_at(data: Buf) -> int | None:
    """When a row was written (ms), None for a row of an older format or a corrupt one."""
    if len(data) < _ROW_HEAD.size or data[0] != ROW_TAG:
        return None
    return int(_ROW_HEAD.unpack_from(data)[1])


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the journal keeps: about the newest ``entries`` rows at most, in at most about
    ``bytes`` of pages, none older than about ``age_ms``; always the newest row (see the
    module's docstring)."""

    entries: int
    bytes: int
    age_ms: int


def append(txn: lmdb.Transaction, db: Any, groups: list[Group], bounds: Bounds, now_ms: int) -> int:
    """Append one row of events (``groups``, none empty), then trim the oldest rows by
    ``bounds``; returns the new row's seq."""
    data = pack_row(groups, now_ms)
    with txn.cursor(db) as cur:
        seq = read_u64(cur.key()) + 1 if cur.last() else 1
    txn.put(u64(seq), data, db=db)
    trim(txn, db, seq, bounds, now_ms)
    return seq


def trim(txn: lmdb.Transaction, db: Any, newest: int, bounds: Bounds, now_ms: int) -> int:
    """Drop the oldest rows (never row ``newest``) while a bound is exceeded, in chunks:
    once one is, down to 15/16 of it. How many went."""
    keep = bounds.entries
    by_count = newest - keep  # rows up to this one may go
    too_old = now_ms - bounds.age_ms
    max_bytes = bounds.bytes
    dropped = 0
    with txn.cursor(db) as cur:
        if not cur.first():
            return 0
        first = read_u64(cur.key())
        written = written_at(cur.value())
        over_count = by_count > 0 and first <= by_count - keep // 16
        over_age = written is not None and written < too_old
        over_bytes = table_bytes(txn, db) > max_bytes
        if not (over_count or over_age or over_bytes):
            return 0
        # Trim with slack below each bound, so the next commits do not trim again.
        count_to = by_count if over_count else 0
        age_to = too_old + bounds.age_ms // 16
        bytes_to = max_bytes - max_bytes // 16
        while True:
            seq = read_u64(cur.key())
            if seq >= newest:
                break
            if seq > count_to:
                written = written_at(cur.value())
                if (written is None or written >= age_to) and (table_bytes(txn, db) <= bytes_to):
                    break
            if not cur.delete():
                break
            dropped += 1
    return dropped


def read_after(
    txn: lmdb.Transaction, db: Any, after: int
) -> Iterator[tuple[int, list[Change] | DecodeError]]:
    """Journal rows with seq > ``after``, oldest first; a corrupt row comes as the error
    its events raised, so a reader can pass it and go on to the next."""
    with txn.cursor(db) as cur:
        if not cur.set_range(u64(after + 1)):
            return
        for key, value in cur:
            try:
                yield read_u64(key), decode_events(value)
            except DecodeError as exc:
                yield read_u64(key), exc


def first_seq(txn: lmdb.Transaction, db: Any) -> int:
    with txn.cursor(db) as cur:
        return read_u64(cur.key()) if cur.first() else 0


def _inferred_kind(new: Any) -> Kind:
    """The kind of an event of an older row, which stored none."""
    if new is True:
        return "add"
    if new is False:
        return "remove"
    return "delete" if new is None else "put"


def stored_groups(data: Buf) -> Any:
    """A row's groups as msgpack holds them (unchecked); DecodeError if corrupt."""
    return unpack_stored(data[_ROW_HEAD.size :] if written_at(data) is not None else data)


def decode_events(data: Buf) -> list[Change]:
    if written_at(data) is not None:
        return _decode_groups(stored_groups(data))
    return _decode_legacy(stored_groups(data))


def _decode_groups(rows: Any) -> list[Change]:
    if not isinstance(rows, list):
        raise DecodeError("journal row is not a list")
    out = []
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and (row[1] is None or isinstance(row[1], str))
            and isinstance(row[2], list)
            and len(row[2]) % EVENT_WIDTH == 0
        ):
            raise DecodeError(
                "journal group is not [namespace, origin, [key, old, new, kind, ...]]"
            )
        namespace, origin, flat = row
        for i in range(0, len(flat), EVENT_WIDTH):
            kind = flat[i + 3]
            if type(kind) is not int or not 0 <= kind < len(KINDS):
                raise DecodeError(f"journal event kind {kind!r:.20} is not one of 0..3")
            out.append(Change(namespace, flat[i], flat[i + 1], flat[i + 2], origin, KINDS[kind]))
    return out


def _decode_legacy(rows: Any) -> list[Change]:
    """A row of storage formats 4 to 6 (see the module's docstring)."""
    if not isinstance(rows, list):
        raise DecodeError("journal row is not a list")
    out = []
    for row in rows:
        if (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and (row[1] is None or isinstance(row[1], str))
            and isinstance(row[2], list)
            and len(row[2]) % 3 == 0
        ):
            namespace, origin, flat = row
            for i in range(0, len(flat), 3):
                new = flat[i + 2]
                out.append(
                    Change(namespace, flat[i], flat[i + 1], new, origin, _inferred_kind(new))
                )
        elif isinstance(row, list) and len(row) == 5 and isinstance(row[0], str):
            kind = _inferred_kind(row[3])  # format 4: one event
            out.append(Change(row[0], row[1], row[2], row[3], row[4], kind))
        else:
            raise DecodeError("journal group is not [namespace, origin, [key, old, new, ...]]")
    return out


class Journal:
    """The ``journal`` table of one environment, read and written in the caller's
    transactions; trimmed by ``bounds`` as it is appended to."""

    def __init__(
        self,
        db: Any,
        bounds: Bounds,
        stats: Counter[str],
        path: Path,
        now_ms: Callable[[], int],
    ) -> None:
        self._db = db
        self._bounds = bounds
        self._stats = stats
        self._path = path
        self._now_ms = now_ms

    def record(self, txn: lmdb.Transaction, groups: list[Group]) -> None:
        """Journal the events of ``groups`` (some maybe empty) in one row, if any."""
        groups = [g for g in groups if g[2]]  # a local write keeps a group per namespace
        if groups:
            append(txn, self._db, groups, self._bounds, self._now_ms())

    def last(self, txn: lmdb.Transaction) -> int:
        return last_seq(txn, self._db)

    def after(
        self, txn: lmdb.Transaction, after: int, limit: int
    ) -> tuple[int, list[tuple[int, list[Change]]]]:
        """``(first seq still held, up to ``limit`` rows after ``after``)``. A corrupt row
        comes with no changes (counted in ``journal_rows_corrupt``, logged): its changes
        are lost to watchers, and those after it still reach them."""
        rows: list[tuple[int, list[Change]]] = []
        for seq, changes in read_after(txn, self._db, after):
            if isinstance(changes, DecodeError):
                self._stats["journal_rows_corrupt"] += 1
                log.error("%s: journal row %d is corrupt, skipped: %s", self._path, seq, changes)
                changes = []
            rows.append((seq, changes))
            if len(rows) >= limit:
                break
        return first_seq(txn, self._db), rows
