"""``crdtstore get/put/del/add/remove/ls/watch`` on a node directory, as subprocesses."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from cli_support import Lines, run, run_json, spawn, wait_stderr

import crdtstore
from crdtstore.testing.localcluster import ServeNode


def test_put_then_get_prints_the_json_value_and_ls_lists_it(store: Path) -> None:
    d = str(store)
    assert run("put", "--data", d, "cfg", "db", '{"host": "a", "port": 5432}').returncode == 0
    got = run("get", "--data", d, "cfg", "db")
    assert got.returncode == 0 and json.loads(got.stdout) == {"host": "a", "port": 5432}
    assert run_json("get", "--data", d, "cfg", "db") == {
        "namespace": "cfg",
        "key": "db",
        "value": {"host": "a", "port": 5432},
    }
    run("put", "--data", d, "cfg", "dbx", "null")
    run("put", "--data", d, "cfg", "other", "[1, 2]")
    listed = run("ls", "--data", d, "cfg", "--prefix", "db")
    assert listed.stdout.splitlines() == ['db\t{"host": "a", "port": 5432}', "dbx\tnull"]
    assert run_json("ls", "--data", d)["namespaces"] == {"cfg": "lww_map", "seed": "lww_map"}


def test_get_of_an_absent_key_or_namespace_exits_1_and_creates_nothing(store: Path) -> None:
    d = str(store)
    missing = run("get", "--data", d, "seed", "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr and missing.stdout == ""
    missing = run("get", "--data", d, "confgi", "k")
    assert missing.returncode == 1 and "namespace 'confgi' not found" in missing.stderr
    assert "confgi" not in run_json("ls", "--data", d)["namespaces"]


def test_del_removes_and_says_when_nothing_was_there(store: Path) -> None:
    d = str(store)
    assert run_json("del", "--data", d, "seed", "k") == {
        "namespace": "seed",
        "key": "k",
        "deleted": True,
    }
    assert run("get", "--data", d, "seed", "k").returncode == 1
    again = run("del", "--data", d, "seed", "k")
    assert again.returncode == 0 and "was not there" in again.stdout


def test_or_set_add_remove_ls_and_get_as_membership(store: Path) -> None:
    d = str(store)
    for host in ("h2", "h1", "h3"):
        assert run("add", "--data", d, "--create", "hosts", host).returncode == 0
    assert run("remove", "--data", d, "hosts", "h3").returncode == 0
    assert run("ls", "--data", d, "hosts").stdout.splitlines() == ["h1", "h2"]
    assert run_json("ls", "--data", d, "hosts")["elements"] == ["h1", "h2"]
    assert run("get", "--data", d, "hosts", "h1").returncode == 0
    assert run("get", "--data", d, "hosts", "h3").returncode == 1
    assert run("add", "--data", d, "--json-key", "hosts", "7").returncode == 0
    assert run_json("ls", "--data", d, "hosts")["elements"] == [7, "h1", "h2"]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(store: Path) -> None:
    d = str(store)
    cases = [
        (["put", "--data", d, "cfg", "k", "hello"], "is not JSON"),
        (["put", "--data", d, "seed", "k", "{"], "is not JSON"),
        (["add", "--data", d, "seed", "x"], "namespace 'seed' is an lww_map: use put/del"),
        (["put", "--data", d, "__members", "x", "1"], "reserved"),
        (["put", "--data", d, "--json-key", "cfg", "1.5", "1"], "JSON string or integer"),
        (["put", "--data", d, "cfg", "k" * 300, "1"], "key"),
        (["frobnicate"], "invalid choice"),
    ]
    for args, said in cases:
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert run_json("ls", "--data", d)["namespaces"] == {"seed": "lww_map"}
    assert run_json("ls", "--data", d, "seed")["entries"] == [{"key": "k", "value": 0}]


def test_a_directory_that_is_not_a_node_exits_3_and_is_not_created(tmp_path: Path) -> None:
    data = tmp_path / "typo"
    for args in (["get", "cfg", "k"], ["put", "cfg", "k", "1"], ["ls"], ["members"]):
        done = run(*args, "--data", str(data))
        assert done.returncode == 3 and "not a node directory" in done.stderr, done.stderr
    assert not data.exists()
    assert run("ls", env={"CRDTSTORE_DATA": ""}).returncode in (2, 3)


def test_data_comes_from_the_environment(store: Path) -> None:
    done = run("get", "seed", "k", env={"CRDTSTORE_DATA": str(store)})
    assert done.returncode == 0 and done.stdout.strip() == "0"


def test_ls_into_a_closed_pipe_is_not_an_error(store: Path) -> None:
    with crdtstore.open(store) as node, node.transaction():
        cfg = node.lww_map("cfg")
        for i in range(5000):  # far more than a pipe holds
            cfg[f"k{i}"] = i
    proc = spawn("ls", "--data", str(store), "cfg")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    _, err = proc.communicate(timeout=60)
    assert first.startswith("k") and proc.returncode == 0 and err == "", err


def test_watch_streams_local_and_remote_changes_and_exits_0_on_ctrl_c(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    fast = {"heartbeat_interval_ms": 100, "status_interval_ms": 100}
    n1 = ServeNode(tmp_path, "n1", [], fast)
    nodes.append(n1.start())
    n2 = ServeNode(tmp_path, "n2", [n1.bind], fast)
    nodes.append(n2.start())
    watcher = spawn("watch", "--data", str(n2.data), "cfg", "--prefix", "app.")
    try:
        wait_stderr(watcher, "watching cfg")
        lines = Lines(watcher)
        assert run("put", "--data", str(n2.data), "cfg", "other", "1").returncode == 0
        assert run("put", "--data", str(n2.data), "cfg", "app.local", "1").returncode == 0
        local = lines.next_json("the local change is streamed")
        assert (local["key"], local["new"], local["origin"]) == ("app.local", 1, "n2")
        assert run("put", "--data", str(n1.data), "cfg", "app.remote", '"x"').returncode == 0
        remote = lines.next_json("n1's change reaches n2 and is streamed")
        assert (remote["key"], remote["new"], remote["origin"]) == ("app.remote", "x", "n1")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
