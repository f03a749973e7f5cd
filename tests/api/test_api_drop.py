"""``node.drop(ns)`` and ``crdtstore drop NS --data DIR``, as users call them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import crdtstore
from crdtstore.errors import Error, InvalidValue
from crdtstore.testing.localcluster import BIN


def drop_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "crdtstore"), "drop", *args], capture_output=True, text=True, timeout=60
    )


def test_drop_empties_the_namespace_and_hides_it(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="n") as node:
        cfg = node.lww_map("cfg")
        cfg.update({"a": 1, "b": None})
        node.or_set("hosts").add("h")
        assert node.drop("cfg") is True
        assert dict(cfg.items()) == {} and "a" not in cfg
        assert set(node.namespaces()) == {"hosts", "__drops"}
        assert node.drop("cfg") is False  # nothing written since
        cfg["c"] = 3  # a write after the drop: the namespace lives again, same type
        assert dict(cfg.items()) == {"c": 3}
        assert "cfg" in node.namespaces()
        assert node.drop("never") is False


def test_drop_refuses_reserved_names_and_transactions(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="n") as node:
        node.lww_map("cfg")["k"] = 1
        with pytest.raises(InvalidValue, match="reserved"):
            node.drop("__members")
        with pytest.raises(Error, match="inside transaction"), node.transaction():
            node.drop("cfg")
        assert dict(node.lww_map("cfg").items()) == {"k": 1}


def test_the_drop_command_exit_codes(tmp_path: Path) -> None:
    data = tmp_path / "n"
    with crdtstore.open(data, node_id="n") as node:
        node.or_set("hosts").add("h")

    done = drop_cli("hosts", "--data", str(data))
    assert (done.returncode, done.stdout, done.stderr) == (0, "dropped 'hosts'\n", "")
    with crdtstore.open(data) as node:
        assert set(node.or_set("hosts")) == set()

    again = drop_cli("hosts", "--data", str(data))
    assert again.returncode == 1 and "nothing to drop" in again.stderr

    reserved = drop_cli("__members", "--data", str(data))
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
    assert len(reserved.stderr.splitlines()) == 1  # one line, no traceback

    missing = drop_cli("hosts", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a node directory" in missing.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_a_drop_commits_alone_whatever_other_writers_have_queued(tmp_path: Path) -> None:
    # Another thread's write to the namespace, waiting for the next group commit when the
    # drop comes: in one commit with it, the drop would refuse a namespace "written in
    # this transaction" (and fail or not depending on timing).
    with crdtstore.open(tmp_path / "n", node_id="n") as node:
        node.lww_map("cfg")["a"] = 1
        queued = node._submit(lambda w: w.put("cfg", "b", 2))
        assert node.drop("cfg") is True
        node._lead_writes()
        queued.result(timeout=10)
        assert dict(node.lww_map("cfg").items()) == {"b": 2}  # written after the drop
