"""A node directory read by ``crdt-inspect``: one read transaction, nothing changed.

Invariants:

- The environment is opened read-only with LMDB's locking on (``readonly=True,
  lock=True``), which is safe while the node runs in another process: a
  :class:`Snapshot` reads one consistent state, from its open to its ``close()``.
- A directory this build cannot read (no ``data.mdb``, another storage format, a missing
  table) is refused at open with a message naming it; a read-only inspector never
  migrates. A corrupt row is a :class:`~crdtstore.errors.DecodeError` naming its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from crdtstore.crdt import CausalContext
from crdtstore.errors import DecodeError, StorageError
from crdtstore.storage import layout
from crdtstore.storage.tables import table_bytes


class Snapshot:
    """One read transaction over a node directory opened read-only."""

    def __init__(self, path: str) -> None:
        if not (Path(path) / "data.mdb").exists():
            raise SystemExit(f"crdt-inspect: {path} is not a node directory (no data.mdb)")
        try:
            # map_size=0 adopts the size recorded in the file.
            self.env = lmdb.open(
                path,
                readonly=True,
                lock=True,
                max_dbs=len(layout.TABLES) + 1,
                map_size=0,
                subdir=True,
                create=False,
            )
        except lmdb.Error as exc:
            raise StorageError(f"{path}: data.mdb is not a readable LMDB file: {exc}") from None
        try:
            meta = self.env.open_db(b"meta", create=False)
            with self.env.begin() as txn:
                fmt = txn.get(layout.META_FORMAT, db=meta)
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(f"{path}: not a node directory's LMDB file: {exc}") from None
        version = layout.read_u64(fmt) if fmt is not None and len(fmt) == 8 else fmt
        if version != layout.FORMAT_VERSION:
            self.env.close()
            raise SystemExit(
                f"crdt-inspect: {path} has storage format {version!r}; this build reads "
                f"{layout.FORMAT_VERSION} (opening it with crdtstore migrates an older one)"
            )
        try:
            self.dbs = {
                name: self.env.open_db(name.encode(), create=False) for name in layout.TABLES
            }
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(f"{path}: a table is missing or damaged: {exc}") from None
        self.txn = self.env.begin()

    def close(self) -> None:
        self.txn.abort()
        self.env.close()

    def meta(self, key: bytes) -> bytes | None:
        data: bytes | None = self.txn.get(key, db=self.dbs["meta"])
        return data

    def namespaces(self) -> dict[str, tuple[int, str]]:
        out = {}
        for name, data in self.txn.cursor(db=self.dbs["namespaces"]):
            ns_id, type_name = layout.unpack_stored(data)
            out[bytes(name).decode()] = (int(ns_id), str(type_name))
        return out

    def table_bytes(self) -> dict[str, int]:
        """Bytes of pages each table holds (see :mod:`crdtstore.storage.tables`)."""
        return {name: table_bytes(self.txn, db) for name, db in self.dbs.items()}

    def context(self, ns_id: int) -> CausalContext:
        data = self.txn.get(layout.context_key(ns_id), db=self.dbs["logorder"])
        return CausalContext() if data is None else layout.unpack_context(data)

    def raw_rows(self, ns_id: int) -> Iterator[tuple[bytes, bytes]]:
        """``(row key, row)`` of every live row, undecoded."""
        prefix = layout.ns_prefix(ns_id)
        with self.txn.cursor(db=self.dbs["state"]) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[:4] == prefix:
                yield bytes(cur.key()), bytes(cur.value())
                ok = cur.next()

    def rows(self, ns_id: int, stamped: bool) -> Iterator[tuple[Any, list[list[Any]]]]:
        """``(key, dots)`` of every live row; DecodeError at a corrupt one."""
        for rkey, data in self.raw_rows(ns_id):
            yield read_row(rkey, data, stamped)

    def log(self, ns_id: int) -> dict[str, dict[str, int]]:
        prefix = layout.ns_prefix(ns_id)
        out: dict[str, dict[str, int]] = {}
        with self.txn.cursor(db=self.dbs["log"]) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[:4] == prefix:
                last, origin, encoded = layout.unpack_log(cur.value())
                first = layout.log_first(cur.key())
                info = out.setdefault(
                    origin, {"batches": 0, "first": first, "last": last, "bytes": 0}
                )
                info["batches"] += 1
                info["first"] = min(info["first"], first)
                info["last"] = max(info["last"], last)
                info["bytes"] += len(encoded)
                ok = cur.next()
        return out


def read_row(rkey: bytes, data: bytes, stamped: bool) -> tuple[Any, list[list[Any]]]:
    """The key and dots of a state row; DecodeError, naming the row, if it is corrupt."""
    ekey = layout.row_ekey(rkey)
    try:
        key = layout.unpack_stored(ekey)
        return key, layout.checked_dots(layout.row_dots(data), stamped)
    except DecodeError as exc:
        raise DecodeError(f"row of encoded key {bytes(ekey).hex()}: {exc}") from exc
