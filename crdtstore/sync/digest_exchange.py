"""Digests: what each node tells its peers it has applied, and what it learns from theirs.

Every ``digest_interval_ms`` the engine publishes, on :data:`DIGEST_TOPIC`, this node's
id and, per namespace it holds, a hash and total of its version vector
(:mod:`~crdtstore.sync.digests`): its size depends on namespaces only, never on origins
or state. A receiver that cannot tell the vector from the hash asks for it
(``VectorRequest``). While a peer that reads only full vectors (protocol version 1, see
``set_form``) is connected, the digest carries the vectors themselves. What a peer's
vector shows missing here is handed to repair; a namespace held nothing of, to range
reconciliation (bootstrap). Peers' vectors are kept in :mod:`~crdtstore.sync.peers`.

Invariants: a digest is read only from a peer of the replication group (a stranger's is
counted and ignored), and only for namespaces this node holds; what a peer's hash does
not settle keeps the last vector known of it (a lower bound) until the vector comes; a
vector is answered only to a peer, and taken only when asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from crdtstore.sync.delivery import CausalDelivery
from crdtstore.sync.digests import vv_hash, vv_total
from crdtstore.sync.intake import BatchIntake
from crdtstore.sync.messages import (
    Digest,
    DigestSummary,
    VectorReply,
    VectorRequest,
    encode_message,
)
from crdtstore.sync.outgoing import Outgoing, Send
from crdtstore.sync.peers import PeerDigests
from crdtstore.sync.received import Received
from crdtstore.sync.reconcile import RangeReconciler
from crdtstore.sync.repair import RepairScheduler
from crdtstore.sync.replica import Replica


class DigestExchange:
    """Builds this node's digests and reads its peers'; dispatched to by the engine."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        holds: Callable[[str], bool],
        peers: PeerDigests,
        intake: BatchIntake,
        repairs: RepairScheduler,
        ranges: RangeReconciler,
        delivery: CausalDelivery,
        stats: Counter[str],
    ) -> None:
        self.node_id = node_id
        self._replica = replica
        self._holds = holds
        self._peers = peers
        self._intake = intake
        self._repairs = repairs
        self._ranges = ranges
        self._delivery = delivery
        self._stats = stats
        self._full_readers: set[str] = set()

    # -- forms -------------------------------------------------------------------------

    def set_form(self, peer: str, *, hashed: bool) -> None:
        """Whether ``peer`` reads hashed digests (see ``SyncEngine.set_digest_form``)."""
        if hashed:
            self._full_readers.discard(peer)
        else:
            self._full_readers.add(peer)

    def forget_form(self, peer: str) -> None:
        self._full_readers.discard(peer)

    # -- ours --------------------------------------------------------------------------

    def digest(self) -> Digest:
        items = tuple(
            (ns, type_name, dict(self._replica.context(ns).vv))
            for ns, type_name in sorted(self._replica.namespaces().items())
            if self._holds(ns)
        )
        return Digest(self.node_id, items)

    def _summary(self) -> DigestSummary:
        items = []
        for ns, type_name in sorted(self._replica.namespaces().items()):
            if self._holds(ns):
                vv = self._replica.context(ns).vv
                items.append((ns, type_name, vv_total(vv), vv_hash(vv)))
        return DigestSummary(self.node_id, tuple(items))

    def published(self) -> bytes:
        """The digest to publish now, in the form every connected peer reads."""
        # With no peer yet, whoever subscribed is not known to read hashes (a node of
        # v0.1.0 that joined through us subscribes before its hello reaches us).
        if self._full_readers or not self._peers:
            return encode_message(self.digest())
        self._stats["digests_sent_hashed"] += 1
        return encode_message(self._summary())

    # -- theirs ------------------------------------------------------------------------

    def _from_peer(self, sender: str) -> bool:
        """Whether a digest of ``sender`` is to be read (counted if so)."""
        if sender == self.node_id:
            return False
        if sender not in self._peers:
            self._stats["digests_from_unknown"] += 1
            return False
        self._stats["digests_received"] += 1
        return True

    def _schedule(self, now_ms: int) -> list[Outgoing]:
        held = self._delivery.buffer.held_runs
        return self._repairs.schedule(now_ms, self._peers, self._ranges, held)

    def on_digest(self, msg: Digest, frame: Received) -> list[Outgoing]:
        now_ms = frame.now_ms
        if not self._from_peer(msg.sender):
            return []
        out: list[Outgoing] = []
        vvs: dict[str, dict[str, int]] = {}
        for ns, type_name, vv in msg.namespaces:
            if not self._holds(ns) or not self._intake.ensure_namespace(ns, type_name, now_ms):
                continue
            vvs[ns] = vv
            out.extend(self._observe_vector(msg.sender, ns, vv, vv_total(vv), now_ms))
        self._peers.record(msg.sender, vvs)
        out.extend(self._schedule(now_ms))
        return out

    def on_summary(self, msg: DigestSummary, frame: Received) -> list[Outgoing]:
        now_ms, sender = frame.now_ms, msg.sender
        if not self._from_peer(sender):
            return []
        out: list[Outgoing] = []
        previous = self._peers.reported(sender)
        vvs: dict[str, dict[str, int]] = {}
        hashes: dict[str, bytes] = {}
        for ns, type_name, total, digest in msg.namespaces:
            if not self._holds(ns) or not self._intake.ensure_namespace(ns, type_name, now_ms):
                continue
            mine = self._replica.context(ns).vv
            if digest == vv_hash(mine):
                vvs[ns], hashes[ns] = dict(mine), digest  # it holds what we hold
            elif digest == self._peers.hash_of(sender, ns):
                vvs[ns], hashes[ns] = previous[ns], digest  # unchanged since we last knew
            else:
                # What we last knew of it stands, a lower bound, until its vector comes.
                vvs[ns] = previous.get(ns, {})
                out.append(Send(sender, encode_message(VectorRequest(ns))))
                self._stats["vectors_requested"] += 1
                out.extend(self._observe_vector(sender, ns, {}, total, now_ms))
                continue
            out.extend(self._observe_vector(sender, ns, vvs[ns], total, now_ms))
        self._peers.record(sender, vvs, hashes)
        out.extend(self._schedule(now_ms))
        return out

    def on_vector_request(self, msg: VectorRequest, frame: Received) -> list[Outgoing]:
        if frame.peer not in self._peers:
            self._stats["vector_requests_from_unknown"] += 1
            return []
        type_name = self._replica.namespaces().get(msg.namespace)
        if type_name is None:
            return []  # its digest will no longer list it either
        vv = dict(self._replica.context(msg.namespace).vv)
        self._stats["vectors_sent"] += 1
        return [Send(frame.peer, encode_message(VectorReply(msg.namespace, type_name, vv)))]

    def on_vector_reply(self, msg: VectorReply, frame: Received) -> list[Outgoing]:
        peer, ns, now_ms = frame.peer, msg.namespace, frame.now_ms
        if peer not in self._peers or ns not in self._peers.reported(peer):
            self._stats["vectors_unasked"] += 1
            return []
        if not self._intake.ensure_namespace(ns, msg.type_name, now_ms):
            return []
        self._peers.record_vector(peer, ns, msg.vv)
        self._stats["vectors_received"] += 1
        out = self._observe_vector(peer, ns, msg.vv, vv_total(msg.vv), now_ms)
        out.extend(self._schedule(now_ms))
        return out

    def _observe_vector(
        self, sender: str, ns: str, vv: dict[str, int], total: int, now_ms: int
    ) -> list[Outgoing]:
        """What ``sender``'s vector of ``ns`` (total ``total``) shows: gaps to repair, or a
        namespace to bootstrap."""
        for origin, top in vv.items():
            if origin != self.node_id:
                self._repairs.observe(ns, origin, top, now_ms)
        if not self._replica.context(ns) and total > 0 and self._ranges.may_start(ns, now_ms):
            # Bootstrap: we hold nothing here; reconciling ranges costs O(state),
            # replaying the log would cost O(history).
            return self._ranges.start(sender, ns, now_ms)
        return []
