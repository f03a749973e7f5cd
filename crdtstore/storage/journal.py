"""Change events and the bounded journal that carries them between processes.

Every commit that changes what a reader would see (a key's value or an element's
presence) appends one journal row holding that commit's :class:`Change` events, in the
same write transaction as the change itself, so a watcher never sees an event for a change
that did not commit, nor misses one that did (unless it falls more than
``journal_max_entries`` commits behind, which is counted; the journal holds up to a
sixteenth more, trimmed in chunks). Journal sequence numbers only grow; trimming drops
the oldest rows.

A row is ``msgpack([[namespace, origin, [key, old, new, key, old, new, ...]], ...])``:
its events in commit order, in groups of one namespace and one origin, which pack faster
and smaller than one list per event
(storage format 4 wrote ``[[namespace, key, old, new, origin], ...]``; such rows still
read).

Events of an OR-Set carry ``old``/``new`` = ``True`` (present) or ``False`` (absent);
events of an LWW-map carry the value before and after, ``None`` for absent. ``origin`` is
the node whose write made the change: the local node, a delta batch's origin, or for a
range repair the writer of the new value (``None`` when a repair revealed a removal).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from crdtstore.errors import DecodeError
from crdtstore.storage.layout import Buf, read_u64, u64, unpack_stored

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """One visible change of one key in one namespace."""

    namespace: str
    key: Any
    old: Any
    new: Any
    origin: str | None


Group = list[Any]
"""``[namespace, origin, [key, old, new, ...]]``: consecutive events of one namespace and
origin, as a journal row holds them (the list of events is flat)."""


def last_seq(txn: lmdb.Transaction, db: Any) -> int:
    """Sequence number of the newest journal row, 0 if there is none."""
    with txn.cursor(db) as cur:
        return read_u64(cur.key()) if cur.last() else 0


def append(txn: lmdb.Transaction, db: Any, groups: list[Group], keep: int) -> int:
    """Append one row of events (``groups``, none empty), keeping at least the newest
    ``keep`` rows and at most ``keep + keep // 16``; returns the new row's seq.

    Rows go in chunks of ``keep // 16``: dropping the oldest row at every commit would
    make each commit dirty (and fsync) the journal's first page as well as its last."""
    with txn.cursor(db) as cur:
        seq = read_u64(cur.key()) + 1 if cur.last() else 1
        oldest = seq - keep  # rows up to this one may go
        if oldest > 0 and cur.first() and read_u64(cur.key()) <= oldest - keep // 16:
            while read_u64(cur.key()) <= oldest and cur.delete():
                pass
    txn.put(u64(seq), msgpack.packb(groups, use_bin_type=True), db=db)
    return seq


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


def decode_events(data: Buf) -> list[Change]:
    rows = unpack_stored(data)
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
                out.append(Change(namespace, flat[i], flat[i + 1], flat[i + 2], origin))
        elif isinstance(row, list) and len(row) == 5 and isinstance(row[0], str):
            out.append(Change(row[0], row[1], row[2], row[3], row[4]))  # format 4: one event
        else:
            raise DecodeError("journal group is not [namespace, origin, [key, old, new, ...]]")
    return out


class Journal:
    """The ``journal`` table of one environment, read and written in the caller's
    transactions; keeps at least ``keep`` rows (``journal_max_entries``)."""

    def __init__(self, db: Any, keep: int, stats: Counter[str], path: Path) -> None:
        self._db = db
        self._keep = keep
        self._stats = stats
        self._path = path

    def record(self, txn: lmdb.Transaction, groups: list[Group]) -> None:
        """Journal the events of ``groups`` (some maybe empty) in one row, if any."""
        groups = [g for g in groups if g[2]]  # a local write keeps a group per namespace
        if groups:
            append(txn, self._db, groups, self._keep)

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
