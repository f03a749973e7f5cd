"""Namespace records and causal contexts, with this process's caches of both.

Invariants:

- A namespace's id and type never change once its record is written (ids come from the
  ``meta`` counter and are never reused), so a committed record may be cached for the
  life of the process; :meth:`Namespaces.remember` is called only after the transaction
  that created or read it committed.
- A namespace's causal context is stored as ``pack_stored(encode_context(ctx))`` in the
  ``logorder`` table beside its log count (:mod:`crdtstore.storage.layout`). A context is
  cached with the exact bytes it was decoded from, and used only while the stored bytes
  are the same: another process may have changed it since.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from crdtstore.codec import encode_context
from crdtstore.crdt import CRDT_TYPES, CausalContext
from crdtstore.errors import InvalidValue, TypeMismatch
from crdtstore.storage import layout
from crdtstore.sync.messages import MAX_NAMESPACE_LEN


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


class Namespaces:
    """The ``namespaces`` table, the namespace-id counter in ``meta``, and the contexts in
    ``logorder``, read and written in the caller's transactions."""

    def __init__(self, dbs: Mapping[str, Any]) -> None:
        self._db = dbs["namespaces"]
        self._meta = dbs["meta"]
        self._order = dbs["logorder"]
        self._ids: dict[str, tuple[int, str]] = {}
        self._contexts: dict[int, tuple[bytes, CausalContext]] = {}

    def cached(self, name: str) -> tuple[int, str] | None:
        """``(ns_id, type)`` of a namespace this process has seen committed, else None."""
        return self._ids.get(name)

    def lookup(self, txn: lmdb.Transaction, name: str) -> tuple[int, str] | None:
        hit = self._ids.get(name)
        if hit is not None:
            return hit
        data = txn.get(name.encode(), db=self._db)
        if data is None:
            return None
        ns_id, type_name = layout.unpack_stored(data)
        return int(ns_id), str(type_name)

    def ensure(self, txn: lmdb.Transaction, name: str, type_name: str) -> tuple[int, str, bool]:
        """``(ns_id, type, created)``; raises TypeMismatch, writes only when creating."""
        check_namespace(name)
        if type_name not in CRDT_TYPES:
            raise InvalidValue(f"unknown CRDT type {type_name!r}; known: {sorted(CRDT_TYPES)}")
        found = self.lookup(txn, name)
        if found is not None:
            if found[1] != type_name:
                raise TypeMismatch(f"namespace {name!r} holds a {found[1]}, not a {type_name}")
            return found[0], found[1], False
        meta = self._meta
        ns_id = layout.read_u64(txn.get(layout.META_NEXT_NS, db=meta) or layout.u64(1))
        txn.put(layout.META_NEXT_NS, layout.u64(ns_id + 1), db=meta)
        txn.put(name.encode(), layout.pack_stored([ns_id, type_name]), db=self._db)
        return ns_id, type_name, True

    def remember(self, name: str, ns_id: int, type_name: str) -> None:
        """Cache a namespace once the transaction that created or read it committed."""
        self._ids[name] = (ns_id, type_name)

    def all(self, txn: lmdb.Transaction) -> dict[str, str]:
        """Name -> type of every namespace."""
        return {
            bytes(name).decode(): str(layout.unpack_stored(data)[1])
            for name, data in txn.cursor(db=self._db)
        }

    # -- contexts ---------------------------------------------------------------------------

    def load_context(self, txn: lmdb.Transaction, ns_id: int) -> CausalContext:
        data = txn.get(layout.context_key(ns_id), db=self._order)
        if data is None:
            return CausalContext()
        cached = self._contexts.get(ns_id)
        if cached is not None and cached[0] == data:
            return cached[1]
        data = bytes(data)
        ctx = layout.unpack_context(data)
        self._contexts[ns_id] = (data, ctx)
        return ctx

    def store_context(self, txn: lmdb.Transaction, ns_id: int, ctx: CausalContext) -> bytes:
        """Write ``ctx``; its stored bytes, for :meth:`remember_context` after the commit."""
        data = layout.pack_stored(encode_context(ctx))
        txn.put(layout.context_key(ns_id), data, db=self._order)
        return data

    def remember_context(self, ns_id: int, data: bytes, ctx: CausalContext) -> None:
        """Cache ``ctx``, stored as ``data`` by a transaction that committed."""
        self._contexts[ns_id] = (data, ctx)
