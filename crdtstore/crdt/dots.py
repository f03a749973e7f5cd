"""Dots and causal contexts.

A *dot* ``(replica, seq)`` names one mutation: the ``seq``-th mutation that ``replica``
made in one namespace. A *causal context* is the set of dots a replica has seen, kept
compact as a version vector (every seq up to ``vv[r]`` seen) plus a *dot cloud* of the
non-contiguous dots seen beyond it.

Invariant: a ``CausalContext`` is always compact, i.e. no dot of the cloud is
``(r, vv.get(r, 0) + 1)`` or below ``vv[r]``; every constructor and operation restores it.
Because each mutation consumes exactly one dot, "dot d is in my context" is the same fact
as "the delta with id d has been applied here"; the sync engine's digests and gap
detection are this structure, not a parallel one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from itertools import repeat
from typing import NamedTuple


class Dot(NamedTuple):
    """One mutation: the ``seq``-th (from 1) made by ``replica``."""

    replica: str
    seq: int


new_dot: Callable[[tuple[str, int]], Dot] = partial(tuple.__new__, Dot)
"""``Dot`` of a ``(replica, seq)`` tuple, built in C without ``Dot.__new__``'s Python
frame, for the runs of thousands that batches bring."""


class CausalContext:
    """An immutable, compact set of dots (version vector plus dot cloud)."""

    __slots__ = ("_cloud", "_hash", "_vv")

    def __init__(self, vv: Mapping[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        vector = {r: s for r, s in (vv or {}).items() if s > 0}
        self._vv, self._cloud = _compact(vector, set(cloud))
        self._hash: int | None = None

    @classmethod
    def _of(cls, vv: dict[str, int], cloud: frozenset[Dot]) -> CausalContext:
        """A context of parts already compact (the caller's proof), taken as they are."""
        ctx = cls.__new__(cls)
        ctx._vv, ctx._cloud, ctx._hash = vv, cloud, None
        return ctx

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        return cls(None, dots)

    @property
    def vv(self) -> Mapping[str, int]:
        """The contiguous part: replica -> highest seq with every seq below it seen."""
        return self._vv

    @property
    def cloud(self) -> frozenset[Dot]:
        """Dots seen beyond the contiguous part (a gap lies below each of them)."""
        return self._cloud

    def __contains__(self, dot: object) -> bool:
        if not isinstance(dot, tuple) or len(dot) != 2:
            return False
        replica, seq = dot
        return seq <= self._vv.get(replica, 0) or dot in self._cloud

    def __iter__(self) -> Iterator[Dot]:
        for replica, top in self._vv.items():
            for seq in range(1, top + 1):
                yield Dot(replica, seq)
        yield from self._cloud

    def __len__(self) -> int:
        return sum(self._vv.values()) + len(self._cloud)

    def __bool__(self) -> bool:
        return bool(self._vv) or bool(self._cloud)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._vv == other._vv and self._cloud == other._cloud

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((frozenset(self._vv.items()), self._cloud))
        return self._hash

    def __le__(self, other: CausalContext) -> bool:
        """Every dot of ``self`` is in ``other``."""
        for replica, top in self._vv.items():
            if other._vv.get(replica, 0) < top:
                # Slow path: the other side may hold the missing seqs in its cloud.
                start = other._vv.get(replica, 0) + 1
                if any(Dot(replica, s) not in other._cloud for s in range(start, top + 1)):
                    return False
        return all(d in other for d in self._cloud)

    def __repr__(self) -> str:
        cloud = sorted(self._cloud)
        return f"CausalContext(vv={dict(sorted(self._vv.items()))!r}, cloud={cloud!r})"

    def max_seq(self, replica: str) -> int:
        """Highest seq of ``replica`` seen, contiguous or not (0 if none)."""
        top = self._vv.get(replica, 0)
        for dot in self._cloud:
            if dot.replica == replica and dot.seq > top:
                top = dot.seq
        return top

    def next_dot(self, replica: str) -> Dot:
        """The dot ``replica``'s next mutation consumes."""
        return Dot(replica, self.max_seq(replica) + 1)

    def add(self, dot: Dot) -> CausalContext:
        if dot in self:
            return self
        return CausalContext(self._vv, self._cloud | {dot})

    def join(self, other: CausalContext) -> CausalContext:
        """Least upper bound: the union of both dot sets, compacted."""
        if other is self or not other:
            return self
        if not self:
            return other
        vv = dict(self._vv)
        for replica, top in other._vv.items():
            if top > vv.get(replica, 0):
                vv[replica] = top
        return CausalContext(vv, self._cloud | other._cloud)

    def with_run(self, replica: str, first: int, last: int) -> CausalContext:
        """This context plus the dots ``(replica, first..last)``.

        A delta batch's own dots are such a run, thousands long; when it extends the
        replica's contiguous part (the usual case: batches arrive in order) this costs
        O(cloud), not O(run), and builds no Dot for it."""
        if last < first:
            return self
        top = self._vv.get(replica, 0)
        if top >= first - 1:
            if last <= top:
                return self
            vv = dict(self._vv)
            vv[replica] = last
            return CausalContext(vv, self._cloud)  # folds the cloud dots the run reaches
        # Above a gap at top + 1, which stays: the union is compact as it is.
        run = map(new_dot, zip(repeat(replica), range(first, last + 1)))
        return CausalContext._of(self._vv, self._cloud.union(run))

    def without_run(self, replica: str, first: int, last: int) -> CausalContext:
        """This context minus the dots ``(replica, first..last)``."""
        top = self._vv.get(replica, 0)
        vv = dict(self._vv)
        cloud = {d for d in self._cloud if not (d.replica == replica and first <= d.seq <= last)}
        if top >= first:
            vv[replica] = first - 1
            cloud.update(Dot(replica, s) for s in range(last + 1, top + 1))
        return CausalContext(vv, cloud)

    def missing_from(self, other: CausalContext) -> dict[str, list[tuple[int, int]]]:
        """Per replica, the inclusive seq ranges ``other`` has seen and ``self`` has not.

        Only the contiguous part of ``other`` is consulted: it is what a peer's digest
        carries, and its cloud would only name gaps the peer is itself repairing.
        """
        ranges: dict[str, list[tuple[int, int]]] = {}
        for replica, top in other._vv.items():
            mine = self._vv.get(replica, 0)
            if top <= mine:
                continue
            # The gaps between the seqs our cloud holds in (mine, top]: O(cloud), not
            # O(top - mine), which is a million for a node bootstrapping a large namespace.
            held = sorted(
                d.seq for d in self._cloud if d.replica == replica and mine < d.seq <= top
            )
            spans: list[tuple[int, int]] = []
            start = mine + 1
            for seq in held:
                if seq > start:
                    spans.append((start, seq - 1))
                start = seq + 1
            if start <= top:
                spans.append((start, top))
            if spans:
                ranges[replica] = spans
        return ranges


def _compact(vv: dict[str, int], cloud: set[Dot]) -> tuple[dict[str, int], frozenset[Dot]]:
    """Fold every cloud dot that extends its replica's contiguous prefix into ``vv``.

    A thousand cloud dots are the usual case, not the exception: a batch that rewrites the
    keys of an earlier one observed that batch's run, and a receiver joins it. So the
    common outcomes, every dot kept or every dot folded, take no pass of Python over the
    dots that stay, and a replica whose lowest seq does not reach its prefix is not
    sorted."""
    if not cloud:
        return vv, frozenset()
    by_replica: dict[str, list[int]] = {}
    for replica, seq in cloud:
        if seq > vv.get(replica, 0):
            seqs = by_replica.get(replica)
            if seqs is None:
                by_replica[replica] = [seq]
            else:
                seqs.append(seq)
    moved = folded = 0  # replicas whose prefix grew; of them, those that took all their dots
    for replica, seqs in by_replica.items():
        top = vv.get(replica, 0)
        if min(seqs) != top + 1:
            continue
        seqs.sort()
        for seq in seqs:  # distinct, ascending
            if seq != top + 1:
                break
            top = seq
        else:
            folded += 1
        vv[replica] = top
        moved += 1
    if folded == len(by_replica):
        return vv, frozenset()
    kept_all = not moved and sum(map(len, by_replica.values())) == len(cloud)
    if kept_all and all(type(d) is Dot for d in cloud):
        return vv, frozenset(cloud)  # every dot stays, as it is
    return vv, frozenset(
        d if type(d) is Dot else Dot(d[0], d[1]) for d in cloud if d[1] > vv.get(d[0], 0)
    )
