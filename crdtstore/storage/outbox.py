"""What one local transaction did to one namespace, and the one delta batch it logs.

Invariant: a transaction's mutations of a namespace consume the seqs ``first..last`` of
this node there, and commit ONE delta batch ``first..last``: each touched key's final dots
(as its row holds them, which is their wire form), with the dots the mutations replaced as
its context (the run ``first..last`` is implied on the wire). It equals the join of the
mutations' deltas (tests/storage: the logged batch turns the state before into the state
after).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crdtstore.codec import encode_cloud
from crdtstore.crdt import CausalContext
from crdtstore.sync.messages import encode_delta_batch


@dataclass(slots=True)
class NamespaceWrite:
    """What one transaction did to one namespace so far."""

    ns_id: int
    name: str
    type_name: str
    ctx: CausalContext
    first: int
    next_seq: int
    prefix: bytes
    """The namespace's row-key prefix (``layout.ns_prefix``)."""
    bucket_base: int
    """``layout.bucket_base(ns_id)``: with a key's bucket, the code of its bucket row."""
    delta: dict[bytes, bytes]
    """Encoded key -> the encoded entry ``[key, final dots]``: the batch's entries as the
    wire carries them (a row's dots are their wire form too)."""
    observed: dict[str, list[int]]
    """Replica -> seqs of the dots the transaction's mutations replaced (see observe)."""
    events: list[Any]
    """The namespace's change events, ``key, old, new, kind`` each, flat: its journal group.
    (A commit's events are journaled by namespace: the changes of one key keep their
    order, and no other writer's come between.)"""

    def encode_batch(self, me: str) -> bytes:
        """The encoded delta batch of the mutations so far (at least one)."""
        first, last = self.first, self.next_seq - 1
        rest = encode_dots(me, first, last, self.observed)
        entries = list(self.delta.values())
        return encode_delta_batch(self.name, me, first, last, self.type_name, rest, entries)


def observe(observed: dict[str, list[int]], dots: Iterable[list[Any]]) -> None:
    """Add the dots of a row (``[replica, seq, ...]`` each) to ``observed``."""
    for d in dots:
        seqs = observed.get(d[0])
        if seqs is None:
            observed[d[0]] = [d[1]]
        else:
            seqs.append(d[1])


def encode_dots(me: str, first: int, last: int, observed: dict[str, list[int]]) -> list[Any]:
    """``encode_context`` of the dots ``observed`` (replica -> seqs, repeats allowed),
    less the own run ``(me, first..last)``, without building Dots: the context of a
    commit's delta batch as the wire carries it (``DeltaBatch.rest``; the run is implied
    by first..last)."""
    vv: dict[str, int] = {}
    cloud: list[list[Any]] = []
    for replica in sorted(observed):
        seqs = sorted(set(observed[replica]))  # ints: C's work, even for 1,000 of them
        if replica == me:
            del seqs[bisect_left(seqs, first) : bisect_right(seqs, last)]
        top = 0
        for seq in seqs:
            if seq != top + 1:
                break
            top = seq
        if top:
            vv[replica] = top
        encode_cloud(replica, seqs[top:], cloud)  # seqs[:top] are 1..top
    return [vv, cloud]
