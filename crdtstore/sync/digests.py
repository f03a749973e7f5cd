"""Hashed digests: a version vector stood for by a short hash and its total.

A full digest carries each namespace's whole version vector, so an idle cluster's digests
grow with the number of origins that ever wrote (the members' namespace has one per
member). A hashed digest carries per namespace the vector's hash (``VV_HASH_BYTES`` of
blake2b over its canonical encoding) and its total (the sum of its seqs: more than a
receiver's means the sender has seqs it lacks, and a positive one that it holds data), so
its size grows with namespaces only.

A receiver reads a hash as a vector it already knows: its own (the sender has exactly
what it has), or the sender's last full vector (the sender did not change since).
Otherwise it asks for the full vector (``VectorRequest``, answered by ``VectorReply``),
and meanwhile keeps what it last knew of the sender there: a vector only grows, so an
older one is a lower bound of what the sender holds, and every consumer of peers' vectors
(repair, trimming, catch-up checks, lag) errs on the safe side with a lower bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from crdtstore.codec import pack

VV_HASH_BYTES = 8
MAX_TOTAL = (1 << 64) - 1
"""A total is capped here (msgpack's largest unsigned integer)."""


def vv_hash(vv: Mapping[str, int]) -> bytes:
    """The hash of a version vector: equal vectors, equal hashes, whatever their order
    (origins at seq 0 are absent from a vector, and left out here)."""
    canonical = pack(sorted((origin, seq) for origin, seq in vv.items() if seq > 0))
    return hashlib.blake2b(canonical, digest_size=VV_HASH_BYTES).digest()


def vv_total(vv: Mapping[str, int]) -> int:
    return min(sum(vv.values()), MAX_TOTAL)
