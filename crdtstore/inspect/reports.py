"""What ``crdt-inspect`` reports of a :class:`~.snapshot.Snapshot`: summary, dump, show
and diff, as plain JSON-able dicts (rendered by :mod:`.render`).

Invariants: ``--json`` output is plain and stable for scripts: bytes become
``{"bytes": "<hex>"}``, non-string map keys their ``repr``. A corrupt row is reported
in its place (namespace, encoded key, what is wrong) and the rest still listed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from crdtstore.crdt import CausalContext, Dot
from crdtstore.crdt.hlc import logical, physical_ms
from crdtstore.errors import DecodeError
from crdtstore.inspect.snapshot import Snapshot, read_row
from crdtstore.storage import layout
from crdtstore.storage.reads import count_live
from crdtstore.storage.rows import winning_value


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): to_json(v) for k, v in value.items()}
    return value


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time."""
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context_json(ctx: CausalContext) -> dict[str, Any]:
    return {"vv": dict(sorted(ctx.vv.items())), "cloud": [list(d) for d in sorted(ctx.cloud)]}


def dots_json(dots: list[list[Any]]) -> list[dict[str, Any]]:
    out = []
    for d in sorted(dots, key=lambda d: (d[0], d[1])):
        item: dict[str, Any] = {"replica": d[0], "seq": d[1]}
        if len(d) == 4:
            item.update(
                timestamp=d[2],
                wall_ms=physical_ms(d[2]),
                time=iso_ms(physical_ms(d[2])),
                logical=logical(d[2]),
                value=to_json(d[3]),
            )
        out.append(item)
    return out


def summary(snap: Snapshot) -> dict[str, Any]:
    fmt = snap.meta(layout.META_FORMAT)
    node_id = snap.meta(layout.META_NODE_ID)
    info, stat = snap.env.info(), snap.env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    namespaces = {}
    for name, (ns_id, type_name) in sorted(snap.namespaces().items()):
        size = sum(len(rkey) + len(data) for rkey, data in snap.raw_rows(ns_id))
        namespaces[name] = {
            "type": type_name,
            "entries": count_live(snap.txn, snap.dbs["buckets"], ns_id),
            "bytes": size,
            "context": context_json(snap.context(ns_id)),
            "log": snap.log(ns_id),
        }
    with snap.txn.cursor(db=snap.dbs["journal"]) as cur:
        jfirst = layout.read_u64(cur.key()) if cur.first() else 0
        jlast = layout.read_u64(cur.key()) if cur.last() else 0
    return {
        "node_id": None if node_id is None else bytes(node_id).decode(),
        "format_version": None if fmt is None else layout.read_u64(fmt),
        "namespaces": namespaces,
        "journal": {"first": jfirst, "last": jlast},
        "tables": snap.table_bytes(),
        "map": {
            "map_size": info["map_size"],
            "used_bytes": used,
            "fill_pct": round(100.0 * used / info["map_size"], 2),
        },
    }


def namespace(snap: Snapshot, name: str) -> tuple[int, str]:
    found = snap.namespaces().get(name)
    if found is None:
        raise SystemExit(f"crdt-inspect: no namespace {name!r}")
    return found


def dump(snap: Snapshot, name: str) -> dict[str, Any]:
    """Every entry; a corrupt row is listed by its encoded key and what is wrong with it
    (``{"key": {"bytes": hex}, "error": ...}``), and the dump goes on."""
    ns_id, type_name = namespace(snap, name)
    stamped = type_name == "lww_map"
    entries = []
    for rkey, data in snap.raw_rows(ns_id):
        try:
            key, dots = read_row(rkey, data, stamped)
        except DecodeError as exc:
            error = f"namespace {name!r}: {exc}"
            entries.append({"key": to_json(bytes(layout.row_ekey(rkey))), "error": error})
            continue
        item: dict[str, Any] = {"key": to_json(key), "dots": dots_json(dots)}
        if stamped:
            item["value"] = to_json(winning_value(dots))
        entries.append(item)
    return {"namespace": name, "type": type_name, "entries": entries}


def show(snap: Snapshot, name: str, key: Any) -> dict[str, Any]:
    ns_id, type_name = namespace(snap, name)
    ekey = layout.pack_key(key)
    rkey = layout.row_key(ns_id, layout.hash_encoded_key(ekey), ekey)
    data = snap.txn.get(rkey, db=snap.dbs["state"])
    out: dict[str, Any] = {"namespace": name, "type": type_name, "key": to_json(key)}
    stamped = type_name == "lww_map"
    try:
        dots = read_row(rkey, bytes(data), stamped)[1] if data is not None else []
    except DecodeError as exc:
        out.update(present=True, error=f"namespace {name!r}: {exc}")
        return out
    out.update(present=bool(dots), dots=dots_json(dots))
    if stamped:
        out["value"] = to_json(winning_value(dots)) if dots else None
    return out


def diff(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Entries whose live dots differ, each dot explained from the other side's context."""
    out = []
    ns_a, ns_b = a.namespaces(), b.namespaces()
    for name in sorted(ns_a.keys() | ns_b.keys()):
        sides = []
        for snap, names in ((a, ns_a), (b, ns_b)):
            found = names.get(name)
            rows = (
                {}
                if found is None
                else {
                    layout.pack_key(k): (k, d)
                    for k, d in snap.rows(found[0], found[1] == "lww_map")
                }
            )
            ctx = CausalContext() if found is None else snap.context(found[0])
            sides.append((rows, ctx))
        (rows_a, ctx_a), (rows_b, ctx_b) = sides
        for ekey in sorted(rows_a.keys() | rows_b.keys()):
            key = (rows_a.get(ekey) or rows_b[ekey])[0]
            dots_a = {Dot(d[0], d[1]) for d in rows_a.get(ekey, (None, []))[1]}
            dots_b = {Dot(d[0], d[1]) for d in rows_b.get(ekey, (None, []))[1]}
            if dots_a == dots_b:
                continue
            reasons = []
            for here, other, other_ctx, side, other_side in (
                (dots_a, dots_b, ctx_b, "a", "b"),
                (dots_b, dots_a, ctx_a, "b", "a"),
            ):
                for dot in sorted(here - other):
                    why = (
                        f"removed on {other_side}"
                        if dot in other_ctx
                        else f"not yet seen by {other_side}"
                    )
                    reasons.append({"live_on": side, "dot": list(dot), "reason": why})
            out.append({"namespace": name, "key": to_json(key), "dots": reasons})
    return {"differences": out}
