"""Key order and fingerprints for range reconciliation.

Keys are ordered by a 64-bit hash of their encoding, so ranges of the hash space split
any keyspace evenly, whatever the keys look like. A range's fingerprint is the XOR of the
hashes of its entries; an entry's hash covers its key and its live dots (a dot's payload
never changes, so the dots stand for it). XOR makes a fingerprint updatable in O(1) when
one entry changes, and equal entries on two replicas always give equal fingerprints.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable

# A key's canonical bytes (its msgpack encoding) are the codec's; re-exported here, where
# the order they define is used.
from crdtstore.codec import encode_key as encode_key
from crdtstore.crdt import Dot, Key

HASH_SPACE = 1 << 64


def key_hash(key: Key) -> int:
    """Position of ``key`` in the reconciliation order, in [0, 2**64)."""
    return int.from_bytes(hashlib.blake2b(encode_key(key), digest_size=8).digest(), "big")


def entry_hash(key: Key, dots: Iterable[Dot]) -> int:
    """Hash of one live entry; an empty entry hashes to 0 (it is absent)."""
    ordered = sorted(dots)
    if not ordered:
        return 0
    h = hashlib.blake2b(encode_key(key), digest_size=8)
    for replica, seq in ordered:
        h.update(replica.encode())
        h.update(b"\0")
        h.update(seq.to_bytes(8, "big"))
    return int.from_bytes(h.digest(), "big")


def split_range(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into ``parts`` contiguous, non-empty ranges (fewer if it is small)."""
    width = hi - lo
    parts = max(1, min(parts, width))
    bounds = [lo + (width * i) // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]


def fingerprint(entries: Iterable[tuple[Key, Iterable[Dot]]]) -> tuple[int, int]:
    """``(xor of entry hashes, number of live entries)`` of some entries."""
    fp = count = 0
    for key, dots in entries:
        h = entry_hash(key, dots)
        if h:
            fp ^= h
            count += 1
    return fp, count
