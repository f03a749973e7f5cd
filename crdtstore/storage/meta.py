"""The ``meta`` table of a node directory: its storage format, its node id, its topics.

Invariants: a directory holds one node id for its whole life (a different one asked of
it is refused, :class:`~crdtstore.errors.IdentityMismatch`); it is read and written only
in the storage format this build writes, older ones being migrated by the transaction
that opens them (:mod:`crdtstore.storage.migrations`), newer ones refused.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import lmdb

from crdtstore.errors import IdentityMismatch, StorageError
from crdtstore.storage import layout
from crdtstore.storage.migrations import OLDEST, FormatMigration

log = logging.getLogger(__name__)


class DirectoryMeta:
    """Reads and writes the meta records of one environment's ``meta`` table."""

    def __init__(self, path: Path, db: Any, migration: FormatMigration) -> None:
        self._path = path
        self._db = db
        self._migration = migration
        self.chose_id = False
        """Whether :meth:`open` wrote the node id (the directory had none before)."""

    def open(self, txn: lmdb.Transaction, node_id: str | None) -> str:
        """Check (or write, for a new directory) the format, migrating an older one, and
        the node id: the directory's, or ``node_id`` (a generated one if None) if new."""
        db = self._db
        fmt = txn.get(layout.META_FORMAT, db=db)
        version = layout.read_u64(fmt) if fmt is not None and len(fmt) == 8 else fmt
        if version is None:
            txn.put(layout.META_FORMAT, layout.u64(layout.FORMAT_VERSION), db=db)
            txn.put(layout.META_NEXT_NS, layout.u64(1), db=db)
        elif isinstance(version, int) and OLDEST <= version < layout.FORMAT_VERSION:
            self._migration.run(txn, version)
            txn.put(layout.META_FORMAT, layout.u64(layout.FORMAT_VERSION), db=db)
            log.info("storage format migrated from %d to %d", version, layout.FORMAT_VERSION)
        elif version != layout.FORMAT_VERSION:
            raise StorageError(
                f"{self._path} has storage format version {version!r}; this build reads only "
                f"version {layout.FORMAT_VERSION}"
            )
        stored = txn.get(layout.META_NODE_ID, db=db)
        if stored is not None:
            stored_id = bytes(stored).decode()
            if node_id is not None and node_id != stored_id:
                raise IdentityMismatch(
                    f"{self._path} belongs to node {stored_id!r}, not {node_id!r}"
                )
            return stored_id
        chosen = node_id if node_id is not None else secrets.token_hex(4)
        txn.put(layout.META_NODE_ID, chosen.encode(), db=db)
        self.chose_id = True
        return chosen

    def forget_id(self, txn: lmdb.Transaction, node_id: str) -> bool:
        """Take back the id :meth:`open` wrote, if it is still ``node_id``: a directory whose
        first start failed has not yet become that node."""
        stored = txn.get(layout.META_NODE_ID, db=self._db)
        if not self.chose_id or stored is None or bytes(stored).decode() != node_id:
            return False
        txn.delete(layout.META_NODE_ID, db=self._db)
        self.chose_id = False
        return True

    def topics(self, txn: lmdb.Transaction) -> tuple[str, ...] | None:
        """The namespaces the directory replicates, as last declared (None: all)."""
        data = txn.get(layout.META_TOPICS, db=self._db)
        if data is None:
            return None
        value = layout.unpack_stored(data)
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise StorageError(f"{self._path}: corrupt topics record")
        return tuple(value)

    def declare_topics(self, txn: lmdb.Transaction, topics: tuple[str, ...] | None) -> None:
        if topics is None:
            txn.delete(layout.META_TOPICS, db=self._db)
        else:
            txn.put(layout.META_TOPICS, layout.pack_stored(sorted(topics)), db=self._db)
