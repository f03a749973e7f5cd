"""Local mutations: one LMDB write transaction, any number of mutations, one commit.

Invariants (the same as the pure mutators in :mod:`crdtstore.crdt`, per key):

- each mutation of namespace ``ns`` consumes the dot ``(node, seq)`` with ``seq`` the next
  of this node in ``ns``: the transaction's mutations of ``ns`` use ``first..last``;
- an OR-Set add / LWW put replaces every dot the key holds by its new dot; a remove /
  delete drops them; the mutation observed those dots (rows: :mod:`.kernel`);
- an LWW put's timestamp is greater than the timestamps of the dots it replaces (so a put
  always wins over what it observed, even if another process's clock is ahead) and than
  every timestamp this process issued;
- at commit, per namespace touched: the context gains ``first..last``, and ONE delta batch
  ``first..last`` (:mod:`.outbox`) is encoded once and logged; the visible changes are
  journaled; all in the same LMDB transaction as the rows.

Reads through a :class:`LocalWrite` see its own writes. A write transaction belongs to the
thread that began it. If the map fills mid-transaction, the transaction is aborted, the
map grown, and the mutations so far are replayed in a new transaction (reads made before
the replay are not re-validated; growth is rare and doubles the map each time).

Why one module over 500 lines: :class:`LocalWrite` is one thing, one LMDB write
transaction, and the invariants above bind its parts together (every mutator consumes a
dot and may be replayed after the map grows; ``commit`` logs exactly what they wrote);
the per-namespace work (:mod:`.outbox`), row kernels (:mod:`.kernel`) and drops
(:mod:`.drops`) already live beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from crdtstore.codec import LWW_MAP, OR_SET, key_packer
from crdtstore.crdt import CausalContext
from crdtstore.crdt.dotmap import MAX_INT_KEY, MIN_INT_KEY
from crdtstore.crdt.hlc import LOGICAL_BITS, MAX_TIMESTAMP
from crdtstore.errors import ClosedError, DecodeError, InvalidValue, StorageError, TypeMismatch
from crdtstore.keyhash import hash_key_encoding
from crdtstore.storage import layout
from crdtstore.storage.deltalog import DeltaLog
from crdtstore.storage.drops import (
    DROPS_NAMESPACE,
    DropRecord,
    record_key,
    record_value,
    remove_dropped,
)
from crdtstore.storage.environment import Environment
from crdtstore.storage.inputs import SCALARS, encode_key, encode_value
from crdtstore.storage.journal import ADD, DELETE, PUT, REMOVE, Journal
from crdtstore.storage.kernel import (
    ENTRY_HEAD,
    NO_DOTS,
    OwnDots,
    tally,
    winning_value,
    write_own,
    write_stamped,
)
from crdtstore.storage.namespaces import Namespaces
from crdtstore.storage.outbox import NamespaceWrite, observe
from crdtstore.storage.reads import count_live, get_dots, scan_chunk
from crdtstore.storage.rows import RowWriter

__all__ = ["Committed", "LastStamp", "LocalWrite"]


class LastStamp:
    """The last HLC timestamp a committed local write of this process stored: the next
    write's stamps are above it."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


@dataclass(frozen=True, slots=True)
class Committed:
    namespaces: tuple[str, ...]
    """Namespaces that got a new own delta batch."""
    changed: bool
    """Whether a visible change was journaled."""
    ticket: int = 0
    """The commit's ticket (:meth:`Environment.make_durable`)."""


class LocalWrite:
    """One write transaction of local mutations; use from the thread that created it."""

    def __init__(
        self,
        env: Environment,
        namespaces: Namespaces,
        log: DeltaLog,
        journal: Journal,
        stamps: LastStamp,
        me: str,
        now_ms: Callable[[], int],
    ) -> None:
        self._env = env
        self._names = namespaces
        self._log = log
        self._journal = journal
        self._stamps = stamps
        self.me = me
        self.settings = env.settings
        self._pack = key_packer()  # this thread's, as the transaction is
        self._own = OwnDots(me, self._pack)
        self._max_key = self.settings.max_key_bytes
        self._max_value = self.settings.max_value_bytes
        self._now_ms = now_ms
        # The next stamp to issue (0: none yet). The process's LastStamp learns the last
        # one at commit: stamps of an aborted transaction were never stored.
        self._ts = 0
        self._ops: list[tuple[Any, ...]] = []
        # The ops so far (see _run). Their functions are unbound: bound methods made every
        # transaction a reference cycle, leaving its ops, events and delta to the cyclic
        # collector.
        self._active = False
        self._replaying = False
        self._broken: str | None = None
        self._begin()

    # -- lifecycle ---------------------------------------------------------------------------

    def _begin(self) -> None:
        self.txn = self._env.hold(write=True)
        self._active = True
        self._ns: dict[str, NamespaceWrite] = {}
        self._created: dict[str, tuple[int, str]] = {}
        self._writer = RowWriter(self.txn, self._env.dbs["buckets"])
        self._buckets = self._writer.buckets

    def _release(self) -> None:
        if self._active:
            self._active = False
            self._env.release(self.txn)

    def abort(self) -> None:
        """Drop every mutation of this transaction (idempotent)."""
        self._release()
        self._broken = self._broken or "aborted"

    @property
    def active(self) -> bool:
        """Whether mutations may still be made (neither committed, aborted nor broken)."""
        return self._active

    # A group commit (:mod:`.group`) runs several writers' mutations here. An op that
    # raises one of the package's errors has recorded nothing and changed nothing (each
    # validates before it writes, and the kernel puts a row back when it refuses it; a
    # namespace it created is an op recorded on its own); any other failure is undone by
    # rolling back to the mark taken before the mutation.

    def savepoint(self) -> int:
        """A mark of the ops so far, for :meth:`rollback`."""
        return len(self._ops)

    def rollback(self, mark: int) -> None:
        """Undo every op after ``mark``: the transaction begins again and the ops before
        it are replayed (LMDB's nested transactions would undo the rows, not this
        object's account of them). As after map growth, reads made by those ops are not
        re-validated: another process may commit in between."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        del self._ops[mark:]
        self._release()
        try:
            self._begin()
            while True:
                try:
                    self._replay()
                    return
                except lmdb.MapFullError:
                    self._regrow()
        except lmdb.Error as exc:
            self._broken = f"LMDB error: {exc}"
            self._release()
            raise StorageError(f"write to {self._env.path} failed: {exc}") from exc

    def _regrow(self) -> None:
        """Abort, grow the map, begin again; the caller replays."""
        seen = self._env.map_size
        self._release()
        try:
            self._env.grow(seen)
        except BaseException:
            self._broken = "the map could not grow"
            raise
        self._begin()

    # The ops so far, to replay after the map grew, are ``(entry, *args)``: calls of
    # ``put``, ``add`` or ``_run``, each of which records itself once it succeeded (put and
    # add are ops and their own ``_run``: a batch is mostly calls of these two, and each
    # Python frame on their path counts). While ops are replayed they raise instead of
    # recovering: the replay recovers.

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            result = fn(self, *args)
        except lmdb.Error as exc:
            if self._replaying:
                raise
            return self._recover(exc, _RUN, (fn, *args))
        self._ops.append((_RUN, fn, *args))
        return result

    def _replay(self) -> None:
        """Run every op so far again, in a new transaction (they record themselves again)."""
        ops, self._ops = self._ops, []
        self._replaying = True
        try:
            for op in ops:
                op[0](self, *op[1:])
        except BaseException:
            self._ops = ops
            raise
        finally:
            self._replaying = False

    def _recover(self, exc: lmdb.Error, entry: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """After the op ``entry(self, *args)`` raised ``exc``: if the map is full, grow it,
        replay every op so far in a new transaction and run this one again; any other LMDB
        error ends the transaction."""
        try:
            if not isinstance(exc, lmdb.MapFullError):
                raise exc
            while True:
                self._regrow()
                try:
                    self._replay()
                    self._replaying = True
                    return entry(self, *args)
                except lmdb.MapFullError:
                    continue
                finally:
                    self._replaying = False
        except lmdb.Error as err:
            self._broken = f"LMDB error: {err}"
            self._release()
            raise StorageError(f"write to {self._env.path} failed: {err}") from err

    def commit(self, durable: bool = True) -> Committed:
        """Commit; return once it is on disk (with sync durability), or at once if not
        ``durable`` (the caller then calls ``make_durable`` with the ticket)."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            while True:
                try:
                    post = self._finish()
                    ticket = self._env.commit(self.txn, dirty=bool(post))
                    break
                except lmdb.MapFullError:
                    while True:
                        self._regrow()
                        try:
                            self._replay()
                            break
                        except lmdb.MapFullError:
                            continue
            if self._ts > self._stamps.last:  # before the next writer may stamp
                self._stamps.last = self._ts - 1
        except lmdb.Error as exc:
            self._broken = f"LMDB error: {exc}"
            raise StorageError(
                f"commit to {self._env.path} failed; nothing was written: {exc}"
            ) from exc
        finally:
            self._release()
        for name, (ns_id, tname) in self._created.items():
            self._names.remember(name, ns_id, tname)
        for ns_id, data, ctx in post:
            self._names.remember_context(ns_id, data, ctx)
        if durable:
            self._env.make_durable(ticket)
        return Committed(
            tuple(n.name for n in self._ns.values() if n.next_seq > n.first),
            self._writer.changed(),
            ticket,
        )

    def _finish(self) -> list[tuple[int, bytes, CausalContext]]:
        txn, me = self.txn, self.me
        post = []
        for nsw in self._ns.values():
            if nsw.next_seq == nsw.first:
                continue
            first, last = nsw.first, nsw.next_seq - 1
            new_ctx = nsw.ctx.with_run(me, first, last)
            post.append((nsw.ns_id, self._names.store_context(txn, nsw.ns_id, new_ctx), new_ctx))
            self._log.put(txn, nsw.ns_id, me, first, last, nsw.encode_batch(me))
        self._writer.finish(self._journal)
        return post

    # -- namespaces ----------------------------------------------------------------------------

    def _ns_write(self, name: str, type_name: str) -> NamespaceWrite:
        nsw = self._ns.get(name)
        if nsw is not None:
            if nsw.type_name != type_name:
                raise TypeMismatch(f"namespace {name!r} holds a {nsw.type_name}, not a {type_name}")
            return nsw
        ns_id, tname, created = self._names.ensure(self.txn, name, type_name)
        if created:
            self._created[name] = (ns_id, tname)
            # An op of its own, so that a mutation that raises after creating the
            # namespace is seen to have written (a group rolls it back; see savepoint).
            self._ops.append((_RUN, LocalWrite._ensure, name, type_name))
        ctx = self._names.load_context(self.txn, ns_id)
        seq = ctx.max_seq(self.me) + 1
        nsw = NamespaceWrite(
            ns_id, name, tname, ctx, seq, seq, layout.ns_prefix(ns_id),
            layout.bucket_base(ns_id), {}, {}, [],
        )  # fmt: skip
        self._writer.groups.append([name, self.me, nsw.events])
        self._ns[name] = nsw
        return nsw

    def ensure_namespace(self, name: str, type_name: str) -> None:
        self._run(LocalWrite._ensure, name, type_name)

    def _ensure(self, name: str, type_name: str) -> None:
        ns_id, tname, created = self._names.ensure(self.txn, name, type_name)
        if created:
            self._created[name] = (ns_id, tname)

    def drop_namespace(self, name: str) -> bool:
        """Drop ``name`` as everything this node has seen there (:mod:`.drops`): remove
        its entries, free its rows and logged batches, and write the drop record that
        replicates the drop, all in this transaction. False, doing nothing, if ``name``
        does not exist here or nothing was written there since its last drop. Refused
        after a write to ``name`` in this transaction (its context is not stored yet)."""
        if name in self._ns:
            raise InvalidValue(
                f"namespace {name!r} was written in this transaction: drop it in its own"
            )
        found: tuple[str, CausalContext] | None = self._run(LocalWrite._drop_namespace, name)
        if found is None:
            return False
        record = DropRecord(name, found[0], self.me, found[1])
        self.put(DROPS_NAMESPACE, record_key(name, self.me), record_value(record))
        return True

    def _drop_namespace(self, name: str) -> tuple[str, CausalContext] | None:
        found = self._names.lookup(self.txn, name)
        if found is None:
            return None
        ns_id, type_name = found
        ctx = self._names.load_context(self.txn, ns_id)
        done = remove_dropped(
            self.txn, self._writer, self._names, self._log, self._env.dbs["meta"],
            ns_id, name, type_name, ctx, self.me,
        )  # fmt: skip
        return None if done is None else (type_name, ctx)

    def lookup(self, name: str) -> tuple[int, str] | None:
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        nsw = self._ns.get(name)
        if nsw is not None:
            return nsw.ns_id, nsw.type_name
        return self._names.lookup(self.txn, name)

    # -- mutations -----------------------------------------------------------------------------

    def put(self, namespace: str, key: Any, value: Any) -> int:
        """LWW put; returns the timestamp written."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            # encode_key's and encode_value's fast paths, inlined: the exact types that
            # need no check but their size; anything unusual, invalid or too large takes
            # the general path, which raises the right error.
            pack = self._pack
            ekey = pvalue = None
            kt = type(key)
            if kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY):
                try:
                    ekey = pack(key)
                except (TypeError, ValueError, OverflowError):
                    ekey = None
            if ekey is None or len(ekey) > self._max_key:
                ekey = encode_key(key, self.settings)  # raises the precise error
            if type(value) in SCALARS:
                try:
                    pvalue = pack(value)
                except (TypeError, ValueError, OverflowError):
                    pvalue = None
            if pvalue is None or len(pvalue) > self._max_value:
                pvalue = encode_value(value, self.settings)  # raises the precise error
            nsw = self._ns.get(namespace)
            if nsw is None or nsw.type_name != LWW_MAP:
                nsw = self._ns_write(namespace, LWW_MAP)
            # The HLC stamp: not below the wall clock, greater than every timestamp issued
            # here and than the replaced dots (the kernel sees to those). The clock is read
            # at a transaction's first stamp and every 64th after; between, stamps count up
            # as the HLC's logical part does within a millisecond (reading the clock is
            # the dearest part of a stamp). No lock: this write transaction is the process's only
            # writer (LMDB's writer lock), and stamps are issued only inside one.
            ts = self._ts
            if not ts & 63:
                ts = max(ts, self._now_ms() << LOGICAL_BITS, self._stamps.last + 1)
            if ts > MAX_TIMESTAMP:
                raise InvalidValue(f"hybrid clock overflow at {ts}")
            h, bucket, _ = hash_key_encoding(ekey)
            seq = nsw.next_seq
            try:
                old, dots, digest, new, ts = write_stamped(
                    self.txn, nsw.prefix + bucket + ekey, h, self._own, seq, ts, pvalue
                )
            except DecodeError as exc:
                raise DecodeError(f"state row of key {key!r:.60}: {exc}") from exc
        except lmdb.Error as exc:
            if self._replaying:
                raise
            result: int = self._recover(exc, _PUT, (namespace, key, value))
            return result
        self._ts = ts + 1
        nsw.next_seq = seq + 1
        tally(self._buckets, nsw.bucket_base | bucket[0], old, digest)
        nsw.delta[ekey] = ENTRY_HEAD + ekey + new
        if old is None:
            nsw.events.extend((key, None, value, PUT))
        else:
            observe(nsw.observed, dots)  # the usual old row: one dot, its own winner
            before = dots[0][3] if len(dots) == 1 else winning_value(dots)
            nsw.events.extend((key, before, value, PUT))
        self._ops.append((_PUT, namespace, key, value))
        return ts

    def delete(self, namespace: str, key: Any, *, only_if_present: bool = True) -> bool:
        """LWW delete; True if the key was present. Absent and ``only_if_present``: no-op."""
        ekey = encode_key(key, self.settings)
        done: bool = self._run(LocalWrite._drop, namespace, LWW_MAP, key, ekey, only_if_present)
        return done

    def add(self, namespace: str, element: Any) -> bool:
        """OR-Set add; True if the element was absent."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            ekey = None
            kt = type(element)  # encode_key's fast path, inlined as in put
            if kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= element <= MAX_INT_KEY):
                try:
                    ekey = self._pack(element)
                except (TypeError, ValueError, OverflowError):
                    ekey = None
            if ekey is None or len(ekey) > self._max_key:
                ekey = encode_key(element, self.settings)  # raises the precise error
            nsw = self._ns.get(namespace)
            if nsw is None or nsw.type_name != OR_SET:
                nsw = self._ns_write(namespace, OR_SET)
            h, bucket, _ = hash_key_encoding(ekey)
            seq = nsw.next_seq
            try:
                old, dots, digest, new = write_own(
                    self.txn, nsw.prefix + bucket + ekey, h, self._own, seq
                )
            except DecodeError as exc:
                raise DecodeError(f"state row of element {element!r:.60}: {exc}") from exc
        except lmdb.Error as exc:
            if self._replaying:
                raise
            done: bool = self._recover(exc, _ADD, (namespace, element))
            return done
        nsw.next_seq = seq + 1
        tally(self._buckets, nsw.bucket_base | bucket[0], old, digest)
        nsw.delta[ekey] = ENTRY_HEAD + ekey + new
        self._ops.append((_ADD, namespace, element))
        if old is None:
            nsw.events.extend((element, False, True, ADD))
            return True
        observe(nsw.observed, dots)
        return False

    def remove(self, namespace: str, element: Any, *, only_if_present: bool = True) -> bool:
        """OR-Set remove; True if the element was present."""
        ekey = encode_key(element, self.settings)
        done: bool = self._run(LocalWrite._drop, namespace, OR_SET, element, ekey, only_if_present)
        return done

    def _drop(
        self, namespace: str, type_name: str, key: Any, ekey: bytes, only_if_present: bool
    ) -> bool:
        nsw = self._ns_write(namespace, type_name)
        bucket = hash_key_encoding(ekey)[1]
        rkey = nsw.prefix + bucket + ekey
        old = self._writer.get(rkey)
        if old is None and only_if_present:
            return False
        dots = layout.checked_dots(layout.row_dots(old), type_name == LWW_MAP) if old else []
        observe(nsw.observed, dots)
        nsw.next_seq += 1
        self._writer.put_row(nsw.bucket_base | bucket[0], rkey, old, None)
        nsw.delta[ekey] = ENTRY_HEAD + ekey + NO_DOTS  # [key, []]
        if dots:
            if type_name == LWW_MAP:
                nsw.events.extend((key, winning_value(dots), None, DELETE))
            else:
                nsw.events.extend((key, True, False, REMOVE))
        return bool(dots)

    # -- reads (see this transaction's writes) -------------------------------------------------

    def dots(self, namespace: str, ekey: bytes) -> list[list[Any]] | None:
        found = self.lookup(namespace)
        if found is None:
            return None
        return get_dots(self.txn, self._env.state, found[0], ekey)

    def count(self, namespace: str) -> int:
        found = self.lookup(namespace)
        if found is None:
            return 0
        n: int = self._run(LocalWrite._count, found[0])
        return n

    def _count(self, ns_id: int) -> int:
        self._writer.flush()  # bucket counts are summed in memory until flushed
        return count_live(self.txn, self._env.dbs["buckets"], ns_id)

    def scan(
        self, namespace: str, after: bytes | None, limit: int
    ) -> list[tuple[layout.Buf, Any, list[list[Any]]]]:
        found = self.lookup(namespace)
        if found is None:
            return []
        return scan_chunk(self.txn, self._env.state, found[0], after, limit)


_PUT = LocalWrite.put
_ADD = LocalWrite.add
_RUN = LocalWrite._run
