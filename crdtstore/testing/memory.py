"""An in-memory :class:`~crdtstore.sync.replica.Replica`, for the simulator and the tests.

It keeps what the LMDB replica keeps (per namespace: state, causal context, delta log)
with the same meaning, and is "durable" in the only sense the simulator needs: a node
that crashes loses its sync engine, never its ``MemoryReplica``.

Invariants (those of ``Replica``, plus):
- every operation either completes or raises before changing anything;
- ``_Namespace.entry_hashes`` holds ``entry_hash`` of exactly the live keys, so the
  fingerprint index built from it is the XOR of the live entries;
- a namespace's log holds encoded batches in append order; ``log_batches`` serves a
  seq interval only if the held batches cover it without a hole.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtstore.crdt import CRDT_TYPES, CausalContext, Dot, DotMap, Key, join_entry
from crdtstore.errors import InvalidValue, TypeMismatch
from crdtstore.sync.fingerprint import entry_hash, key_hash
from crdtstore.sync.messages import DeltaBatch, PackedRange, encode_message
from crdtstore.sync.shipped import ShippedEntries

Entries = dict[Key, Mapping[Dot, Any]]


@dataclass(slots=True)
class _LoggedBatch:
    origin: str
    first: int
    last: int
    encoded: bytes


@dataclass(slots=True)
class _Namespace:
    type_name: str
    cls: type[DotMap[Any]]
    entries: Entries = field(default_factory=dict)
    context: CausalContext = field(default_factory=CausalContext)
    entry_hashes: dict[Key, int] = field(default_factory=dict)
    key_hashes: dict[Key, int] = field(default_factory=dict)
    # Log: serial -> batch (append order is serial order), and per origin the serials
    # sorted by first seq, for covering a requested interval.
    log: dict[int, _LoggedBatch] = field(default_factory=dict)
    by_origin: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)
    # Fingerprint index: live keys sorted by key hash (kept incrementally), and the prefix
    # XOR of their entry hashes (rebuilt lazily; None when stale).
    hashes: list[int] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    prefix: list[int] | None = None

    def set_entry(self, key: Key, dots: Mapping[Dot, Any]) -> None:
        present = key in self.entry_hashes
        if dots:
            self.entries[key] = dots
            self.entry_hashes[key] = entry_hash(key, dots)
            if not present:
                i = bisect.bisect_left(self.hashes, self.hash_of(key))
                self.hashes.insert(i, self.hash_of(key))
                self.keys.insert(i, key)
        else:
            self.entries.pop(key, None)
            if present:
                del self.entry_hashes[key]
                i = bisect.bisect_left(self.hashes, self.hash_of(key))
                while self.keys[i] != key:  # equal hashes of distinct keys: look further
                    i += 1
                del self.hashes[i], self.keys[i]
        self.prefix = None

    def hash_of(self, key: Key) -> int:
        h = self.key_hashes.get(key)
        if h is None:
            h = self.key_hashes[key] = key_hash(key)
        return h

    def prefix_xor(self) -> list[int]:
        if self.prefix is None:
            prefix = [0]
            acc = 0
            for key in self.keys:
                acc ^= self.entry_hashes[key]
                prefix.append(acc)
            self.prefix = prefix
        return self.prefix

    def keys_in(self, lo: int, hi: int) -> list[Key]:
        return self.keys[bisect.bisect_left(self.hashes, lo) : bisect.bisect_left(self.hashes, hi)]


class MemoryReplica:
    """A replica of pure values in memory (implements ``crdtstore.sync.replica.Replica``)."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._ns: dict[str, _Namespace] = {}
        self._serial = 0

    # -- the Replica protocol --------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    def namespaces(self) -> Mapping[str, str]:
        return {name: ns.type_name for name, ns in self._ns.items()}

    def ensure_namespace(self, namespace: str, type_name: str) -> None:
        ns = self._ns.get(namespace)
        if ns is not None:
            if ns.type_name != type_name:
                raise TypeMismatch(f"namespace {namespace!r} holds {ns.type_name}, not {type_name}")
            return
        cls = CRDT_TYPES.get(type_name)
        if cls is None:
            raise InvalidValue(f"unknown crdt type {type_name!r}")
        self._ns[namespace] = _Namespace(type_name, cls)

    def context(self, namespace: str) -> CausalContext:
        ns = self._ns.get(namespace)
        return CausalContext() if ns is None else ns.context

    def apply_batch(self, batch: DeltaBatch, encoded: bytes) -> bool:
        ns = self._held(batch.namespace, batch.delta.type_name)
        ctx = ns.context
        if all(Dot(batch.origin, s) in ctx for s in range(batch.first, batch.last + 1)):
            return False
        delta = batch.delta
        for key, theirs in delta.entries.items():
            ns.set_entry(key, join_entry(ns.entries.get(key, {}), ctx, theirs, delta.context))
        ns.context = ctx.join(delta.context)
        self._log(ns, batch.origin, batch.first, batch.last, encoded)
        return True

    def apply_batches(self, batches: Sequence[tuple[DeltaBatch, bytes]]) -> list[bool]:
        # Nothing to commit in memory. apply_batch raises only on a namespace of another
        # type (TypeMismatch), so that is checked for all of them before any is applied.
        types: dict[str, str] = {}
        for batch, _ in batches:
            name, type_name = batch.namespace, batch.delta.type_name
            held = self._ns.get(name)
            want = types.setdefault(name, held.type_name if held else type_name)
            if want != type_name:
                raise TypeMismatch(f"namespace {name!r} holds {want}, not {type_name}")
        return [self.apply_batch(batch, encoded) for batch, encoded in batches]

    def log_batches(self, namespace: str, origin: str, first: int, last: int) -> list[bytes] | None:
        ns = self._ns.get(namespace)
        if ns is None:
            return None
        rows = ns.by_origin.get(origin, [])
        out: list[bytes] = []
        pos = first
        # Rows are sorted by first seq; start at the last row beginning at or below pos.
        i = max(0, bisect.bisect_right(rows, (pos, 1 << 63, 1 << 63)) - 1)
        for row_first, row_last, serial in rows[i:]:
            if pos > last:
                break
            if row_first > pos:
                return None  # a hole: the log no longer (or never) held these seqs
            if row_last >= pos:
                out.append(ns.log[serial].encoded)
                pos = row_last + 1
        return out if pos > last else None

    def trim_log(self, namespace: str, origin: str, upto: int) -> int:
        ns = self._ns.get(namespace)
        if ns is None:
            return 0
        rows = ns.by_origin.get(origin, [])
        kept = [r for r in rows if r[1] > upto]
        for _, _, serial in rows:
            if ns.log.get(serial) is not None and ns.log[serial].last <= upto:
                del ns.log[serial]
        ns.by_origin[origin] = kept
        return len(rows) - len(kept)

    def bound_log(self, namespace: str, max_batches: int) -> int:
        ns = self._ns.get(namespace)
        if ns is None:
            return 0
        dropped = 0
        while len(ns.log) > max_batches and ns.order:
            serial = ns.order.popleft()
            logged = ns.log.pop(serial, None)
            if logged is None:
                continue  # already trimmed
            rows = ns.by_origin[logged.origin]
            rows.remove((logged.first, logged.last, serial))
            dropped += 1
        if not ns.log:
            ns.order.clear()
        return dropped

    def fingerprints(
        self, namespace: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        ns = self._ns.get(namespace)
        if ns is None:
            return [(0, 0) for _ in ranges]
        hashes, prefix = ns.hashes, ns.prefix_xor()
        out = []
        for lo, hi in ranges:
            i, j = bisect.bisect_left(hashes, lo), bisect.bisect_left(hashes, hi)
            out.append((prefix[j] ^ prefix[i], j - i))
        return out

    def read_range(self, namespace: str, lo: int, hi: int) -> DotMap[Any]:
        ns = self._ns[namespace]
        entries = {k: dict(ns.entries[k]) for k in ns.keys_in(lo, hi)}
        return ns.cls(entries, ns.context, is_delta=True)

    def read_range_packed(
        self, namespace: str, lo: int, hi: int, max_bytes: int | None
    ) -> PackedRange | None:
        packed = PackedRange.of(self.read_range(namespace, lo, hi))
        if max_bytes is not None and len(packed.data) > max_bytes:
            return None
        return packed

    def apply_range(self, namespace: str, lo: int, hi: int, shipped: DotMap[Any]) -> None:
        ns = self._held(namespace, shipped.type_name)
        ctx, theirs_ctx = ns.context, shipped.context
        received: list[Dot] = []
        for key in shipped.entries:
            if not lo <= ns.hash_of(key) < hi:
                raise InvalidValue(f"shipped key {key!r} lies outside [{lo}, {hi})")
        for key in set(ns.keys_in(lo, hi)) | set(shipped.entries):
            theirs = shipped.entries.get(key, {})
            received.extend(theirs)
            ns.set_entry(key, join_entry(ns.entries.get(key, {}), ctx, theirs, theirs_ctx))
        # Only the dots received: the sender's context also covers keys outside the range.
        ns.context = ctx.join(CausalContext.from_dots(received))

    def apply_ranges(
        self,
        namespace: str,
        ranges: Iterable[tuple[int, int, DotMap[Any] | ShippedEntries]],
        context: CausalContext,
        size_hint: int = 0,
    ) -> None:
        # Every range is checked before any is applied: a bad one changes nothing.
        values = [
            (lo, hi, shipped.value(lo, hi) if isinstance(shipped, ShippedEntries) else shipped)
            for lo, hi, shipped in ranges
        ]
        for lo, hi, value in values:
            self.apply_range(namespace, lo, hi, value)
        self.merge_context(namespace, context)

    def merge_context(self, namespace: str, context: CausalContext) -> None:
        ns = self._ns[namespace]
        ns.context = ns.context.join(context)

    # -- local mutations and inspection (simulator, tests, benchmarks) --------------------

    def mutate(
        self, namespace: str, type_name: str, fn: Callable[[DotMap[Any]], DotMap[Any]]
    ) -> DeltaBatch:
        """Run one local mutation: ``fn(state)`` returns its delta (``state.add(...)``,
        ``put``, ``remove``, ``delete`` with this node's id); it is applied and logged as
        an own batch ``origin = node_id, first = last = its dot's seq``."""
        self.ensure_namespace(namespace, type_name)
        ns = self._ns[namespace]
        state = ns.cls(ns.entries, ns.context)
        delta = fn(state)
        dot = ns.context.next_dot(self._node_id)
        if type(delta) is not ns.cls or not delta.is_delta or dot not in delta.context:
            raise InvalidValue(f"mutation must return a {type_name} delta consuming {dot}")
        batch = DeltaBatch(namespace, self._node_id, dot.seq, dot.seq, delta)
        self.apply_batch(batch, encode_message(batch))
        return batch

    def value(self, namespace: str) -> DotMap[Any]:
        """A snapshot of the namespace's state (immutable; later changes do not show)."""
        ns = self._ns[namespace]
        return ns.cls(dict(ns.entries), ns.context)

    def load_state(self, namespace: str, value: DotMap[Any]) -> None:
        """Replace a namespace's state and context wholesale, with no log (bench seeding)."""
        self.ensure_namespace(namespace, value.type_name)
        ns = self._ns[namespace]
        ns.entries = {k: e for k, e in value.entries.items() if e}
        ns.entry_hashes = {k: entry_hash(k, e) for k, e in ns.entries.items()}
        rows = sorted((ns.hash_of(k), i) for i, k in enumerate(ns.entries))
        order = list(ns.entries)
        ns.hashes = [h for h, _ in rows]
        ns.keys = [order[i] for _, i in rows]
        ns.prefix = None
        ns.context = value.context

    def log_length(self, namespace: str) -> int:
        ns = self._ns.get(namespace)
        return 0 if ns is None else len(ns.log)

    # -- internals ---------------------------------------------------------------------------

    def _held(self, namespace: str, type_name: str) -> _Namespace:
        self.ensure_namespace(namespace, type_name)
        return self._ns[namespace]

    def _log(self, ns: _Namespace, origin: str, first: int, last: int, encoded: bytes) -> None:
        self._serial += 1
        ns.log[self._serial] = _LoggedBatch(origin, first, last, encoded)
        bisect.insort(ns.by_origin.setdefault(origin, []), (first, last, self._serial))
        ns.order.append(self._serial)
