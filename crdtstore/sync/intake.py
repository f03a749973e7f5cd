"""The checks every received batch passes before causal delivery, in one place.

Whether a batch came published, in a repair's reply, relayed along the overlay or fetched
by the relay, it is refused (and counted, never raised) if its origin is this node
(nobody else may speak for it), if its namespace is not held here, if it is an LWW
batch stamped more than ``max_clock_drift_ms`` ahead (deferred: repair fetches it again
once local time has caught up), or if its namespace's type conflicts with the one held.
What passes goes to :class:`~crdtstore.sync.delivery.CausalDelivery`.

Invariant: no batch reaches delivery without these checks, and a refusal changes nothing
but counters (and the liveness check's note of a refused drift).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from crdtstore.crdt import check_drift
from crdtstore.errors import ClockDriftError, DecodeError, Error, StorageError
from crdtstore.sync.delivery import CausalDelivery
from crdtstore.sync.liveness import LivenessCheck
from crdtstore.sync.messages import DeltaBatch, RepairReply, decode_message
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.replica import Replica


class BatchIntake:
    """Checks a received batch, then delivers it; creates namespaces peers name."""

    def __init__(
        self,
        node_id: str,
        replica: Replica,
        max_clock_drift_ms: int,
        holds: Callable[[str], bool],
        delivery: CausalDelivery,
        liveness: LivenessCheck,
        reject: Rejections,
    ) -> None:
        self.node_id = node_id
        self._replica = replica
        self._max_drift_ms = max_clock_drift_ms
        self._holds = holds
        self._delivery = delivery
        self._liveness = liveness
        self._reject = reject

    def batches_of(
        self, reply: RepairReply, peer: str, now_ms: int, kind: str
    ) -> Iterator[tuple[DeltaBatch, bytes]]:
        """The batches a repair's reply carries (``kind``: "repair" or "fetch", for the
        log), each with its bytes; one that does not decode, or is of another namespace
        than the reply's, is refused (counted) and skipped."""
        for data in reply.batches:
            try:
                batch = decode_message(data)
            except DecodeError as exc:
                self._reject("decode_errors", now_ms, f"batch in {kind} from {peer!r}: {exc}")
                continue
            if not isinstance(batch, DeltaBatch) or batch.namespace != reply.namespace:
                self._reject("rejected_invalid", now_ms, f"{kind} from {peer!r} holds a stranger")
                continue
            yield batch, data

    def apply(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """Check one batch, then deliver it (see crdtstore.sync.delivery); True if it was
        applied."""
        ns = batch.namespace
        if batch.origin == self.node_id:
            self._reject("rejected_own_origin", now_ms, f"{ns}: {batch.first}..{batch.last}")
            return False
        if not self._holds(ns):
            self._reject("rejected_topic", now_ms, f"batch for {ns}")
            return False
        if not self._timestamps_ok(batch, now_ms):
            return False
        if not self.ensure_namespace(ns, batch.type_name, now_ms):
            return False
        return self._delivery.deliver(batch, data, now_ms)

    def accept(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """``apply``, and whether the batch passed its checks: applied, held for what it
        depends on, or applied already (what a relay passes on)."""
        if batch.origin == self.node_id or not self._holds(batch.namespace):
            self.apply(batch, data, now_ms)  # refused there, and counted
            return False
        if not self._timestamps_ok(batch, now_ms):
            return False
        if not self.ensure_namespace(batch.namespace, batch.type_name, now_ms):
            return False
        self._delivery.deliver(batch, data, now_ms)
        return True

    def _timestamps_ok(self, batch: DeltaBatch, now_ms: int) -> bool:
        """False (counted) if an LWW batch carries a timestamp too far in the future."""
        if not batch.newest:
            return True
        try:
            check_drift(batch.newest, now_ms, self._max_drift_ms)
        except ClockDriftError as exc:
            self._liveness.drift_refused(batch.origin, now_ms)
            self._reject("rejected_clock_drift", now_ms, str(exc))
            return False
        return True

    def ensure_namespace(self, ns: str, type_name: str, now_ms: int) -> bool:
        """Create ``ns`` as ``type_name`` if new; False (counted) if that cannot be."""
        try:
            self._replica.ensure_namespace(ns, type_name)
        except StorageError as exc:
            self._reject.local_failure(now_ms, f"namespace {ns!r}", exc)
            return False
        except Error as exc:  # TypeMismatch, or a type this build does not know
            self._reject("rejected_type_mismatch", now_ms, f"{ns}: {exc}")
            return False
        return True
