"""A reconciliation's shipped entries, checked where they are applied.

Rule: nothing of a range reply's entries reaches a replica's state but through
:meth:`ShippedEntries.checked`, which holds them to every rule
:func:`crdtstore.codec.decode_value` holds a value to (types and bounds of keys, dots,
timestamps; value depth; a dot live at one key only) and to those of a shipped range:

- each key hashes into the range, and the keys come in reconciliation order (key hash,
  then encoded key), each once;
- only the dots the session's base context holds are taken (the sender gained the others
  after its snapshot; their deltas, which carry what they replaced, bring them later);
- no LWW timestamp is further ahead of local time than ``max_drift_ms``.

Why the checks wait for the apply: a bootstrap receives every entry of a namespace. It
used to check each reply on arrival (building Dot objects and entry maps, dropped at once
to bound memory), then read the reply again to write its rows: each entry was decoded,
hashed and checked twice, half of a newcomer's time. Now a reply's entries travel as one
binary field, the session keeps them as those bytes, and the replica checks an entry in
the loop that writes its row. A bad entry raises (:class:`DecodeError`,
:class:`ClockDriftError`) inside the replica's transaction, which then aborts: the
session's apply changes nothing, and the engine gives the session up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from crdtstore.codec import (
    MAX_REPLICA_ID_LEN,
    MAX_SEQ,
    MAX_VALUE_DEPTH,
    check_depth,
    decode_dot,
    expect_int,
    expect_key,
    expect_list,
    unpack,
)
from crdtstore.crdt import CRDT_TYPES, CausalContext, Dot, DotMap, LWWMap, check_drift
from crdtstore.crdt.dotmap import MAX_INT_KEY, MIN_INT_KEY
from crdtstore.errors import DecodeError
from crdtstore.sync.fingerprint import HASH_SPACE, encode_key
from crdtstore.sync.messages import PackedRange

CheckedEntry = tuple[Any, bytes, bytes, list[list[Any]], bytes]
"""``(key, encoded key, position, dots, entry hash)``: ``position`` is the key's place in
reconciliation order, ``key_hash`` as 8 big-endian bytes then the encoded key (a state
row's key after its namespace); ``dots`` are the base's, sorted by (replica, seq), each
``[replica, seq(, timestamp, value)]`` as msgpack gave them (a stored row's form); the
entry hash is ``fingerprint.entry_hash`` of the key with those dots, as 8 bytes."""


_NO_ENTRY = bytes(8)  # fingerprint.entry_hash of an entry with no dot


def _dot_order(d: list[Any]) -> tuple[str, int]:
    return d[0], d[1]


@dataclass(frozen=True, slots=True)
class ShippedEntries:
    """One shipped range's entries as the sender encoded them, and what they are checked
    against: the session's base context, and local time for the clock-drift bound."""

    packed: PackedRange
    base: CausalContext
    now_ms: int
    max_drift_ms: int

    @property
    def type_name(self) -> str:
        return self.packed.type_name

    def checked(self, lo: int, hi: int) -> Iterator[CheckedEntry]:
        """Each entry of the range ``[lo, hi)``, checked, with the dots ``base`` holds.

        Raises DecodeError at the first entry that breaks a rule (ClockDriftError, once
        every entry is read, if a timestamp is too far ahead): a caller writes as it
        iterates, inside a transaction it aborts on the error."""
        packed = self.packed
        if packed.type_name not in CRDT_TYPES:
            raise DecodeError(f"unknown crdt type {packed.type_name!r}")
        items = unpack(packed.data, nesting=False)
        if type(items) is not list or len(items) != packed.count:
            raise DecodeError(f"shipped range does not hold the {packed.count} entries it says")
        stamped = CRDT_TYPES[packed.type_name] is LWWMap
        width = 4 if stamped else 2
        vv, cloud = self.base.vv, self.base.cloud
        owner: set[tuple[str, int]] = set()
        previous = b""
        newest = 0
        # Bounds as key-hash bytes (big-endian, so bytes order is number order).
        lo_b = lo.to_bytes(8, "big")
        hi_b = hi.to_bytes(8, "big") if hi < HASH_SPACE else b"\xff" * 9
        # Once per shipped entry (a bootstrap checks millions): each check is inline on the
        # exact types msgpack produces; anything unusual goes through the expect_* readers,
        # which raise the precise error.
        for item in items:
            if type(item) is list and len(item) == 2:
                key, dots = item
            else:
                key, dots = expect_list(item, "entry", 2)
            kt = type(key)
            if not (kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY)):
                key = expect_key(key)
            ekey = encode_key(key)
            h = blake2b(ekey, digest_size=8)
            kdig = h.digest()  # fingerprint.key_hash, as bytes
            position = kdig + ekey
            if position <= previous:
                raise DecodeError(f"shipped key {key!r} is out of order or repeated")
            previous = position
            if kdig < lo_b or kdig >= hi_b:
                raise DecodeError(f"shipped key {key!r} lies outside its range")
            kept = []
            for raw in dots if type(dots) is list else expect_list(dots, "entry dots"):
                if type(raw) is not list or len(raw) != width:
                    raw = expect_list(raw, "stamped dot" if stamped else "dot", width)
                replica, seq = raw[0], raw[1]
                if not (
                    type(replica) is str
                    and 0 < len(replica) <= MAX_REPLICA_ID_LEN
                    and type(seq) is int
                    and 1 <= seq <= MAX_SEQ
                ):
                    replica, seq = decode_dot(raw[:2])  # raises with the reason
                dot = (replica, seq)
                if dot in owner:
                    raise DecodeError(f"dot {dot} is live at two keys")
                owner.add(dot)
                if stamped:
                    ts, payload = raw[2], raw[3]
                    if type(ts) is not int or not 0 <= ts <= MAX_SEQ:
                        expect_int(ts, "timestamp")  # raises
                    pt = type(payload)
                    if pt is dict or pt is list:
                        # check_depth, after a look for the common flat record or list.
                        for child in payload.values() if pt is dict else payload:
                            if type(child) is list or type(child) is dict:
                                check_depth(payload, MAX_VALUE_DEPTH)
                                break
                    if ts > newest:
                        newest = ts
                if seq <= vv.get(replica, 0) or dot in cloud:
                    kept.append(raw)
            if len(kept) > 1:
                kept.sort(key=_dot_order)
            # fingerprint.entry_hash of the kept dots, continuing the key's hash.
            for d in kept:
                h.update(d[0].encode() + b"\0" + d[1].to_bytes(8, "big"))
            yield key, ekey, position, kept, h.digest() if kept else _NO_ENTRY
        if newest:
            check_drift(newest, self.now_ms, self.max_drift_ms)

    def value(self, lo: int, hi: int) -> DotMap[Any]:
        """The checked entries as a delta with the base context (what a replica joins
        where it already holds rows, and the in-memory replica everywhere)."""
        cls = CRDT_TYPES[self.packed.type_name]
        entries: dict[Any, dict[Dot, Any]]
        if cls is LWWMap:
            entries = {
                key: {Dot(d[0], d[1]): (d[2], d[3]) for d in dots}
                for key, _, _, dots, _ in self.checked(lo, hi)
            }
        else:
            entries = {
                key: dict.fromkeys([Dot(d[0], d[1]) for d in dots])
                for key, _, _, dots, _ in self.checked(lo, hi)
            }
        return cls(entries, self.base, is_delta=True)
