"""Local mutations: one LMDB write transaction, any number of mutations, one commit.

Invariants (the same as the pure mutators in :mod:`crdtstore.crdt`, per key):

- each mutation of namespace ``ns`` consumes the dot ``(node, seq)`` with ``seq`` the next
  of this node in ``ns``: the transaction's mutations of ``ns`` use ``first..last``;
- an OR-Set add / LWW put replaces every dot the key holds by its new dot; a remove /
  delete drops them; the mutation observed those dots;
- an LWW put's timestamp is greater than the timestamps of the dots it replaces (so a put
  always wins over what it observed, even if another process's clock is ahead) and than
  every timestamp this process issued;
- at commit, per namespace touched: the context gains ``first..last``, and ONE delta batch
  ``first..last`` (the join of the transaction's deltas: each touched key's final dots,
  with the observed and consumed dots as context) is encoded once and logged; the visible
  changes are journaled; all in the same LMDB transaction as the rows.

Reads through a :class:`LocalWrite` see its own writes. A write transaction belongs to the
thread that began it. If the map fills mid-transaction, the transaction is aborted, the
map grown, and the mutations so far are replayed in a new transaction (reads made before
the replay are not re-validated; growth is rare and doubles the map each time).
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb
import msgpack

from crdtstore.codec import encode_cloud
from crdtstore.crdt import CausalContext, check_key
from crdtstore.crdt.dotmap import MAX_INT_KEY, MIN_INT_KEY
from crdtstore.crdt.hlc import LOGICAL_BITS, MAX_TIMESTAMP
from crdtstore.errors import (
    ClosedError,
    DecodeError,
    InvalidValue,
    StorageError,
    TypeMismatch,
    ValueTooLarge,
)
from crdtstore.keyhash import new_hash
from crdtstore.storage import layout
from crdtstore.storage.rows import RowWriter, winning_value
from crdtstore.sync.messages import encode_delta_batch

if TYPE_CHECKING:
    from crdtstore.settings import NodeSettings
    from crdtstore.storage.replica import LMDBReplica

LWW = "lww_map"
ORSET = "or_set"
_read_hash = struct.Struct(">Q").unpack_from
"""The first 8 bytes as a big-endian int: a row's entry hash (``layout.row_hash`` minus its
two calls, for the hot path) or a digest."""


# -- input checks (before anything is written) ----------------------------------------------


def encode_key(key: object, settings: NodeSettings) -> bytes:
    kt = type(key)
    if not (kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY)):  # type: ignore[operator]
        check_key(key)  # the rare case (subclasses) or an invalid key: raises with the reason
    try:
        ekey = layout.pack_key(key)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a str with lone surrogates
        raise InvalidValue(f"key {key!r} cannot be encoded: {exc}") from exc
    if len(ekey) > settings.max_key_bytes:
        raise ValueTooLarge(
            f"key {key!r:.60} encodes to {len(ekey)} bytes; max_key_bytes={settings.max_key_bytes}"
        )
    return ekey


_SCALARS = (str, int, float, bytes, bool, type(None))
_EXTENSIONS = (msgpack.ExtType, msgpack.Timestamp)
"""What msgpack packs as an extension type, which no decoder of a row or of the wire
accepts: stored, the key could then be neither read nor written again."""
_CHECKED = (list, tuple, dict, *_EXTENSIONS)
"""What :func:`check_value` walks into or refuses."""


def check_value(value: object, max_depth: int) -> None:
    """Refuse what peers' decoder (:func:`crdtstore.codec.check_depth`) would refuse once
    ``value`` is packed: nesting beyond ``max_depth``, containers as map keys, extension
    types. msgpack packs tuples and subclasses of list and dict as arrays and maps, so
    they count too (an ExtType is a tuple: it is refused before it is walked)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _EXTENSIONS):
            raise InvalidValue(f"value holds a msgpack {type(item).__name__}: not storable")
        if depth > max_depth:
            raise InvalidValue(f"value nests deeper than max_value_depth={max_depth}")
        if isinstance(item, dict):
            if any(isinstance(k, _CHECKED) for k in item):
                raise InvalidValue("value has a container or an extension type as a map key")
            children: Any = item.values()
        else:
            children = item
        stack.extend((c, depth + 1) for c in children if isinstance(c, _CHECKED))


def encode_value(value: object, settings: NodeSettings) -> bytes:
    if isinstance(value, _CHECKED):
        check_value(value, settings.max_value_depth)
    try:
        data: bytes = layout.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValue(
            f"value of type {type(value).__name__} is not msgpack-able "
            f"(None, bool, int, float, str, bytes, list, dict): {exc}"
        ) from exc
    if len(data) > settings.max_value_bytes:
        raise ValueTooLarge(
            f"value encodes to {len(data)} bytes; max_value_bytes={settings.max_value_bytes}"
        )
    return data


# -- reads shared by read and write transactions --------------------------------------------


def get_dots(txn: lmdb.Transaction, state: Any, ns_id: int, ekey: bytes) -> list[list[Any]] | None:
    data = txn.get(layout.row_key(ns_id, layout.hash_encoded_key(ekey), ekey), db=state)
    return None if data is None else layout.unpack_row(data)[1]


def count_live(txn: lmdb.Transaction, buckets: Any, ns_id: int) -> int:
    prefix = layout.ns_prefix(ns_id)
    total = 0
    with txn.cursor(db=buckets) as cur:
        ok = cur.set_range(prefix)
        while ok and cur.key()[:4] == prefix:
            total += layout.unpack_bucket(cur.value())[1]
            ok = cur.next()
    return total


def scan_chunk(
    txn: lmdb.Transaction, state: Any, ns_id: int, after: bytes | None, limit: int
) -> list[tuple[layout.Buf, Any, list[list[Any]]]]:
    """Up to ``limit`` rows ``(row key, key, dots)`` of ``ns_id`` after row key ``after``."""
    prefix = layout.ns_prefix(ns_id)
    out: list[tuple[layout.Buf, Any, list[list[Any]]]] = []
    with txn.cursor(db=state) as cur:
        ok = cur.set_range(after if after is not None else prefix)
        if ok and after is not None and cur.key() == after:
            ok = cur.next()
        while ok and len(out) < limit:
            rkey = cur.key()
            if rkey[:4] != prefix:
                break
            out.append(
                (
                    rkey,
                    layout.unpack_stored(layout.row_ekey(rkey)),
                    layout.unpack_row(cur.value())[1],
                )
            )
            ok = cur.next()
    return out


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


def observe(observed: dict[str, list[int]], dots: list[list[Any]]) -> None:
    """Add the dots of a row (``[replica, seq, ...]`` each) to ``observed``."""
    for d in dots:
        seqs = observed.get(d[0])
        if seqs is None:
            observed[d[0]] = [d[1]]
        else:
            seqs.append(d[1])


@dataclass(slots=True)
class _NsWrite:
    """What one transaction did to one namespace so far."""

    ns_id: int
    name: str
    type_name: str
    ctx: CausalContext
    first: int
    next_seq: int
    delta: dict[bytes, bytes]
    """Encoded key -> the encoded entry ``[key, final dots]``: the batch's entries as the
    wire carries them (a row's dots are their wire form too)."""
    observed: dict[str, list[int]]
    """Replica -> seqs of the dots the transaction's mutations replaced (see observe)."""
    prefix: bytes
    bucket_base: int
    """ns_id << 8: with a key hash's first byte, the code of its bucket."""
    events: list[Any]
    """The namespace's change events, ``key, old, new`` each, flat: its journal group.
    (A commit's events are journaled by namespace: the changes of one key keep their
    order, and no other writer's come between.)"""


@dataclass(frozen=True, slots=True)
class Committed:
    namespaces: tuple[str, ...]
    """Namespaces that got a new own delta batch."""
    changed: bool
    """Whether a visible change was journaled."""


class LocalWrite:
    """One write transaction of local mutations; use from the thread that created it."""

    def __init__(self, replica: LMDBReplica) -> None:
        self.replica = replica
        self.settings = replica.settings
        self.me = replica.node_id
        self._me_tag = self.me.encode() + b"\0"
        self._me_seq = struct.Struct(f">{len(self._me_tag)}sQ").pack  # tag + 8-byte seq
        self._pack = msgpack.Packer(use_bin_type=True).pack  # this thread's alone
        self._max_key = self.settings.max_key_bytes
        self._max_value = self.settings.max_value_bytes
        self._now_ms = replica.now_ms
        # The next stamp to issue (0: none yet). The replica's clock (_clock_last) learns
        # the last one at commit: stamps of an aborted transaction were never stored.
        self._ts = 0
        self._row_head = b"\x91\x94" + layout.pack(self.me)  # [[me, ...
        self._set_row_head = b"\x91\x92" + layout.pack(self.me)
        self._ops: list[tuple[Any, ...]] = []
        # The mutations so far, each (function, *args), to replay after the map grew. The
        # functions are unbound: bound methods made every transaction a reference cycle,
        # leaving its ops, events and delta to the cyclic collector (~1 us per put).
        self._active = False
        self._broken: str | None = None
        self._begin()

    # -- lifecycle ---------------------------------------------------------------------------

    def _begin(self) -> None:
        r = self.replica
        while True:
            r._gate.enter()
            try:
                self.txn = r._begin_write()
                break
            except lmdb.MapResizedError:
                r._gate.exit()
            except lmdb.Error as exc:
                r._gate.exit()
                raise StorageError(f"cannot begin a write on {r.path}: {exc}") from exc
            except BaseException:
                r._gate.exit()
                raise
            r._adopt_map_size()
        self._active = True
        self._ns: dict[str, _NsWrite] = {}
        self._created: dict[str, tuple[int, str]] = {}
        self._writer = RowWriter(self.txn, r._bucketdb)
        self._buckets = self._writer.buckets

    def _release(self) -> None:
        if self._active:
            self._active = False
            try:
                self.txn.abort()
            finally:
                self.replica._gate.exit()

    def abort(self) -> None:
        """Drop every mutation of this transaction (idempotent)."""
        self._release()
        self._broken = self._broken or "aborted"

    def _regrow(self) -> None:
        """Abort, grow the map, begin again; the caller replays."""
        seen = self.replica._map_size
        self._release()
        try:
            self.replica._grow(seen)
        except BaseException:
            self._broken = "the map could not grow"
            raise
        self._begin()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            result = fn(self, *args)
        except lmdb.Error as exc:
            result = self._recover(exc, fn, args)
        self._ops.append((fn, *args))
        return result

    def _replay(self) -> None:
        for op in self._ops:
            op[0](self, *op[1:])

    def _recover(self, exc: lmdb.Error, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """After ``fn(self, *args)`` raised ``exc``: if the map is full, grow it and replay every
        mutation so far in a new transaction; any other LMDB error ends the transaction."""
        try:
            if not isinstance(exc, lmdb.MapFullError):
                raise exc
            while True:
                self._regrow()
                try:
                    self._replay()
                    return fn(self, *args)
                except lmdb.MapFullError:
                    continue
        except lmdb.Error as err:
            self._broken = f"LMDB error: {err}"
            self._release()
            raise StorageError(f"write to {self.replica.path} failed: {err}") from err

    def commit(self) -> Committed:
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        r = self.replica
        try:
            while True:
                try:
                    post = self._finish()
                    self.txn.commit()
                    break
                except lmdb.MapFullError:
                    while True:
                        self._regrow()
                        try:
                            self._replay()
                            break
                        except lmdb.MapFullError:
                            continue
            if self._ts > r._clock_last:  # before the next writer may stamp
                r._clock_last = self._ts - 1
        except lmdb.Error as exc:
            self._broken = f"LMDB error: {exc}"
            raise StorageError(f"commit to {r.path} failed; nothing was written: {exc}") from exc
        finally:
            self._release()
        for name, (ns_id, tname) in self._created.items():
            r.remember_ns(name, ns_id, tname)
        for ns_id, data, ctx in post:
            r._ctx_cache[ns_id] = (data, ctx)
        return Committed(
            tuple(n.name for n in self._ns.values() if n.next_seq > n.first),
            self._writer.changed(),
        )

    def _finish(self) -> list[tuple[int, bytes, CausalContext]]:
        r, txn, me = self.replica, self.txn, self.me
        post = []
        for nsw in self._ns.values():
            if nsw.next_seq == nsw.first:
                continue
            first, last = nsw.first, nsw.next_seq - 1
            new_ctx = nsw.ctx.with_run(me, first, last)
            post.append((nsw.ns_id, r.store_ctx(txn, nsw.ns_id, new_ctx), new_ctx))
            # The batch built straight from the rows, which already hold each dot as
            # [replica, seq(, timestamp, value)]: nothing packed per key at commit.
            ctx_wire = encode_dots(me, first, last, nsw.observed)
            encoded = encode_delta_batch(
                nsw.name, me, first, last, nsw.type_name, ctx_wire, list(nsw.delta.values())
            )
            r.log_put(txn, nsw.ns_id, me, first, last, encoded)
        r._finish(self._writer)
        return post

    # -- namespaces ----------------------------------------------------------------------------

    def _ns_write(self, name: str, type_name: str) -> _NsWrite:
        nsw = self._ns.get(name)
        if nsw is not None:
            if nsw.type_name != type_name:
                raise TypeMismatch(f"namespace {name!r} holds a {nsw.type_name}, not a {type_name}")
            return nsw
        ns_id, tname, created = self.replica._ensure_ns(self.txn, name, type_name)
        if created:
            self._created[name] = (ns_id, tname)
        ctx = self.replica.load_ctx(self.txn, ns_id)
        seq = ctx.max_seq(self.me) + 1
        nsw = _NsWrite(
            ns_id, name, tname, ctx, seq, seq, {}, {}, layout.ns_prefix(ns_id), ns_id << 8, []
        )
        self._writer.groups.append([name, self.me, nsw.events])
        self._ns[name] = nsw
        return nsw

    def ensure_namespace(self, name: str, type_name: str) -> None:
        self._run(LocalWrite._ensure, name, type_name)

    def _ensure(self, name: str, type_name: str) -> None:
        ns_id, tname, created = self.replica._ensure_ns(self.txn, name, type_name)
        if created:
            self._created[name] = (ns_id, tname)

    def lookup(self, name: str) -> tuple[int, str] | None:
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        nsw = self._ns.get(name)
        if nsw is not None:
            return nsw.ns_id, nsw.type_name
        return self.replica._lookup_ns(self.txn, name)

    # -- mutations -----------------------------------------------------------------------------

    # encode_key / encode_value for the common exact types, with this transaction's packer
    # (a batch of 1,000 puts spends a fifth of its time here otherwise); anything unusual,
    # invalid or too large takes the general path, which raises the right error. (_put
    # has both inlined.)

    def _key(self, key: Any) -> bytes:
        kt = type(key)
        if kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY):
            try:
                ekey: bytes = self._pack(key)
            except (TypeError, ValueError, OverflowError):
                return encode_key(key, self.settings)
            if len(ekey) <= self._max_key:
                return ekey
        return encode_key(key, self.settings)

    # put and add are _run, inlined: a batch of 1,000 is mostly calls of these two.

    def put(self, namespace: str, key: Any, value: Any) -> int:
        """LWW put; returns the timestamp written."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            ts = self._put(namespace, key, value)
        except lmdb.Error as exc:
            ts = self._recover(exc, _PUT, (namespace, key, value))
        self._ops.append((_PUT, namespace, key, value))
        return ts

    def delete(self, namespace: str, key: Any, *, only_if_present: bool = True) -> bool:
        """LWW delete; True if the key was present. Absent and ``only_if_present``: no-op."""
        ekey = encode_key(key, self.settings)
        done: bool = self._run(LocalWrite._drop, namespace, LWW, key, ekey, only_if_present)
        return done

    def add(self, namespace: str, element: Any) -> bool:
        """OR-Set add; True if the element was absent."""
        if not self._active:
            raise ClosedError(f"transaction is finished ({self._broken or 'committed'})")
        try:
            done = self._add(namespace, element)
        except lmdb.Error as exc:
            done = self._recover(exc, _ADD, (namespace, element))
        self._ops.append((_ADD, namespace, element))
        return done

    def remove(self, namespace: str, element: Any, *, only_if_present: bool = True) -> bool:
        """OR-Set remove; True if the element was present."""
        ekey = encode_key(element, self.settings)
        done: bool = self._run(LocalWrite._drop, namespace, ORSET, element, ekey, only_if_present)
        return done

    def _locate(self, nsw: _NsWrite, ekey: bytes) -> tuple[int, bytes, bytes | None, list[Any]]:
        khash = layout.hash_encoded_key(ekey)
        rkey = layout.row_key(nsw.ns_id, khash, ekey)
        old = self._writer.get(rkey)
        dots = layout.checked_dots(layout.row_dots(old), nsw.type_name == LWW) if old else []
        observe(nsw.observed, dots)
        return khash, rkey, old, dots

    def _put(self, namespace: str, key: Any, value: Any) -> int:
        # The hot path of batched writes: _key, _value, RowWriter.put_row, layout's hashes
        # and the replica's stamp, inlined (same encodings, row layout, bucket bookkeeping
        # and clock rule; the differential tests cover both). A replay after the map grew
        # encodes again.
        pack = self._pack
        ekey = pvalue = None
        kt = type(key)
        if kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY):
            try:
                ekey = pack(key)
            except (TypeError, ValueError, OverflowError):
                ekey = None  # encode_key below raises the precise error
        if ekey is None or len(ekey) > self._max_key:
            ekey = encode_key(key, self.settings)  # raises the precise error
        if type(value) in _SCALARS:
            try:
                pvalue = pack(value)
            except (TypeError, ValueError, OverflowError):
                pvalue = None
        if pvalue is None or len(pvalue) > self._max_value:
            pvalue = encode_value(value, self.settings)  # raises the precise error
        nsw = self._ns.get(namespace)
        if nsw is None or nsw.type_name != LWW:
            nsw = self._ns_write(namespace, LWW)
        h = new_hash()
        # What the bucket hashes (fingerprint.bucket_part): all but the last byte, or two.
        cut = -2 if 48 <= ekey[-1] <= 57 and len(ekey) > 2 and 48 <= ekey[-2] <= 57 else -1
        h.update(ekey[:cut])
        bdig = h.digest()  # its first byte is key_hash's: the key's bucket
        h.update(ekey[cut:])  # the entry hash continues the hash of the whole key
        rkey = nsw.prefix + bdig[:1] + ekey  # layout.row_key
        # The HLC stamp: not below the wall clock, greater than every timestamp issued here
        # and than the replaced dots (checked below). The clock is read at a transaction's
        # first stamp and every 64th after; between, stamps count up as the HLC's logical
        # part does within a millisecond (a read cost as much as the rest of the stamp).
        # No lock: this write transaction is the process's only writer (LMDB's writer lock),
        # and stamps are issued only inside one.
        ts = self._ts
        if not ts & 63:
            ts = max(ts, self._now_ms() << LOGICAL_BITS, self.replica._clock_last + 1)
        if ts > MAX_TIMESTAMP:
            raise InvalidValue(f"hybrid clock overflow at {ts}")
        seq = nsw.next_seq
        h.update(self._me_seq(self._me_tag, seq))
        edig = h.digest()  # entry_hash of {(me, seq)}, continuing the key's hash
        # The row, built without re-encoding the value: hash + [[me, seq, ts, value]].
        head = self._row_head + pack(seq) + b"\xcf"
        row_dots = head + ts.to_bytes(8, "big") + pvalue
        txn = self.txn
        # One lookup for the old row and the write (LMDB's replace), a third of the cost
        # of a get and a put. The row is written before the old one is read, so its
        # stamp is checked against the old dots after, and the row rewritten if a peer's
        # clock ran ahead of ours (rare).
        old = txn.replace(rkey, edig + row_dots)  # the transaction's default: state
        if old is not None:
            try:
                dots = layout.row_dots(old)
                single = dots[0] if len(dots) == 1 else None  # the usual row: one dot
                if not (
                    type(single) is list
                    and len(single) == 4
                    and type(single[0]) is str
                    and type(single[1]) is int
                    and type(single[2]) is int
                ):
                    single = None
                    layout.checked_dots(dots, stamped=True)
                floor = (single[2] if single else max([d[2] for d in dots])) + 1
            except DecodeError as exc:
                txn.put(rkey, old)  # a corrupt row stays as it was, and the put fails
                raise DecodeError(f"state row of key {key!r:.60}: {exc}") from exc
            if ts < floor:
                if floor > MAX_TIMESTAMP:
                    txn.put(rkey, old)  # as it was: the put fails, changing nothing
                    raise InvalidValue(f"hybrid clock overflow at {floor}")
                ts = floor
                row_dots = head + ts.to_bytes(8, "big") + pvalue
                txn.put(rkey, edig + row_dots)
            if single:  # observe() and winning_value(), inlined
                seqs = nsw.observed.get(single[0])
                if seqs is None:
                    nsw.observed[single[0]] = [single[1]]
                else:
                    seqs.append(single[1])
                before = single[3]
            else:
                observe(nsw.observed, dots)
                before = winning_value(dots)
            old_hash = _read_hash(old)[0]
        else:
            old_hash = 0
            before = None
        self._ts = ts + 1
        nsw.next_seq = seq + 1
        bkey = nsw.bucket_base | bdig[0]  # the bucket's code (RowWriter.buckets)
        acc = self._buckets.get(bkey)
        if acc is None:
            acc = self._buckets[bkey] = [0, 0]
        if old is None:
            acc[0] ^= _read_hash(edig)[0]
            acc[1] += 1
        else:
            acc[0] ^= old_hash ^ _read_hash(edig)[0]
        nsw.delta[ekey] = b"\x92" + ekey + row_dots
        nsw.events.extend((key, before, value))
        return ts

    def _add(self, namespace: str, element: Any) -> bool:
        # Inlined like _put: _locate + RowWriter.put_row + the entry hash of one dot.
        ekey = self._key(element)
        nsw = self._ns.get(namespace)
        if nsw is None or nsw.type_name != ORSET:
            nsw = self._ns_write(namespace, ORSET)
        h = new_hash()
        cut = -2 if 48 <= ekey[-1] <= 57 and len(ekey) > 2 and 48 <= ekey[-2] <= 57 else -1
        h.update(ekey[:cut])
        bdig = h.digest()
        h.update(ekey[cut:])
        rkey = nsw.prefix + bdig[:1] + ekey  # layout.row_key
        seq = nsw.next_seq
        h.update(self._me_seq(self._me_tag, seq))
        edig = h.digest()
        row_dots = self._set_row_head + self._pack(seq)
        # An add's row does not depend on the old one: one lookup for both (see _put).
        txn = self.txn
        old = txn.replace(rkey, edig + row_dots)  # the transaction's default: state
        if old is not None:
            try:
                dots = layout.checked_dots(layout.row_dots(old), stamped=False)
            except DecodeError as exc:
                txn.put(rkey, old)  # a corrupt row stays as it was, and the add fails
                raise DecodeError(f"state row of element {element!r:.60}: {exc}") from exc
            observe(nsw.observed, dots)
            old_hash = _read_hash(old)[0]
        else:
            old_hash = 0
        nsw.next_seq = seq + 1
        bkey = nsw.bucket_base | bdig[0]  # the bucket's code (RowWriter.buckets)
        acc = self._buckets.get(bkey)
        if acc is None:
            acc = self._buckets[bkey] = [0, 0]
        acc[0] ^= old_hash ^ _read_hash(edig)[0]
        nsw.delta[ekey] = b"\x92" + ekey + row_dots
        if old is None:
            acc[1] += 1
            nsw.events.extend((element, False, True))
            return True
        return False

    def _drop(
        self, namespace: str, type_name: str, key: Any, ekey: bytes, only_if_present: bool
    ) -> bool:
        nsw = self._ns_write(namespace, type_name)
        khash = layout.hash_encoded_key(ekey)
        rkey = layout.row_key(nsw.ns_id, khash, ekey)
        if only_if_present and self._writer.get(rkey) is None:
            return False
        khash, rkey, old, dots = self._locate(nsw, ekey)
        nsw.next_seq += 1
        self._writer.put_row(nsw.ns_id, khash >> layout.BUCKET_SHIFT, rkey, old, None)
        nsw.delta[ekey] = b"\x92" + ekey + b"\x90"  # [key, []]
        if dots:
            before = winning_value(dots) if type_name == LWW else True
            after = None if type_name == LWW else False
            nsw.events.extend((key, before, after))
        return bool(dots)

    # -- reads (see this transaction's writes) -------------------------------------------------

    def dots(self, namespace: str, ekey: bytes) -> list[list[Any]] | None:
        found = self.lookup(namespace)
        if found is None:
            return None
        return get_dots(self.txn, self.replica._state, found[0], ekey)

    def count(self, namespace: str) -> int:
        found = self.lookup(namespace)
        if found is None:
            return 0
        n: int = self._run(LocalWrite._count, found[0])
        return n

    def _count(self, ns_id: int) -> int:
        self._writer.flush()  # bucket counts are summed in memory until flushed
        return count_live(self.txn, self.replica._bucketdb, ns_id)

    def scan(
        self, namespace: str, after: bytes | None, limit: int
    ) -> list[tuple[layout.Buf, Any, list[list[Any]]]]:
        found = self.lookup(namespace)
        if found is None:
            return []
        return scan_chunk(self.txn, self.replica._state, found[0], after, limit)


_PUT = LocalWrite._put
_ADD = LocalWrite._add
