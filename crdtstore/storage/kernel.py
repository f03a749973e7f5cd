"""The byte-level kernel of state rows: every write of a row goes through these functions.

A local put and a local add (:mod:`crdtstore.storage.local`), a received batch's join, a
range's join and the insert of received keys that have no row
(:mod:`crdtstore.storage.receive`) all build, join and account for rows here. The pure
values in :mod:`crdtstore.crdt` are the specification; this is their form on dots as a
row stores them (msgpack lists ``[replica, seq]``, or ``[replica, seq, timestamp,
value]`` in an LWW-map), without Dot objects or entry maps.
tests/storage/test_storage_kernel.py holds each function to the pure values (Hypothesis:
same inputs, same rows and values).

Invariants:

- A row's value is ``entry_digest(ekey, dots) + msgpack(dots)``, the dots in (replica,
  seq) order and never none: a key with no live dot has no row (:func:`pack_row`).
- An own row (:func:`write_own`, :func:`write_stamped`) is the row of one dot of the
  writer, whatever the key held before: what ``ORSet.add`` and ``LWWMap.put`` leave. A
  put's timestamp is above every timestamp of the dots it replaces.
- :func:`join_dots` is ``crdt.join_entry`` and :func:`unseen_dots` is ``join_entry`` with
  nothing held; :func:`winning_dot` is ``lwwmap.winner`` (timestamp, then writer).
- A bucket's accumulator ``[xor, count change]`` moves by exactly the entry hashes and
  rows a write replaces (:func:`tally`, called by every write of a row);
  :class:`~crdtstore.storage.rows.RowWriter` adds the accumulators to the bucket rows at
  the end of the transaction.

The hot functions are module-level, bind what they use to locals, and do the usual case
(one dot) without a loop: a transaction of 1,000 puts calls them 1,000 times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lmdb

from crdtstore.crdt import CausalContext
from crdtstore.crdt.hlc import MAX_TIMESTAMP
from crdtstore.errors import DecodeError, InvalidValue
from crdtstore.keyhash import dot_packer, entry_digest
from crdtstore.storage.layout import checked_dots, pack, read_row_hash, row_dots

Dots = list[list[Any]]
"""A row's dots as msgpack gives them: ``[replica, seq(, timestamp, value)]`` each."""

ENTRY_HEAD = b"\x92"
"""msgpack's header of a pair: an entry on the wire is ``[key, dots]``, the key's encoding
and a row's dots after this (a row holds both in their wire form)."""
NO_DOTS = b"\x90"
"""msgpack ``[]``: the dots of a delta's entry whose dots were all removed."""


def dot_order(d: list[Any]) -> tuple[str, int]:
    return d[0], d[1]


def lww_order(d: list[Any]) -> tuple[int, str]:
    """``lwwmap.winner``'s order on a stored dot: timestamp, then writer."""
    return d[2], d[0]


# -- rows -------------------------------------------------------------------------------------


def pack_row(ekey: bytes, dots: Dots) -> bytes:
    """The row of the key encoded ``ekey`` holding ``dots`` (not none; sorted in place)."""
    if len(dots) > 1:
        dots.sort(key=dot_order)
    return entry_digest(ekey, dots) + pack(dots)


class OwnDots:
    """The bytes one writer's own dots are made of, in its rows and entry hashes; holds
    the writer's msgpack packer, so it belongs to one thread (one write transaction)."""

    __slots__ = ("dot", "lww_head", "pack", "set_head", "tag")

    def __init__(self, me: str, pack: Callable[[Any], bytes]) -> None:
        self.tag, self.dot = dot_packer(me)
        """``dot(tag, seq)``: what the dot ``(me, seq)`` adds to an entry hash."""
        self.pack = pack
        self.lww_head = b"\x91\x94" + pack(me)
        """``[[me, `` of an LWW-map row's dots (four fields), before the seq."""
        self.set_head = b"\x91\x92" + pack(me)
        """``[[me, `` of an OR-Set row's dots (two fields), before the seq."""


def write_own(
    txn: lmdb.Transaction, rkey: bytes, h: Any, own: OwnDots, seq: int
) -> tuple[bytes | None, Dots, bytes, bytes]:
    """Replace the OR-Set row ``rkey`` (its key hashed by ``h``) by the own dot ``seq``:
    ``(old row or None, its checked dots, new entry hash, new dots)``, the new row being
    the hash and then the dots. On a corrupt old row it stays as it was (DecodeError)."""
    h.update(own.dot(own.tag, seq))
    digest: bytes = h.digest()
    dots = own.set_head + own.pack(seq)
    # One lookup for the old row and the write (LMDB's replace): the new row does not
    # depend on the old one.
    old: bytes | None = txn.replace(rkey, digest + dots)  # type: ignore[assignment]  # buffers=False
    if old is None:
        return None, [], digest, dots
    try:
        return old, checked_dots(row_dots(old), stamped=False), digest, dots
    except DecodeError:
        txn.put(rkey, old)
        raise


def write_stamped(
    txn: lmdb.Transaction, rkey: bytes, h: Any, own: OwnDots, seq: int, ts: int, value: bytes
) -> tuple[bytes | None, Dots, bytes, bytes, int]:
    """Replace the LWW-map row ``rkey`` by the own dot ``seq`` stamped ``ts`` (``value``
    packed) or, if the row held a later stamp (another process's clock ran ahead), one
    more than it: ``(old row or None, its checked dots, new entry hash, new dots,
    stamp)``. On a corrupt old row, or a stamp that would overflow, the row stays as it
    was (DecodeError, InvalidValue). The stamp is always a uint64 (``0xcf``), as msgpack
    packs any stamp after 1970 plus a minute: a row is the same bytes whatever the clock
    said."""
    h.update(own.dot(own.tag, seq))
    digest: bytes = h.digest()  # a stamp is not hashed: the digest stays if the stamp moves
    head = own.lww_head + own.pack(seq) + b"\xcf"
    dots = head + ts.to_bytes(8, "big") + value
    # Written before the old row is read (one lookup for both), so rewritten in the rare
    # case its stamp is not above the old dots'.
    old: bytes | None = txn.replace(rkey, digest + dots)  # type: ignore[assignment]  # buffers=False
    if old is None:
        return None, [], digest, dots, ts
    try:
        held = row_dots(old)
        # checked_dots of the usual row, one dot, inlined; any other goes through it.
        single = held[0] if len(held) == 1 else None
        if not (
            type(single) is list
            and len(single) == 4
            and type(single[0]) is str
            and type(single[1]) is int
            and type(single[2]) is int
        ):
            checked_dots(held, stamped=True)
            single = None
        floor = (single[2] if single else max([d[2] for d in held])) + 1
        if floor > MAX_TIMESTAMP and ts < floor:
            raise InvalidValue(f"hybrid clock overflow at {floor}")
    except (DecodeError, InvalidValue):
        txn.put(rkey, old)
        raise
    if ts < floor:
        ts = floor
        dots = head + ts.to_bytes(8, "big") + value
        txn.put(rkey, digest + dots)
    return old, held, digest, dots, ts


def tally(buckets: dict[int, list[int]], code: int, old: bytes | None, new: bytes | None) -> None:
    """Account in ``buckets[code]`` (``[xor of entry hashes, change of count]``) for a row
    ``old`` replaced by ``new`` (None: no row) in the bucket ``code``
    (``layout.bucket_base``). A row may be given by its entry hash alone."""
    acc = buckets.get(code)
    if acc is None:
        acc = buckets[code] = [0, 0]
    if old is None:
        if new is not None:
            acc[0] ^= read_row_hash(new)[0]
            acc[1] += 1
    elif new is None:
        acc[0] ^= read_row_hash(old)[0]
        acc[1] -= 1
    else:
        acc[0] ^= read_row_hash(old)[0] ^ read_row_hash(new)[0]


# -- joins ------------------------------------------------------------------------------------


def join_dots(
    dots: Dots,
    my_ctx: CausalContext,
    theirs: Dots,
    their_ctx: CausalContext,
    run: tuple[str, int, int] | None,
) -> Dots | None:
    """``join_entry`` of a row's ``dots`` (seen by ``my_ctx``) and received dots
    ``theirs`` (seen by ``their_ctx`` plus ``run``, a batch's own dots ``(origin, first,
    last)``): the dots the row holds after, unsorted, or None when they are ``dots``.
    ``theirs`` itself when it replaces a row of one dot by one (the usual update)."""
    tvv, tcloud = their_ctx.vv, their_ctx.cloud
    rr, r_first, r_last = run if run is not None else ("", 0, -1)
    if len(dots) == 1 and len(theirs) == 1:
        # One dot here, which their context covers, replaced by one we have not seen.
        mine, got = dots[0], theirs[0]
        r, s = mine[0], mine[1]
        if (
            (r != got[0] or s != got[1])
            and (s <= tvv.get(r, 0) or (r == rr and r_first <= s <= r_last) or (r, s) in tcloud)
            and got[1] > my_ctx.vv.get(got[0], 0)
            and (got[0], got[1]) not in my_ctx.cloud
        ):
            return theirs
    live = {(d[0], d[1]) for d in theirs}
    kept = [
        d
        for d in dots
        if (d[0], d[1]) in live
        or (
            d[1] > tvv.get(d[0], 0)
            and (d[0], d[1]) not in tcloud
            and not (d[0] == rr and r_first <= d[1] <= r_last)
        )
    ]
    held = {(d[0], d[1]) for d in dots}
    vv, cloud = my_ctx.vv, my_ctx.cloud
    added = [
        d
        for d in theirs
        if (d[0], d[1]) not in held and d[1] > vv.get(d[0], 0) and (d[0], d[1]) not in cloud
    ]
    if not added and len(kept) == len(dots):
        return None
    return kept + added


def unseen_dots(theirs: Dots, my_ctx: CausalContext) -> Dots:
    """``join_entry`` of nothing held here and received dots ``theirs``: those
    ``my_ctx`` has not seen (a dot it saw was removed here)."""
    vv, cloud = my_ctx.vv, my_ctx.cloud
    return [d for d in theirs if d[1] > vv.get(d[0], 0) and (d[0], d[1]) not in cloud]


# -- what a reader sees -----------------------------------------------------------------------


def winning_dot(dots: Dots) -> list[Any]:
    """The dot of an LWW row (``dots`` not none) whose value a reader sees."""
    return dots[0] if len(dots) == 1 else max(dots, key=lww_order)


def winning_value(dots: Dots) -> Any:
    """The value a reader sees in an LWW row (``dots`` non-empty, a row's); DecodeError if
    they are not dots (a corrupt row: readers get the project's error, not a TypeError).
    Every read of an LWW key calls it: :func:`winning_dot` is inlined."""
    try:
        return dots[0][3] if len(dots) == 1 else max(dots, key=lww_order)[3]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise DecodeError(f"corrupt state row: {dots!r:.80} are not dots ({exc})") from exc
