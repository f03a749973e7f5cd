"""Key order and fingerprints for range reconciliation.

Ranges are ranges of a 64-bit hash of a key's encoding, so they split a keyspace
evenly whatever the keys look like (but for its first byte: see below). A range's
fingerprint is the XOR of the hashes of its entries; an entry's hash covers its key and
its live dots (a dot's payload never changes, so the dots stand for it). XOR makes a
fingerprint updatable in O(1) when one entry changes, and equal entries on two replicas
always give equal fingerprints.

Inside a range, keys come in *reconciliation order* (:func:`key_position`): the first
byte of the hash, then the encoded key itself. Full hash order would serve ranges just as
well, but a replica stores its rows in this order, and hash order scatters neighbouring
keys over the whole table: a commit of 1,000 keys then dirties (and fsyncs) about one page
per key.

The key hash's first byte, a key's *bucket*, is a hash of its encoding without the last
byte, or without the last two when both are ASCII digits (:func:`bucket_part`); the other
56 bits hash the whole encoding (:func:`key_hash`). Keys that differ only in their last
byte (the integers 256k..256k+255) or in their last two digits (``user:1200`` ..
``user:1299``) so share a bucket, where they are neighbours in key order, and a commit of
1,000 neighbouring keys dirties a few pages per bucket it touches rather than a page in
each of the 256 (storage format 5 hashed the whole key, and raw LMDB wrote batches of
such keys markedly slower: figures in the CHANGELOG). Decimal ids in strings change their
last two characters every 100 keys; without the digit rule such keys came ten to a
bucket's prefix, and gained much less. A range inside a bucket still splits its keys
evenly. A bucket holds whole prefixes, at most 356 keys each (256 by the last byte, 100 by
two digits), so the buckets are even once a namespace has more than a few hundred
prefixes.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable

# A key's canonical bytes (its msgpack encoding) are the codec's; re-exported here, where
# the order they define is used.
from crdtstore.codec import encode_key as encode_key
from crdtstore.crdt import Dot, Key

# The bucket rule is defined once, below the codec, which checks received keys with it.
from crdtstore.keyhash import bucket_part as bucket_part

HASH_SPACE = 1 << 64
ORDER_BITS = 8
"""How many leading bits of the key hash come before the key in reconciliation order."""


_MASK_56 = (1 << 56) - 1


def key_hash(key: Key) -> int:
    """Position of ``key`` in the reconciliation order, in [0, 2**64)."""
    return encoded_key_hash(encode_key(key))


def encoded_key_hash(ekey: bytes) -> int:
    """:func:`key_hash` of the key whose encoding is ``ekey``: its bucket (a hash of
    :func:`bucket_part`) in the first byte, a hash of all of ``ekey`` below."""
    bucket = hashlib.blake2b(bucket_part(ekey), digest_size=8).digest()[0]
    whole = int.from_bytes(hashlib.blake2b(ekey, digest_size=8).digest(), "big")
    return bucket << 56 | whole & _MASK_56


def encoded_position(ekey: bytes) -> bytes:
    """The place in reconciliation order of the key whose encoding is ``ekey``: compare
    positions as bytes. (A stored row's key after its namespace prefix.)"""
    return hashlib.blake2b(bucket_part(ekey), digest_size=8).digest()[: ORDER_BITS // 8] + ekey


def key_position(key: Key) -> bytes:
    """The place of ``key`` in reconciliation order (see the module docstring)."""
    return encoded_position(encode_key(key))


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
