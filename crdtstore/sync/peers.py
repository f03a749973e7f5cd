"""The replication group as one node knows it: its peers, and the last digest of each.

Invariants: this node is never its own peer; a digest is kept only while its sender is
a peer (a removed peer's digest no longer holds back trimming, nor makes it a candidate
for repair); a digest replaces the sender's previous one whole (a namespace it no longer
lists is forgotten), a vector sent alone (``VectorReply``) replaces that namespace's.
Digests are the only evidence used here of what a peer holds: what a peer *sends*
proves nothing about what it has applied. A vector kept here is never more than its peer
held when it said so (a hashed digest whose vector is not known yet keeps the previous
one, or an empty one: see :mod:`crdtstore.sync.digests`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from crdtstore.crdt import CausalContext
from crdtstore.sync.digests import vv_hash

VersionVector = dict[str, int]


class PeerDigests:
    """Peers of one node, each with the per-namespace version vectors it last reported."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._peers: set[str] = set()
        self._digests: dict[str, dict[str, VersionVector]] = {}  # peer -> ns -> vv
        self._hashes: dict[str, dict[str, bytes]] = {}  # peer -> ns -> vv_hash of that vv

    def add(self, peer: str) -> None:
        if peer != self.node_id:
            self._peers.add(peer)

    def remove(self, peer: str) -> None:
        self._peers.discard(peer)
        self._digests.pop(peer, None)
        self._hashes.pop(peer, None)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __iter__(self) -> Iterator[str]:
        """The peers in name order (every choice among them is deterministic)."""
        return iter(sorted(self._peers))

    def __len__(self) -> int:
        return len(self._peers)

    def record(
        self, peer: str, vvs: dict[str, VersionVector], hashes: dict[str, bytes] | None = None
    ) -> None:
        """``peer``'s digest, restricted to the namespaces this node holds (``hashes``:
        the ``vv_hash`` of those vectors already known)."""
        known = hashes or {}
        self._digests[peer] = vvs
        self._hashes[peer] = {ns: known.get(ns) or vv_hash(vv) for ns, vv in vvs.items()}

    def record_vector(self, peer: str, namespace: str, vv: VersionVector) -> bool:
        """``peer``'s full vector of ``namespace``, sent alone in answer to its digest;
        False (nothing kept) before a digest of it listed the namespace: a digest is what
        says which namespaces a peer holds, and trimming waits for the peers that do."""
        if namespace not in self._digests.get(peer, {}):
            return False
        self._digests[peer][namespace] = vv
        self._hashes[peer][namespace] = vv_hash(vv)
        return True

    def hash_of(self, peer: str, namespace: str) -> bytes | None:
        """The hash of ``peer``'s vector of ``namespace`` kept here (None if none is)."""
        return self._hashes.get(peer, {}).get(namespace)

    def reported(self, peer: str) -> dict[str, VersionVector]:
        """Namespace -> version vector of ``peer``'s last digest (empty before one)."""
        return self._digests.get(peer, {})

    def top(self, peer: str, namespace: str, origin: str) -> int:
        """The highest seq of ``origin`` in ``namespace`` that ``peer`` last reported."""
        return self._digests.get(peer, {}).get(namespace, {}).get(origin, 0)

    def holders(self, namespace: str, origin: str, seq: int) -> list[str]:
        """Peers whose last digest shows ``origin``'s ``seq`` in ``namespace``, by name."""
        return sorted(p for p in self._peers if self.top(p, namespace, origin) >= seq)

    def all_reports(self, namespace: str) -> list[VersionVector] | None:
        """Every peer's vector of ``namespace``; None until every peer has sent a digest
        (a peer not heard from yet may lack anything)."""
        if not all(p in self._digests for p in self._peers):
            return None
        return [self._digests[p][namespace] for p in self._peers if namespace in self._digests[p]]

    def lacking(
        self, context: Callable[[str], CausalContext], ignore: Collection[str] = ()
    ) -> dict[str, dict[str, int]]:
        """Namespace -> peer -> how many seqs its digest shows that ``context(ns)``
        lacks, for the peers ahead (origins in ``ignore``, and this node, not counted)."""
        ahead: dict[str, dict[str, int]] = {}
        for peer in self:
            for ns, vv in self.reported(peer).items():
                ctx = context(ns)
                lacking = sum(
                    b - a + 1
                    for origin, top in vv.items()
                    if origin != self.node_id and origin not in ignore
                    for a, b in missing_spans(ctx, origin, top)
                )
                if lacking:
                    ahead.setdefault(ns, {})[peer] = lacking
        return ahead


def missing_spans(ctx: CausalContext, origin: str, top: int) -> list[tuple[int, int]]:
    """The inclusive seq ranges of ``origin`` up to ``top`` missing from ``ctx``."""
    if top <= ctx.vv.get(origin, 0):
        return []
    return ctx.missing_from(CausalContext({origin: top})).get(origin, [])
