"""Reads of state rows shared by read and write transactions (the Node API's and
``crdt-inspect``'s): one key's dots, a namespace's size, its rows in order.

Every function reads in the transaction it is given and returns rows as they are stored
(``[replica, seq(, timestamp, value)]`` lists); nothing is cached.
"""

from __future__ import annotations

from typing import Any

import lmdb

from crdtstore.storage import layout


def get_dots(txn: lmdb.Transaction, state: Any, ns_id: int, ekey: bytes) -> list[list[Any]] | None:
    data = txn.get(layout.row_key(ns_id, layout.hash_encoded_key(ekey), ekey), db=state)
    return None if data is None else layout.row_dots(data)


def count_live(txn: lmdb.Transaction, buckets: Any, ns_id: int) -> int:
    """The live entries of ``ns_id``: the sum of its bucket rows' counts."""
    prefix = layout.ns_prefix(ns_id)
    total = 0
    with txn.cursor(db=buckets) as cur:
        ok = cur.set_range(prefix)
        while ok and cur.key()[:4] == prefix:
            total += layout.unpack_bucket(cur.value())[1]
            ok = cur.next()
    return total


def scan_chunk(
    txn: lmdb.Transaction, state: Any, ns_id: int, after: bytes | None, limit: int
) -> list[tuple[layout.Buf, Any, list[list[Any]]]]:
    """Up to ``limit`` rows ``(row key, key, dots)`` of ``ns_id`` after row key ``after``."""
    prefix = layout.ns_prefix(ns_id)
    out: list[tuple[layout.Buf, Any, list[list[Any]]]] = []
    with txn.cursor(db=state) as cur:
        ok = cur.set_range(after if after is not None else prefix)
        if ok and after is not None and cur.key() == after:
            ok = cur.next()
        while ok and len(out) < limit:
            rkey = cur.key()
            if rkey[:4] != prefix:
                break
            out.append(
                (
                    rkey,
                    layout.unpack_stored(layout.row_ekey(rkey)),
                    layout.row_dots(cur.value()),
                )
            )
            ok = cur.next()
    return out
