"""crdt-inspect reads a directory while its node runs in another process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb
import pytest

import crdtstore
from crdtstore import inspect
from crdtstore.crdt.hlc import physical_ms
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


def run(*args: str, status: int = 0) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([*args, "--json"]) == status
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
    diff = run("diff", str(a), str(b), status=1)["differences"]
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
    by_key = {json.dumps(e["key"]): e for e in run(str(path), "dump", "m", status=1)["entries"]}
    assert by_key['"good"']["value"] == 1
    bad = by_key[json.dumps({"bytes": layout.pack_key("bad").hex()})]
    assert "corrupt state row" in bad["error"] and "dots" not in bad
    shown = run(str(path), "show", "m", "bad", status=1)
    assert shown["present"] and "corrupt state row" in shown["error"]
    assert run(str(path), "show", "m", "good")["value"] == 1
    assert run(str(path))["namespaces"]["m"]["entries"] == 2
    # diff compares dots, which a corrupt row has none of: it stops, saying where.
    shutil.copytree(path, tmp_path / "copy")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["diff", str(path), str(tmp_path / "copy"), "--json"]) == 2
    assert layout.pack_key("bad").hex() in err.getvalue()


# -- the command itself, as an operator runs it (a subprocess, its output piped) ----------

INSPECT = str(Path(sys.executable).parent / "crdt-inspect")


def inspect_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INSPECT, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_piped_tables_are_not_cut_and_dump_shows_iso_times(tmp_path: Path) -> None:
    long_key = "k" * 150
    with crdtstore.open(tmp_path / "n", node_id="n1") as node:
        node.lww_map("m")[long_key] = "v" * 120
    done = inspect_cmd(str(tmp_path / "n"), "dump", "m")
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if long_key in line]
    assert "v" * 120 in row  # the whole key and value on one line: no 80-column cut
    hlc, iso = re.search(r"n1:1 @(\d+) = (\S+Z)", row).groups()  # type: ignore[union-attr]
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    assert abs(when.timestamp() * 1000 - physical_ms(int(hlc))) < 1


def test_show_prints_json(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="n1") as node:
        node.lww_map("m")["k"] = {"x": [1, None]}
    done = inspect_cmd(str(tmp_path / "n"), "show", "m", "k")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["value"] == {"x": [1, None]} and shown["dots"][0]["time"].endswith("Z")


def test_diff_exits_1_when_replicas_differ_and_says_identical_when_not(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with crdtstore.open(a, node_id="n1") as node:
        node.or_set("s").add("x")
    shutil.copytree(a, b)
    same = inspect_cmd("diff", str(a), str(b))
    assert (same.returncode, same.stdout.strip()) == (0, "identical")
    with crdtstore.open(b, node_id="n1") as node:
        node.or_set("s").add("y")
    for args in (("diff",), ("--json", "diff")):
        differ = inspect_cmd(*args, str(a), str(b))
        assert differ.returncode == 1, differ.stderr
        assert '"y"' in differ.stdout and "not yet seen by a" in differ.stdout


def test_a_corrupt_row_names_its_namespace_and_error_and_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "n"
    with crdtstore.open(path, node_id="n1") as node:
        node.lww_map("cfg").update({"good": 1, "bad": 2})
    corrupt(path, "cfg", "bad", GARBAGE["a seq that is no number"])
    done = inspect_cmd(str(path), "dump", "cfg")
    assert done.returncode == 1
    assert "namespace 'cfg'" in done.stderr and "is not a dot" in done.stderr
    assert "is not a dot" in done.stdout  # the table shows the error too (not eaten as markup)
    assert '"good"' in done.stdout


def test_a_garbage_data_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "n"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is no LMDB file " * 512)
    for args in ((str(path),), (str(path), "dump", "m"), ("diff", str(path), str(path))):
        done = inspect_cmd(*args)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert str(path) in done.stderr


def test_a_reader_that_stops_early_gets_no_broken_pipe_traceback(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    crdtstore.open(a, node_id="n1").close()
    with crdtstore.open(b, node_id="n1") as node, node.transaction():
        s = node.or_set("s")
        for i in range(3000):  # far more output than a pipe buffers
            s.add(f"element-{i:06d}-" + "x" * 40)
    proc = subprocess.Popen(
        [INSPECT, "--json", "diff", str(a), str(b)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)  # like ``| head -c 10``
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 1


def test_summary_shows_bytes_per_table(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="n1") as node:
        node.lww_map("m")["k"] = "v"
    tables = run(str(tmp_path / "n"))["tables"]
    assert set(tables) == set(layout.TABLES) and tables["state"] > 0 and tables["journal"] > 0
    done = inspect_cmd(str(tmp_path / "n"))
    assert "bytes per table: meta" in done.stdout and "journal" in done.stdout


def test_status_of_a_stopped_node_is_not_live(tmp_path: Path) -> None:
    # A fresh status.json whose writer is gone: its age alone would still say "live".
    path = tmp_path / "n"
    crdtstore.open(path, node_id="n1").close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    status = {
        "node_id": "n1",
        "pid": gone.pid,
        "router": "",
        "pub": "",
        "written_at_ms": 0,
        "members": [],
        "peer_lag": {},
    }
    (path / "status.json").write_text(json.dumps(status))
    got = run(str(path), "status")
    assert got["pid_alive"] is False and got["stale"] is True and got["age_ms"] < 60_000
    assert got["tables"]["state"] >= 0
    done = inspect_cmd(str(path), "status")
    assert f"NOT RUNNING: no process {gone.pid}" in done.stdout
    status["pid"] = os.getpid()  # a writer that is there: live
    (path / "status.json").write_text(json.dumps(status))
    assert run(str(path), "status")["stale"] is False


def test_status_of_a_running_node_that_stopped_writing_it_says_why(tmp_path: Path) -> None:
    path = tmp_path / "n"
    crdtstore.open(path, node_id="n1").close()
    status = {
        "node_id": "n1",
        "pid": os.getpid(),  # running
        "router": "",
        "pub": "",
        "written_at_ms": 0,
        "members": [],
        "peer_lag": {},
        "sync": {"local_storage_failures": 3},
        "storage": {"map_full": 3},
    }
    (path / "status.json").write_text(json.dumps(status))
    old = time.time() - 60
    os.utime(path / "status.json", (old, old))  # last written a minute ago
    got = run(str(path), "status")
    assert got["stale"] is True and got["pid_alive"] is True
    assert got["stale_reason"] == "it has stopped writing it: stuck or failing (see its log)"
    done = inspect_cmd(str(path), "status")
    assert f"STALE: process {os.getpid()} runs, but it has stopped writing it" in done.stdout
    assert "not running?" not in done.stdout
    assert "3 local storage failures (3 with the map full" in done.stdout
    # A file system with less free space than a commit needs is named as the cause.
    assert "is full" in inspect.stale_reason(path, full_below=1 << 62)
