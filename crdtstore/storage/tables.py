"""How many bytes of the file each table holds, as LMDB counts them.

A table's share is its pages (branch, leaf, overflow) times the page size, read from the
table's root record in O(1): what the bounds on the journal and the delta log compare,
and what ``crdt-inspect`` shows. Freed pages go to LMDB's free list, reused by later
commits; the file does not shrink, it stops growing.
"""

from __future__ import annotations

from typing import Any

import lmdb


def table_bytes(txn: lmdb.Transaction, db: Any) -> int:
    """Bytes of pages ``db`` holds in ``txn``'s view (its own writes included)."""
    st = txn.stat(db)
    return int((st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"])
