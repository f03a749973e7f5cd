"""Joining what peers send into the state: delta batches, and the ranges of a reconciliation.

Invariants (those of :class:`crdtstore.sync.replica.Replica`, here on LMDB):

- A group of batches, or a reconciliation's ranges and context, is applied in ONE write
  transaction: rows, bucket rows, contexts, the delta log and the journal change together
  or not at all. An error anywhere (a corrupt row, a bad shipped entry, a clock too far
  ahead) aborts the whole transaction.
- Each key's received dots are joined into its row by the kernel
  (:func:`~crdtstore.storage.kernel.join_dots`, ``join_entry``); keys with no row here
  take the dots this replica's context has not seen (:func:`insert_rows`). Ranges are
  disjoint and each is judged against the context from before the session; only the dots
  received join it, and the sender's context once every range is in.
- A change event is journaled exactly when what a reader sees changes: an LWW key's
  winning dot, an element's presence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from crdtstore.codec import LWW_MAP, Row
from crdtstore.crdt import CausalContext, Dot, DotMap, check_drift
from crdtstore.errors import ClockDriftError, InvalidValue
from crdtstore.settings import NodeSettings
from crdtstore.storage import layout
from crdtstore.storage.deltalog import DeltaLog
from crdtstore.storage.environment import Environment
from crdtstore.storage.journal import ADD, DELETE, EVENT_WIDTH, PUT, REMOVE, Journal
from crdtstore.storage.kernel import Dots, join_dots, pack_row, tally, unseen_dots, winning_dot
from crdtstore.storage.namespaces import Namespaces
from crdtstore.storage.ranges import Ranges
from crdtstore.storage.rows import RowWriter
from crdtstore.sync.messages import DeltaBatch
from crdtstore.sync.shipped import ShippedEntries

EVENTS_PER_JOURNAL_ROW = 16_384
"""A commit's change events go in rows of at most this many (all rows of one commit
become visible together)."""

Received = tuple[Any, bytes, bytes, Dots, bytes | None]
"""A :data:`crdtstore.codec.Row`, or one whose entry hash is still to be computed (None):
``(key, encoded key, position, dots in a row's form, entry hash)``, the dots a key
received, to join into its row here. ``position`` is the row key after its namespace."""

_NO_GROUP = object()  # an origin no event has (None is one: a repair that revealed a removal)


@dataclass
class _NsApplied:
    """One namespace's part of ``apply_batches``: its context as the batches join it."""

    ns_id: int
    type_name: str
    ctx: CausalContext
    changed: bool = False
    data: bytes = b""


class Receiver:
    """Applies batches and ranges to one environment, through its parts."""

    def __init__(
        self,
        env: Environment,
        namespaces: Namespaces,
        log: DeltaLog,
        ranges: Ranges,
        journal: Journal,
        now_ms: Callable[[], int],
    ) -> None:
        self._env = env
        self._ns = namespaces
        self._log = log
        self._ranges = ranges
        self._journal = journal
        self._now_ms = now_ms
        self._settings: NodeSettings = env.settings
        self._stats: Counter[str] = env.stats

    def check_newest(self, timestamp: int) -> None:
        """ClockDriftError (counted) if ``timestamp`` is too far ahead of local time."""
        try:
            check_drift(timestamp, self._now_ms(), self._settings.max_clock_drift_ms)
        except ClockDriftError:
            self._stats["rejected_clock_drift"] += 1
            raise

    def apply_batches(self, batches: Sequence[tuple[DeltaBatch, bytes]]) -> list[bool]:
        """``apply_batch`` of each, in order, in ONE transaction. Raises, changing
        nothing, where one batch alone would raise."""
        for batch, _ in batches:
            if batch.newest:
                self.check_newest(batch.newest)
        ns, log = self._ns, self._log

        def apply(txn: lmdb.Transaction) -> tuple[list[bool], dict[str, _NsApplied]]:
            writer = RowWriter(txn, self._env.dbs["buckets"])
            done: dict[str, _NsApplied] = {}
            changed = []
            for batch, encoded in batches:
                name = batch.namespace
                ns_id, tname, _ = ns.ensure(txn, name, batch.type_name)
                held = done.get(name)
                if held is None:
                    held = done[name] = _NsApplied(ns_id, tname, ns.load_context(txn, ns_id))
                ctx, origin = held.ctx, batch.origin
                if holds_run(ctx, origin, batch.first, batch.last):
                    changed.append(False)  # this batch's deltas were applied
                    continue
                stamped, their_ctx = tname == LWW_MAP, batch.rest
                run = (origin, batch.first, batch.last)
                prefix = layout.ns_prefix(ns_id)
                fresh: list[Received] = []
                for row in batch.rows:  # checked when the batch was decoded
                    if not join_key(
                        writer, ns_id, prefix, name, stamped, ctx, row, their_ctx, run, origin
                    ):
                        fresh.append(row)
                insert_rows(writer, ns_id, name, stamped, fresh, ctx, origin)
                held.ctx = ctx.join(their_ctx).with_run(*run)
                held.changed = True
                log.put(txn, ns_id, origin, batch.first, batch.last, encoded)
                changed.append(True)
            for held in done.values():
                if held.changed:
                    held.data = ns.store_context(txn, held.ns_id, held.ctx)
            writer.finish(self._journal)
            return changed, done

        changed, done = self._env.write(apply)
        for name, held in done.items():
            ns.remember(name, held.ns_id, held.type_name)
            if held.changed:
                ns.remember_context(held.ns_id, held.data, held.ctx)
        self._stats["batches_applied"] += sum(changed)
        return changed

    def apply_ranges(
        self,
        namespace: str,
        ranges: Iterable[tuple[int, int, DotMap[Any] | ShippedEntries]],
        context: CausalContext | None,
    ) -> None:
        """Join each disjoint range, then ``context`` (None: none), in ONE transaction."""
        ns = self._ns

        def apply(txn: lmdb.Transaction) -> tuple[int, str, CausalContext, bytes]:
            found = ns.lookup(txn, namespace)
            ctx = CausalContext() if found is None else ns.load_context(txn, found[0])
            writer = RowWriter(txn, self._env.dbs["buckets"])
            received: list[Dot] = []
            # Ranges are disjoint, so each is judged against our context from before the
            # session; only the dots received join it (the sender's context also covers
            # keys outside the ranges), and ``context`` joins once all of them are in.
            for lo, hi, shipped in ranges:
                if found is None:  # a namespace learned from its first range
                    found = ns.ensure(txn, namespace, shipped.type_name)[:2]
                ns_id, tname = found
                if shipped.type_name != tname:
                    raise InvalidValue(
                        f"namespace {namespace!r} is a {tname}, the range holds {shipped.type_name}"
                    )
                stamped = tname == LWW_MAP
                if isinstance(shipped, ShippedEntries) and self._ranges.is_empty(
                    txn, ns_id, lo, hi
                ):
                    # A bootstrap's: every entry is checked in the loop that writes it.
                    entries: Iterable[Row] = shipped.checked(lo, hi)
                    if context is None or context.join(shipped.base) != context:
                        # Some dots may be ones ``context`` will not bring: collect them.
                        # (A session's context is its base, which holds every dot taken.)
                        entries = list(entries)
                        got = [Dot(d[0], d[1]) for it in entries for d in it[3]]
                        received.extend(got if context is None else _not_in(got, context))
                    insert_rows(writer, ns_id, namespace, stamped, entries, ctx, None)
                else:
                    if isinstance(shipped, ShippedEntries):
                        value = shipped.value(lo, hi)
                    else:
                        value = shipped
                        self._check_drift(value)  # raising here aborts the whole transaction
                    got = self._join_range(
                        txn, writer, ns_id, namespace, stamped, ctx, lo, hi, value
                    )
                    received.extend(got if context is None else _not_in(got, context))
                held = sum(len(g[2]) for g in writer.groups)
                if held >= EVENT_WIDTH * EVENTS_PER_JOURNAL_ROW:
                    # A bootstrap changes every key: journal its events as it goes rather
                    # than hold them (and the keys and values they name) to the end.
                    self._journal.record(txn, writer.groups)
                    writer.groups.clear()
            if found is None:
                raise InvalidValue(f"namespace {namespace!r} does not exist here")
            ns_id, tname = found
            new_ctx = ctx.join(CausalContext.from_dots(received)) if received else ctx
            if context is not None:
                new_ctx = new_ctx.join(context)
            data = ns.store_context(txn, ns_id, new_ctx)
            writer.finish(self._journal)
            return ns_id, tname, new_ctx, data

        ns_id, tname, new_ctx, data = self._env.write(apply)
        ns.remember(namespace, ns_id, tname)
        ns.remember_context(ns_id, data, new_ctx)

    def _check_drift(self, value: DotMap[Any]) -> None:
        if value.type_name != LWW_MAP:
            return
        # The newest timestamp is the one that can be too far ahead.
        self.check_newest(
            max((ts for e in value.entries.values() for ts, _ in e.values()), default=0)
        )

    def _join_range(
        self,
        txn: lmdb.Transaction,
        writer: RowWriter,
        ns_id: int,
        namespace: str,
        stamped: bool,
        ctx: CausalContext,
        lo: int,
        hi: int,
        shipped: DotMap[Any],
    ) -> list[Dot]:
        """Join a shipped range (a value) into ``[lo, hi)``: each key held here on either
        side is joined, the others inserted; the dots received."""
        theirs: dict[bytes, Received] = {}
        received: list[Dot] = []
        for key, entry in shipped.entries.items():
            ekey, khash = self._shipped_key(key, lo, hi)
            theirs[ekey] = (
                key,
                ekey,
                bytes((khash >> layout.BUCKET_SHIFT,)) + ekey,
                _stored(entry, stamped),
                None,
            )
            received.extend(entry)
        mine = [
            (layout.unpack_stored(ekey), bytes(ekey), bytes(rkey[4:]))
            for rkey, ekey in (
                (rkey, layout.row_ekey(rkey)) for rkey, _ in self._ranges.scan(txn, ns_id, lo, hi)
            )
        ]
        their_ctx, prefix = shipped.context, layout.ns_prefix(ns_id)
        for key, ekey, position in mine:  # each has a row: join_key joins it
            row = theirs.pop(ekey, None) or (key, ekey, position, [], None)
            join_key(writer, ns_id, prefix, namespace, stamped, ctx, row, their_ctx, None, None)
        # Keys we hold no row for (all of them, in a bootstrap).
        insert_rows(writer, ns_id, namespace, stamped, theirs.values(), ctx, None)
        return received

    def _shipped_key(self, key: Any, lo: int, hi: int) -> tuple[bytes, int]:
        """A shipped key's encoding and hash; InvalidValue if it is not in its range."""
        ekey = layout.pack_key(key)
        khash = layout.hash_encoded_key(ekey)
        if not lo <= khash < hi:
            self._stats["range_key_outside"] += 1
            raise InvalidValue(f"shipped key {key!r} lies outside [{lo}, {hi})")
        return ekey, khash


def join_key(
    writer: RowWriter,
    ns_id: int,
    prefix: bytes,
    namespace: str,
    stamped: bool,
    my_ctx: CausalContext,
    theirs: Received,
    their_ctx: CausalContext,
    run: tuple[str, int, int] | None,
    origin: str | None,
) -> bool:
    """Join one key's received dots into its row here (:func:`kernel.join_dots`); False,
    doing nothing, when the key has no row here: callers collect those for
    :func:`insert_rows`, one loop for all. Their context is ``their_ctx`` plus ``run``
    (a batch's own dots, ``(origin, first, last)``); ``prefix`` is ``ns_id``'s."""
    key, ekey, position, their_dots, edig = theirs
    rkey = prefix + position
    old = writer.get(rkey)
    if old is None:
        return False
    dots = layout.checked_dots(layout.row_dots(old), stamped)  # a corrupt row: DecodeError
    row = join_dots(dots, my_ctx, their_dots, their_ctx, run)
    if row is None:
        return True
    if not row:
        new = None
    elif row is their_dots and edig is not None:
        new = edig + layout.pack(row)  # theirs as received: its hash came with it
    else:
        new = pack_row(ekey, row)
    writer.put_row(layout.bucket_base(ns_id) | position[0], rkey, old, new)
    if stamped:
        # (One dot is the usual row, and its own winner: no call for it.)
        was = dots[0] if len(dots) == 1 else winning_dot(dots)
        now = None if not row else row[0] if len(row) == 1 else winning_dot(row)
        if now is None or (now[0], now[1]) != (was[0], was[1]):
            if origin is None and now is not None:
                origin = now[0]
            if now is None:
                writer.event(namespace, key, was[3], None, origin, DELETE)
            else:
                writer.event(namespace, key, was[3], now[3], origin, PUT)
    elif not row:  # an OR-Set row changes what a reader sees only when it goes
        writer.event(namespace, key, True, False, origin, REMOVE)
    return True


def insert_rows(
    writer: RowWriter,
    ns_id: int,
    namespace: str,
    stamped: bool,
    items: Iterable[Received],
    my_ctx: CausalContext,
    origin: str | None,
) -> None:
    """:func:`join_key` of keys that have no row here: the dots ``my_ctx`` has not seen
    (:func:`kernel.unseen_dots`), written straight. This runs once per key of a bootstrap
    and of every batch of new keys, so the loop's lookups are hoisted. ``ShippedEntries``
    yields entries in this shape (hash included), checked as this loop takes them."""
    put, buckets, pack = writer.txn.put, writer.buckets, layout.pack
    events: list[Any] = []  # of the group of origin ``source``
    source: object = _NO_GROUP
    prefix, base = layout.ns_prefix(ns_id), layout.bucket_base(ns_id)
    fresh = not my_ctx.vv and not my_ctx.cloud  # we have seen nothing (a bootstrap)
    for key, ekey, position, dots, edig in items:
        if not fresh:
            seen = len(dots)
            dots = unseen_dots(dots, my_ctx)
            if len(dots) != seen:
                edig = None
        if not dots:
            continue
        row = pack_row(ekey, dots) if edig is None else edig + pack(dots)
        if stamped:
            won = dots[0] if len(dots) == 1 else winning_dot(dots)
            by = origin or won[0]
            if by != source:
                source, events = by, writer.group(namespace, by)
            events += (key, None, won[3], PUT)
        else:
            if origin != source:
                source, events = origin, writer.group(namespace, origin)
            events += (key, False, True, ADD)
        put(prefix + position, row)  # the transaction's default: state
        tally(buckets, base | position[0], None, row)


def holds_run(ctx: CausalContext, replica: str, first: int, last: int) -> bool:
    """Whether ``ctx`` holds every dot ``(replica, first..last)``: a batch's, to tell one
    applied already. O(cloud), not O(run) with a Dot for each of its thousands."""
    top = ctx.vv.get(replica, 0)
    if last <= top:
        return True
    lo = max(first, top + 1)  # the seqs below are in the vector
    held = {d.seq for d in ctx.cloud if d.replica == replica and lo <= d.seq <= last}
    return len(held) == last - lo + 1


def _not_in(dots: list[Dot], ctx: CausalContext) -> list[Dot]:
    """The dots ``ctx`` does not hold (``d not in ctx``, inlined)."""
    vv, cloud = ctx.vv, ctx.cloud
    return [d for d in dots if d[1] > vv.get(d[0], 0) and d not in cloud]


def _stored(entry: Mapping[Dot, Any], stamped: bool) -> Dots:
    """An entry's dots in a row's form: ``[replica, seq(, timestamp, value)]``."""
    if stamped:
        return [[d[0], d[1], *p] for d, p in entry.items()]
    return [[d[0], d[1]] for d in entry]
