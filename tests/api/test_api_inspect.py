"""crdt-inspect reads a directory while its node runs in another process."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import lmdb
import pytest

import crdtstore
from crdtstore.inspect import main
from crdtstore.storage import layout

NODE = """
import sys, threading, crdtstore
with crdtstore.open(sys.argv[1], node_id="n1") as node:
    m, s = node.lww_map("cfg"), node.or_set("hosts")
    with node.transaction():
        m["a"] = 1
        m[b"raw"] = [1, "two"]
        m[3] = {"x": None}
    s.add("h1")
    s.add("h2")
    s.discard("h2")
    print("ready", flush=True)
    threading.Event().wait()  # keep the node open until killed
"""


def run(*args: str) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--json"]) == 0
    return json.loads(out.getvalue())


def test_inspect_while_the_node_runs(tmp_path: Path, spawn: Any, lines: Any) -> None:
    path = str(tmp_path / "n")
    child = spawn(NODE, path)
    lines(child).expect("ready")
    summary = run(path)
    assert summary["node_id"] == "n1" and summary["format_version"] == layout.FORMAT_VERSION
    cfg, hosts = summary["namespaces"]["cfg"], summary["namespaces"]["hosts"]
    assert (cfg["type"], cfg["entries"], cfg["context"]["vv"]) == ("lww_map", 3, {"n1": 3})
    assert cfg["log"] == {
        "n1": {"batches": 1, "first": 1, "last": 3, "bytes": cfg["log"]["n1"]["bytes"]}
    }
    assert (hosts["type"], hosts["entries"], hosts["context"]["vv"]) == ("or_set", 1, {"n1": 3})
    assert hosts["log"]["n1"]["batches"] == 3
    assert 0 < summary["map"]["fill_pct"] <= 100
    dump = run(path, "dump", "cfg")
    values = {json.dumps(e["key"]): e["value"] for e in dump["entries"]}
    assert values == {'"a"': 1, '{"bytes": "726177"}': [1, "two"], "3": {"x": None}}
    shown = run(path, "show", "cfg", "3", "--int")
    assert shown["value"] == {"x": None} and shown["dots"][0]["replica"] == "n1"
    assert shown["dots"][0]["seq"] == 3 and shown["dots"][0]["wall_ms"] > 0
    assert run(path, "show", "hosts", "h2")["present"] is False
    assert [e["key"] for e in run(path, "dump", "hosts")["entries"]] == ["h1"]
    child.kill()


def test_diff_tells_unseen_from_removed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with crdtstore.open(a, node_id="n1") as node:
        node.or_set("s").add("old")
    shutil.copytree(a, b)
    with crdtstore.open(b, node_id="n1") as node:
        node.or_set("s").discard("old")
        node.or_set("s").add("new")
    diff = run("diff", str(a), str(b))["differences"]
    assert len(diff) == 2 and {d["namespace"] for d in diff} == {"s"}
    by_key = {d["key"]: d["dots"] for d in diff}
    assert by_key["old"] == [{"live_on": "a", "dot": ["n1", 1], "reason": "removed on b"}]
    assert by_key["new"] == [{"live_on": "b", "dot": ["n1", 3], "reason": "not yet seen by a"}]


def corrupt(path: Path, ns: str, key: Any, garbage: bytes) -> None:
    """Overwrite ``key``'s row in ``ns`` with garbage after its entry hash (node closed)."""
    env = lmdb.open(str(path), max_dbs=len(layout.TABLES) + 1)
    try:
        names, state = env.open_db(b"namespaces"), env.open_db(b"state")
        with env.begin(write=True) as txn:
            ns_id = layout.unpack_stored(txn.get(ns.encode(), db=names))[0]
            ekey = layout.pack_key(key)
            rkey = layout.row_key(ns_id, layout.hash_encoded_key(ekey), ekey)
            txn.put(rkey, txn.get(rkey, db=state)[:8] + garbage, db=state)
    finally:
        env.close()


GARBAGE = {
    "not msgpack": b"\xc1",
    "too short a dot": layout.pack([["n1", 1]]),
    "a seq that is no number": layout.pack([["n1", "one", 5, 1]]),
    "no dot": layout.pack([]),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_corrupt_row_is_shown_and_the_rest_still_read(tmp_path: Path, garbage: bytes) -> None:
    # The inspector is what an operator reaches for when a directory is damaged.
    path = tmp_path / "n"
    with crdtstore.open(path, node_id="n1") as node:
        node.lww_map("m").update({"good": 1, "bad": 2})
    corrupt(path, "m", "bad", garbage)
    by_key = {json.dumps(e["key"]): e for e in run(str(path), "dump", "m")["entries"]}
    assert by_key['"good"']["value"] == 1
    bad = by_key[json.dumps({"bytes": layout.pack_key("bad").hex()})]
    assert "corrupt state row" in bad["error"] and "dots" not in bad
    shown = run(str(path), "show", "m", "bad")
    assert shown["present"] and "corrupt state row" in shown["error"]
    assert run(str(path), "show", "m", "good")["value"] == 1
    assert run(str(path))["namespaces"]["m"]["entries"] == 2
    # diff compares dots, which a corrupt row has none of: it stops, saying where.
    shutil.copytree(path, tmp_path / "copy")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["diff", str(path), str(tmp_path / "copy"), "--json"]) == 2
    assert layout.pack_key("bad").hex() in err.getvalue()
