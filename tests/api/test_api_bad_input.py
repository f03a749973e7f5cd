"""Bad API input raises a clear crdtstore error and changes nothing on disk."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from msgpack import ExtType, Timestamp

import crdtstore
from crdtstore import InvalidValue, TypeMismatch, ValueTooLarge
from crdtstore.errors import DecodeError
from crdtstore.inspect import main as inspect_main
from crdtstore.storage import layout


def snapshot(path: Path) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        inspect_main([str(path), "--json"])
    data: dict[str, Any] = json.loads(out.getvalue())
    for ns in data["namespaces"]:
        data.setdefault("dumps", {})[ns] = dump(path, ns)
    data.pop("map")  # the map's fill moves with LMDB's page reuse, not with the state
    return data


def dump(path: Path, ns: str) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        inspect_main([str(path), "dump", ns, "--json"])
    return json.loads(out.getvalue())


class Unpackable:
    pass


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def tuples(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = (value,)
    return value


BAD_CALLS = [
    (
        "value not msgpack-able",
        InvalidValue,
        lambda n: n.lww_map("m").__setitem__("k", Unpackable()),
    ),
    ("set in a value", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", {1, 2})),
    ("int too big for msgpack", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", 1 << 70)),
    ("value too deep", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", deep(40))),
    # Peers' decoder refuses these once packed, which would stall the origin's batches there.
    ("tuples too deep", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", tuples(40))),
    ("tuple as a map key", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", {(1, 2): 3})),
    (
        "list as a nested map key",
        InvalidValue,
        lambda n: n.lww_map("m").__setitem__("k", {"a": [{"b": 1}, {("c",): 2}]}),
    ),
    # msgpack packs these as extension types, which no reader accepts: stored, the key
    # could be neither read nor written again.
    ("ExtType value", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", ExtType(1, b"x"))),
    (
        "ExtType in a list",
        InvalidValue,
        lambda n: n.lww_map("m").__setitem__("k", [1, ExtType(1, b"")]),
    ),
    (
        "ExtType in a map",
        InvalidValue,
        lambda n: n.lww_map("m").__setitem__("k", {"a": ExtType(2, b"")}),
    ),
    ("Timestamp value", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", Timestamp(1))),
    (
        "Timestamp as a map key",
        InvalidValue,
        lambda n: n.lww_map("m").__setitem__("k", {Timestamp(1): 1}),
    ),
    ("value too large", ValueTooLarge, lambda n: n.lww_map("m").__setitem__("k", "x" * 2_000_000)),
    ("float key", InvalidValue, lambda n: n.lww_map("m").__setitem__(1.5, 1)),
    ("tuple key", InvalidValue, lambda n: n.lww_map("m").__setitem__((1, 2), 1)),
    ("bool key", InvalidValue, lambda n: n.or_set("s").add(True)),
    ("None element", InvalidValue, lambda n: n.or_set("s").add(None)),
    ("huge int key", InvalidValue, lambda n: n.or_set("s").add(1 << 64)),
    ("lone surrogate key", InvalidValue, lambda n: n.or_set("s").add("\ud800")),
    ("key too long", ValueTooLarge, lambda n: n.or_set("s").add("k" * 300)),
    ("map key too long", ValueTooLarge, lambda n: n.lww_map("m").__setitem__("k" * 300, 1)),
    ("lone surrogate map key", InvalidValue, lambda n: n.lww_map("m").__setitem__("\ud800", 1)),
    ("lone surrogate value", InvalidValue, lambda n: n.lww_map("m").__setitem__("k", "\udc00")),
    ("or_set named like an lww_map", TypeMismatch, lambda n: n.or_set("m")),
    ("lww_map named like an or_set", TypeMismatch, lambda n: n.lww_map("s")),
    ("empty namespace name", InvalidValue, lambda n: n.lww_map("")),
    ("namespace name too long", InvalidValue, lambda n: n.or_set("n" * 256)),
    ("namespace name not a str", InvalidValue, lambda n: n.or_set(b"bytes")),
    ("float key read", InvalidValue, lambda n: n.lww_map("m")[1.5]),
]


@pytest.mark.parametrize(("what", "error", "call"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_and_changes_nothing(
    tmp_path: Path, what: str, error: type, call: Any
) -> None:
    path = tmp_path / "n"
    with crdtstore.open(path, node_id="n1") as node:
        node.lww_map("m")["k"] = "v"
        node.or_set("s").add("e")
    before = snapshot(path)
    with crdtstore.open(path, node_id="n1") as node:
        with pytest.raises(error):
            call(node)
        with pytest.raises(error), node.transaction():  # inside a transaction, too
            call(node)
    assert snapshot(path) == before


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", layout.pack([["n1", 1]]), layout.pack([]), layout.pack([5])],
    ids=["not msgpack", "too short a dot", "no dot", "a dot that is no list"],
)
def test_a_corrupt_row_reads_as_a_decode_error(tmp_path: Path, garbage: bytes) -> None:
    # Bad bytes from disk: the project's error, naming them, not whatever a lookup tripped on.
    path = tmp_path / "n"
    with crdtstore.open(path, node_id="n1") as node:
        node.lww_map("m").update({"good": 1, "bad": 2})
        replica = node._replica
        ekey = layout.pack_key("bad")
        rkey = layout.row_key(
            replica.namespace_id("m", "lww_map"), layout.hash_encoded_key(ekey), ekey
        )
        with replica.env.begin(write=True, db=replica.dbs["state"]) as txn:
            txn.put(rkey, bytes(txn.get(rkey))[:8] + garbage)
        m = node.lww_map("m")
        for read in (lambda: m["bad"], lambda: m.get("bad"), lambda: dict(m.items())):
            with pytest.raises(DecodeError):
                read()
        with pytest.raises(DecodeError):
            replica.read_range("m", 0, 1 << 64)
        assert m["good"] == 1
