"""msgpack encoding of CRDT values and the strict decoding of untrusted bytes.

Rule: every byte that comes from the network or from disk goes through :func:`unpack`
and then a typed decoder here or in ``crdtstore.sync.messages``. Any malformed input,
of whatever kind, raises :class:`~crdtstore.errors.DecodeError` and nothing else; a
decoder never returns a value that breaks an invariant of the types it builds (every
live dot is in its value's context, no dot is live at two keys, keys are valid keys).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, TypeVar

import msgpack

from crdtstore.crdt import CRDT_TYPES, CausalContext, Dot, DotMap, LWWMap, ORSet, check_key
from crdtstore.crdt.dotmap import MAX_INT_KEY, MIN_INT_KEY
from crdtstore.crdt.dots import new_dot
from crdtstore.errors import DecodeError, Error
from crdtstore.keyhash import dot_packer, hash_key_encoding

FORMAT_VERSION = 3
"""The wire format this node writes. 2: a dot cloud carries a run of consecutive seqs of
one replica as one item, ``[replica, first, last]`` (see :func:`encode_cloud`). 3: a key
hash's first byte hashes the key's encoding less its last byte or two digits
(``fingerprint.key_hash``), which moves keys between key-hash ranges."""
READ_VERSIONS = (1, 2, 3)
"""The formats this node reads. A version-1 message is a version-2 one without runs, and
a version-2 message one of version 3 but for its key-hash ranges: the delta logs of older
directories hold batches of both, and serve them to peers as they are."""
KEY_ORDER_VERSION = 3
"""The first format whose key-hash ranges mean this node's :func:`fingerprint.key_hash`: a
range message of an older one names other keys, and is refused."""
MAX_SEQ = (1 << 63) - 1
MAX_REPLICA_ID_LEN = 128

T = TypeVar("T")

LWW_MAP = LWWMap.type_name
"""The type name of an LWW-map namespace, as stored and as the wire carries it: the name
every module compares with (the class attribute is its one definition)."""
OR_SET = ORSet.type_name
"""The type name of an OR-Set namespace (see :data:`LWW_MAP`)."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what a decoder accepts; each one a named setting, not a literal."""

    max_bytes: int = 64 * 1024 * 1024
    """Largest encoded message accepted."""
    max_depth: int = 32
    """Deepest nesting of arrays and maps (for the messages whose shape the typed readers
    check; the values they carry are held to :data:`MAX_VALUE_DEPTH` instead)."""
    max_container_len: int = 1_000_000
    """Most items in one array or map."""
    max_str_len: int = 16 * 1024 * 1024
    """Longest string, in bytes."""
    max_bin_len: int = 64 * 1024 * 1024
    """Longest binary blob."""


DEFAULT_LIMITS = DecodeLimits()

MAX_CLOUD_DOTS = DEFAULT_LIMITS.max_container_len
"""Most dots a context from the wire may hold in its cloud. A run is three numbers on the
wire but a Dot each in memory; before runs, the array's own bound gave this one."""
STORED_MAX_CLOUD_DOTS = 1 << 24
"""The same for a context read from disk: this node's own, which may have gathered more
while it repaired a long gap. Past it, the row is corrupt (16M Dots is ~2 GiB)."""

MAX_VALUE_DEPTH = 26
"""Deepest nesting of one stored value (a key's payload), wherever it travels: in a delta
batch, a repair or a range reply, which hold it at different depths. Node settings may
only lower it (``max_value_depth``)."""


def pack(obj: Any) -> bytes:
    try:
        packed: bytes = thread_packer().pack(obj)  # it resets itself when it raises
        return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not accepted")


def unpack(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS, nesting: bool = True) -> Any:
    """Decode untrusted msgpack bytes within ``limits``; raise only DecodeError.

    ``nesting=False`` leaves the depth check to the caller: for messages whose every field
    a typed reader checks, and whose opaque values :func:`decode_value` checks itself."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds max_bytes={limits.max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_reject_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises a zoo (ValueError, StackError, TypeError, ...)
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    if nesting:
        check_depth(obj, limits.max_depth)
    return obj


def check_depth(obj: Any, max_depth: int) -> None:
    # Only containers go on the stack: most of a message is scalars, and visiting each
    # one as a stack item was most of the cost of decoding a large reply.
    if type(obj) is dict:
        children: Any = obj.values()
        for key in obj:
            if type(key) is list or type(key) is dict:
                raise DecodeError("map keys must be scalars")
    elif type(obj) is list:
        children = obj
    else:
        return
    # Most values are one flat list or map (a record): no stack for them.
    for child in children:
        if type(child) is list or type(child) is dict:
            break
    else:
        if max_depth < 1:
            raise DecodeError(f"nesting deeper than max_depth={max_depth}")
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise DecodeError(f"nesting deeper than max_depth={max_depth}")
        if type(item) is dict:
            for key in item:
                if type(key) is list or type(key) is dict:
                    raise DecodeError("map keys must be scalars")
            children = item.values()
        else:
            children = item
        inner = depth + 1
        stack.extend([(c, inner) for c in children if type(c) is list or type(c) is dict])


# -- typed field readers, for this module and the protocol messages ------------------------


def expect(obj: Any, kind: type[T] | tuple[type, ...], what: str) -> T:
    if isinstance(obj, bool) and kind is int:
        raise DecodeError(f"{what}: expected int, got bool")
    if not isinstance(obj, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DecodeError(f"{what}: expected {name}, got {type(obj).__name__}")
    return obj  # type: ignore[return-value]  # isinstance of a tuple of types cannot narrow to T


def expect_list(obj: Any, what: str, length: int | None = None) -> list[Any]:
    items: list[Any] = expect(obj, list, what)
    if length is not None and len(items) != length:
        raise DecodeError(f"{what}: expected {length} items, got {len(items)}")
    return items


def expect_int(obj: Any, what: str, low: int = 0, high: int = MAX_SEQ) -> int:
    value: int = expect(obj, int, what)
    if not low <= value <= high:
        raise DecodeError(f"{what}: {value} outside [{low}, {high}]")
    return value


def expect_replica(obj: Any, what: str = "replica id") -> str:
    rid: str = expect(obj, str, what)
    if not rid or len(rid) > MAX_REPLICA_ID_LEN:
        raise DecodeError(f"{what}: length {len(rid)} outside [1, {MAX_REPLICA_ID_LEN}]")
    return rid


def expect_key(obj: Any, what: str = "key") -> Any:
    try:
        return check_key(obj)
    except Error as exc:
        raise DecodeError(f"{what}: {exc}") from exc


def decode_list(obj: Any, what: str, item: Callable[[Any], T]) -> list[T]:
    return [item(x) for x in expect_list(obj, what)]


# -- causal contexts and CRDT values ---------------------------------------------------------


def encode_context(ctx: CausalContext) -> list[Any]:
    by_replica: dict[str, list[int]] = {}
    for replica, seq in ctx.cloud:
        seqs = by_replica.get(replica)
        if seqs is None:
            by_replica[replica] = [seq]
        else:
            seqs.append(seq)
    cloud: list[list[Any]] = []
    for replica in sorted(by_replica):
        encode_cloud(replica, sorted(by_replica[replica]), cloud)
    return [dict(ctx.vv), cloud]


def encode_cloud(replica: str, seqs: list[int], out: list[list[Any]]) -> None:
    """Append to ``out`` the cloud items of ``replica``'s seqs ``seqs`` (ascending,
    distinct): ``[replica, first, last]`` for each run of consecutive seqs, ``[replica,
    seq]`` for a seq alone. Runs are the usual shape: a batch that rewrites the keys one
    earlier batch wrote observed that batch's whole run, and a node that missed a batch
    holds the ones after it."""
    if not seqs:
        return
    start = prev = seqs[0]
    if seqs[-1] - start == len(seqs) - 1:  # one run (or one seq): no loop
        out.append([replica, start] if len(seqs) == 1 else [replica, start, seqs[-1]])
        return
    for seq in seqs:
        if seq > prev + 1:
            out.append([replica, start] if start == prev else [replica, start, prev])
            start = seq
        prev = seq
    out.append([replica, start] if start == prev else [replica, start, prev])


def decode_context(obj: Any, max_dots: int = MAX_CLOUD_DOTS) -> CausalContext:
    """A context from its wire form; a cloud of more than ``max_dots`` dots, runs counted
    dot by dot, is refused."""
    vv_obj, cloud_obj = expect_list(obj, "context", 2)
    vv = {
        expect_replica(r): expect_int(s, "version vector seq")
        for r, s in expect(vv_obj, dict, "version vector").items()
    }
    cloud: list[Dot] = []
    for d in expect_list(cloud_obj, "dot cloud"):
        # decode_dot, inlined for the well-formed case.
        if (
            type(d) is list
            and len(d) == 2
            and type(d[0]) is str
            and 0 < len(d[0]) <= MAX_REPLICA_ID_LEN
            and type(d[1]) is int
            and 1 <= d[1] <= MAX_SEQ
        ):
            cloud.append(Dot(d[0], d[1]))
        elif type(d) is list and len(d) == 3:
            replica = expect_replica(d[0])
            first = expect_int(d[1], "run's first seq", 1)
            last = expect_int(d[2], "run's last seq", first + 1)
            top = vv.get(replica, 0)
            if first <= top + 1:  # the run extends the contiguous part: no Dot for it
                vv[replica] = max(top, last)
                continue
            if len(cloud) + (last - first + 1) > max_dots:
                raise DecodeError(f"dot cloud holds more than {max_dots} dots")
            cloud.extend(map(new_dot, zip(repeat(replica), range(first, last + 1))))
        else:
            cloud.append(decode_dot(d))
    if len(cloud) > max_dots:
        raise DecodeError(f"dot cloud holds more than {max_dots} dots")
    return CausalContext(vv, cloud)


def decode_dot(obj: Any) -> Dot:
    replica, seq = expect_list(obj, "dot", 2)
    return Dot(expect_replica(replica), expect_int(seq, "dot seq", 1))


def encode_value(value: DotMap[Any]) -> list[Any]:
    """``[type, is_delta, context, [[key, [[replica, seq(, timestamp, value)], ...]], ...]]``."""
    stamped = isinstance(value, LWWMap)
    entries = [
        [key, [[d.replica, d.seq, *p] if stamped else [d.replica, d.seq] for d, p in e.items()]]
        for key, e in value.entries.items()
    ]
    return [value.type_name, value.is_delta, encode_context(value.context), entries]


Row = tuple[Any, bytes, bytes, list[list[Any]], bytes]
"""One checked entry in the form a replica stores it: ``(key, encoded key, position,
dots, entry hash)``. ``position`` is the key's place in reconciliation order
(``fingerprint.encoded_position``: the first byte of its ``key_hash``, then the encoded
key; a state row's key after its namespace); ``dots`` are sorted by (replica, seq), each
``[replica, seq(, timestamp, value)]`` as msgpack gave them (a stored row's dots); the
entry hash is
``fingerprint.entry_hash`` of the key with those dots, as 8 bytes (zeros for none).
(The hashes are :mod:`crdtstore.sync.fingerprint`'s; tests/codec holds them equal.)"""

_NO_ENTRY = bytes(8)
_END = b"\xff" * 9  # after every 8-byte key hash
_local = threading.local()


def thread_packer() -> msgpack.Packer:
    """This thread's msgpack packer (``use_bin_type``, resetting after each call). A
    packer is not safe to share between threads, and building one costs more than most
    of what it packs: each allocates a 256 KiB buffer, which the C heap hands back to the
    kernel when it is freed (two ``brk`` calls and fresh zeroed pages per packer)."""
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def key_packer() -> Callable[[Any], bytes]:
    """This thread's packer of keys (:func:`thread_packer`'s ``pack``)."""
    try:
        pack: Callable[[Any], bytes] = _local.pack
    except AttributeError:
        pack = _local.pack = thread_packer().pack
    return pack


def encode_key(key: Any) -> bytes:
    """The canonical bytes of a key: its msgpack encoding."""
    return key_packer()(key)


def _dot_order(d: list[Any]) -> tuple[str, int]:
    return d[0], d[1]


def check_entries(
    items: Any,
    stamped: bool,
    *,
    context: CausalContext | None = None,
    base: CausalContext | None = None,
    bounds: tuple[int, int] | None = None,
    newest: list[int] | None = None,
    run: tuple[str, int, int] | None = None,
) -> Iterator[Row]:
    """Each entry ``[key, [dot, ...]]`` of ``items`` (msgpack's lists), checked, as a
    :data:`Row`; raises DecodeError at the first one that breaks a rule.

    Rules: valid keys, each once; dots well formed, none live at two keys; timestamps in
    bounds; values no deeper than :data:`MAX_VALUE_DEPTH`. Then either every dot is in
    ``context`` (a value's own), or only the dots ``base`` holds are kept (a shipped
    range, whose sender gained the others after its snapshot). With ``bounds`` ``(lo,
    hi)``: every key hashes into ``[lo, hi)`` and the keys come in reconciliation order.
    ``newest``, if given, gets the latest timestamp appended once every entry is read.
    ``run`` ``(replica, first, last)``: dots ``context`` holds besides its own (a delta
    batch's own dots, which its wire form leaves implied).

    A generator, so a replica can check each entry in the loop that writes it."""
    width = 4 if stamped else 2
    cvv, ccloud = (context.vv, context.cloud) if context is not None else ({}, frozenset())
    bvv, bcloud = (base.vv, base.cloud) if base is not None else ({}, frozenset())
    restrict = base is not None
    run_replica, run_first, run_last = run if run is not None else (None, 0, -1)
    if bounds is None:
        lo_b, hi_b, seen = b"", _END, set()
    else:
        lo_b = bounds[0].to_bytes(8, "big")
        hi_b = bounds[1].to_bytes(8, "big") if bounds[1] < 1 << 64 else _END
        lo_top, hi_top = lo_b[:1], hi_b[:1]  # a key in a bucket strictly between is inside
    owner: set[tuple[str, int]] = set()
    previous = b""
    latest = 0
    pack = key_packer()
    packers: dict[str, tuple[bytes, Callable[[bytes, int], bytes]]] = {}  # keyhash.dot_packer's
    # Once per entry (a bootstrap checks millions): each check is inline on the exact
    # types msgpack produces; anything unusual goes through the expect_* readers, which
    # raise the precise error.
    for item in expect_list(items, "entries"):
        if type(item) is list and len(item) == 2:
            key, dots = item
        else:
            key, dots = expect_list(item, "entry", 2)
        kt = type(key)
        if not (kt is str or kt is bytes or (kt is int and MIN_INT_KEY <= key <= MAX_INT_KEY)):
            key = expect_key(key)
        ekey = pack(key)
        h, bucket, _ = hash_key_encoding(ekey)  # the entry hash continues h
        position = bucket + ekey  # fingerprint.encoded_position
        if bounds is None:
            if position in seen:
                raise DecodeError(f"key {key!r} appears twice")
            seen.add(position)
        else:
            if position <= previous:
                raise DecodeError(f"shipped key {key!r} is out of order or repeated")
            previous = position
            if not lo_top < bucket < hi_top:  # a bucket the range may cut: the hash decides
                kdig = bucket + h.digest()[1:]  # fingerprint.key_hash, as bytes
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
                raise DecodeError(f"dot {Dot(replica, seq)} is live at two keys")
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
                if ts > latest:
                    latest = ts
            if restrict:
                if seq <= bvv.get(replica, 0) or dot in bcloud:
                    kept.append(raw)
            elif (
                (replica == run_replica and run_first <= seq <= run_last)
                or seq <= cvv.get(replica, 0)
                or dot in ccloud
            ):
                kept.append(raw)
            else:
                raise DecodeError(f"live dot {Dot(replica, seq)} is not in the value's context")
        if not kept:
            yield key, ekey, position, kept, _NO_ENTRY
            continue
        if len(kept) > 1:
            kept.sort(key=_dot_order)
        for d in kept:  # the entry hash continues the key's
            tag_pack = packers.get(d[0])
            if tag_pack is None:
                tag_pack = packers[d[0]] = dot_packer(d[0])
            h.update(tag_pack[1](tag_pack[0], d[1]))
        yield key, ekey, position, kept, h.digest()
    if newest is not None:
        newest.append(latest)


def decode_value_head(
    obj: Any, expected_type: str | None = None
) -> tuple[type[DotMap[Any]], bool, CausalContext, Any]:
    """``(type, is_delta, context, entries unchecked)`` of an encoded value."""
    type_obj, delta_obj, ctx_obj, entries_obj = expect_list(obj, "crdt value", 4)
    cls = CRDT_TYPES.get(type_obj) if isinstance(type_obj, str) else None
    if cls is None:
        raise DecodeError(f"unknown crdt type {type_obj!r}")
    if expected_type is not None and type_obj != expected_type:
        raise DecodeError(f"expected a {expected_type} value, got {type_obj}")
    is_delta: bool = expect(delta_obj, bool, "is_delta")
    return cls, is_delta, decode_context(ctx_obj), entries_obj


def decode_value(obj: Any, expected_type: str | None = None) -> DotMap[Any]:
    cls, is_delta, ctx, entries = decode_value_head(obj, expected_type)
    rows = check_entries(entries, cls is LWWMap, context=ctx)
    return value_of_rows(cls, rows, ctx, is_delta)


def value_of_rows(
    cls: type[DotMap[Any]], rows: Iterable[Row], context: CausalContext, is_delta: bool
) -> DotMap[Any]:
    """The CRDT value of checked rows (a state refuses an empty entry)."""
    entries: dict[Any, dict[Dot, Any]] = {}
    if cls is LWWMap:
        for key, _, _, dots, _ in rows:
            if not dots and not is_delta:
                raise DecodeError(f"state (not delta) has an empty entry for {key!r}")
            entries[key] = {Dot(d[0], d[1]): (d[2], d[3]) for d in dots}
    else:
        for key, _, _, dots, _ in rows:
            if not dots and not is_delta:
                raise DecodeError(f"state (not delta) has an empty entry for {key!r}")
            entries[key] = dict.fromkeys([Dot(d[0], d[1]) for d in dots])
    return cls(entries, context, is_delta=is_delta)
