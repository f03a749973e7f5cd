"""Causal delivery: batches reach the replica only once what they depend on has.

Invariant: a batch is applied only when it is *causally ready* against the context it
joins: every dot its context names, beyond its own seqs, is already there. Applying it
earlier would mark those dots seen, and then they would never be applied (nor repaired):
a dot seen and not live reads as "removed". While a namespace is under range
reconciliation nothing is applied there: the session's apply comes first.

Whatever waits is bounded, because what it waits for may never come: at most
``max_waiting_batches`` batches and ``max_waiting_bytes`` bytes are held, none longer
than ``max_wait_ms``. A batch over a bound is dropped and counted; repair fetches it
again, and the liveness check changes the path if that makes no progress either. A
dropped batch costs a refetch, never correctness: nothing but what is applied counts.

Group commit: between :meth:`CausalDelivery.open_group` and ``close_group`` the ready
batches are collected and applied in one replica commit, each checked against the
context the batches before it will leave (a receiver that fell behind catches up with
one fsync per group instead of one per batch). If the group's commit fails, each batch
is applied alone, so one bad batch keeps out only itself and what depends on it.

:class:`CausalBuffer` keeps the held batches and decides readiness; it applies nothing.
:class:`CausalDelivery` applies, holds and drains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterator

from crdtstore.crdt import CausalContext, Dot
from crdtstore.errors import Error, StorageError
from crdtstore.sync.messages import DeltaBatch
from crdtstore.sync.rejections import Rejections
from crdtstore.sync.replica import Replica
from crdtstore.sync.settings import SyncSettings

BatchId = tuple[str, int, int]  # origin, first seq, last seq


def applied(batch: DeltaBatch, ctx: CausalContext) -> bool:
    """Every seq of the batch is in ``ctx``: it would bring nothing new."""
    return all(Dot(batch.origin, s) in ctx for s in range(batch.first, batch.last + 1))


def causally_ready(batch: DeltaBatch, ctx: CausalContext) -> bool:
    """Every dot the batch's context names, beyond its own seqs, is in ``ctx``."""
    own, lo, hi = batch.origin, batch.first, batch.last
    theirs = batch.rest  # the batch's own run needs nothing here
    for replica, top in theirs.vv.items():
        have = ctx.vv.get(replica, 0)
        for seq in range(have + 1, top + 1):
            if not (replica == own and lo <= seq <= hi) and Dot(replica, seq) not in ctx:
                return False
    return all((d.replica == own and lo <= d.seq <= hi) or d in ctx for d in theirs.cloud)


class CausalBuffer:
    """The batches held back per namespace, with their bytes and arrival times."""

    def __init__(self, settings: SyncSettings, stats: Counter[str], reject: Rejections) -> None:
        self._settings = settings
        self._stats = stats
        self._reject = reject
        self._held: dict[str, dict[BatchId, tuple[DeltaBatch, bytes, int]]] = {}
        self._bytes = 0

    def held(self, namespace: str) -> int:
        """How many batches of ``namespace`` wait."""
        return len(self._held.get(namespace, {}))

    def holds_any(self) -> bool:
        """Whether any batch waits, in any namespace."""
        return any(self._held.values())

    def held_runs(self, namespace: str, origin: str) -> list[tuple[int, int]]:
        """The seq runs of ``origin`` held here, sorted: already received, so repair
        need not fetch them again while they wait."""
        return sorted((a, b) for (o, a, b) in self._held.get(namespace, {}) if o == origin)

    def hold(self, batch: DeltaBatch, data: bytes, now_ms: int) -> None:
        """Keep ``batch`` (``data``: its encoded form) until it is ready, within bounds."""
        waiting = self._held.setdefault(batch.namespace, {})
        key = (batch.origin, batch.first, batch.last)
        if key in waiting:
            return  # a duplicate keeps the first copy's arrival time
        if (
            len(waiting) >= self._settings.max_waiting_batches
            or self._bytes + len(data) > self._settings.max_waiting_bytes
        ):
            self._reject(
                "waiting_overflow", now_ms, f"{batch.namespace}: dropped, repair refetches"
            )
            return
        waiting[key] = (batch, data, now_ms)
        self._bytes += len(data)
        self._stats["batches_waiting"] += 1

    def ready(
        self, namespace: str, context: Callable[[str], CausalContext]
    ) -> Iterator[tuple[DeltaBatch, bytes]]:
        """Take out and yield each held batch of ``namespace`` that has become ready.

        ``context`` is read again before every check: the caller applies each batch
        yielded before asking for the next, and that may make others ready. Batches
        found already applied are dropped on the way."""
        waiting = self._held.get(namespace)
        progress = True
        while waiting and progress:
            progress = False
            for key, (batch, data, _) in list(waiting.items()):
                ctx = context(namespace)
                if applied(batch, ctx):
                    self._take(waiting, key)
                elif causally_ready(batch, ctx):
                    self._take(waiting, key)
                    progress = True
                    yield batch, data

    def expire(self, now_ms: int) -> None:
        """Drop batches held longer than ``max_wait_ms`` (see the setting)."""
        cutoff = now_ms - self._settings.max_wait_ms
        for ns, waiting in self._held.items():
            old = [key for key, (_, _, at) in waiting.items() if at <= cutoff]
            for key in old:
                self._take(waiting, key)
            if old:
                self._stats["waiting_expired"] += len(old)
                self._reject(
                    "waiting_expired_batches",
                    now_ms,
                    f"{ns}: {len(old)} held over {self._settings.max_wait_ms} ms, dropped",
                )

    def _take(self, waiting: dict[BatchId, tuple[DeltaBatch, bytes, int]], key: BatchId) -> None:
        _, data, _ = waiting.pop(key)
        self._bytes -= len(data)


class CausalDelivery:
    """Applies batches to the replica in causal order, holding the others meanwhile."""

    def __init__(
        self,
        replica: Replica,
        settings: SyncSettings,
        stats: Counter[str],
        reject: Rejections,
        reconciling: Container[str],
    ) -> None:
        self._replica = replica
        self._stats = stats
        self._reject = reject
        self._reconciling = reconciling
        self.buffer = CausalBuffer(settings, stats, reject)
        # While a group is open: ready batches not applied yet, and each namespace's
        # context as they will leave it (what the checks of the batches after them see).
        self._group: list[tuple[DeltaBatch, bytes]] | None = None
        self._group_ctx: dict[str, CausalContext] = {}

    def deliver(self, batch: DeltaBatch, data: bytes, now_ms: int) -> bool:
        """Apply ``batch`` (checked by the caller) or hold it; True if it was applied
        (or joined the open group), False if it was a duplicate or is held."""
        ns = batch.namespace
        ctx = self.context(ns)
        if applied(batch, ctx):
            self._stats["duplicates"] += 1
            return False
        deferred = ns in self._reconciling
        if deferred:
            self._stats["batches_deferred_session"] += 1
        if deferred or not causally_ready(batch, ctx):
            self.buffer.hold(batch, data, now_ms)
            return False
        self._apply_ready(batch, data)
        self.drain(ns)
        return True

    def drain(self, ns: str) -> None:
        """Apply the held batches of ``ns`` that have become ready (none while it is
        under reconciliation: a session's end drains it)."""
        if not self.buffer.held(ns) or ns in self._reconciling:
            return
        for batch, data in self.buffer.ready(ns, self.context):
            self._apply_ready(batch, data)

    def context(self, ns: str) -> CausalContext:
        """``ns``'s context, with the batches of the open group applied."""
        pending = self._group_ctx.get(ns)
        return pending if pending is not None else self._replica.context(ns)

    # -- group commit --------------------------------------------------------------------------

    def open_group(self) -> None:
        self._group = []

    def close_group(self, now_ms: int) -> None:
        self.flush_group(now_ms)
        self._group = None

    def has_group_batches(self) -> bool:
        return bool(self._group)

    def flush_group(self, now_ms: int) -> None:
        """Commit the batches collected so far; the group stays open."""
        group = self._group
        if not group:
            return
        self._group = None  # until collecting resumes below, batches are applied at once
        self._group_ctx.clear()
        try:
            results = self._replica.apply_batches(group)
        except StorageError as exc:
            # This node cannot store them (a full map or disk), not one bad batch: each
            # alone would fail the same way. Repair fetches them again.
            self._reject.local_failure(now_ms, f"a group of {len(group)} batches", exc)
        except Error:
            # One of them cannot be applied: each in its own commit, so the others are,
            # each checked against what is applied for real.
            for batch, data in group:
                self._apply_alone(batch, data, now_ms)
        else:
            self._stats["batch_group_commits"] += 1  # batches_applied / this: group size
            for changed in results:
                self._stats["batches_applied" if changed else "duplicates"] += 1
        for ns in sorted({batch.namespace for batch, _ in group}):
            self.drain(ns)
        self._group = []

    def _apply_ready(self, batch: DeltaBatch, data: bytes) -> None:
        if self._group is not None:
            self._group.append((batch, data))
            ns = batch.namespace
            joined = self.context(ns).join(batch.rest)
            self._group_ctx[ns] = joined.with_run(batch.origin, batch.first, batch.last)
            return
        if self._replica.apply_batch(batch, data):
            self._stats["batches_applied"] += 1
        else:
            self._stats["duplicates"] += 1

    def _apply_alone(self, batch: DeltaBatch, data: bytes, now_ms: int) -> None:
        ns = batch.namespace
        ctx = self._replica.context(ns)
        if applied(batch, ctx):
            self._stats["duplicates"] += 1
        elif not causally_ready(batch, ctx):  # what it follows was not applied
            self.buffer.hold(batch, data, now_ms)
        else:
            try:
                self._apply_ready(batch, data)
            except StorageError as exc:
                self._reject.local_failure(now_ms, f"batch {ns} {batch.origin}", exc)
            except Error as exc:
                self._reject("rejected_invalid", now_ms, f"batch {ns}: {exc}")
