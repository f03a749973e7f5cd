"""Concurrent single writes through the public API share commits (group commit), each
caller seeing only its own outcome; on_commit hooks and watchers still see every commit."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore import Change


def _queued(node: crdtstore.Node, n: int) -> Callable[[], bool]:
    return lambda: len(node.replica.group._queue) >= n


def test_threads_writing_while_a_transaction_runs_share_one_commit(
    tmp_path: Path, wait_for: Any
) -> None:
    with crdtstore.open(tmp_path / "n", node_id="a") as node:
        m, s = node.lww_map("m"), node.or_set("s")
        hooks: list[int] = []
        node.on_commit.append(lambda: hooks.append(1))
        changes: list[Change] = []
        node.watch(None, changes.append)
        outcomes: dict[int, BaseException | None] = {}

        def write(i: int) -> None:
            try:
                if i == 3:
                    m["bad"] = object()  # fails alone
                elif i % 2:
                    s.add(f"e{i}")
                else:
                    m[f"k{i}"] = i
                outcomes[i] = None
            except crdtstore.Error as exc:
                outcomes[i] = exc

        with node.transaction():  # holds the writer lock while the eight queue up
            m["tx"] = 0
            threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            wait_for(_queued(node, 8), what="eight writers queued")
        for t in threads:
            t.join(timeout=30)
        assert node.stats["group_commits"] == 1 and node.stats["group_commit_writes"] == 8
        assert isinstance(outcomes.pop(3), crdtstore.InvalidValue)
        assert set(outcomes.values()) == {None}
        assert dict(m.items()) == {"tx": 0, "k0": 0, "k2": 2, "k4": 4, "k6": 6}
        assert set(s) == {"e1", "e5", "e7"}
        assert len(hooks) == 2  # the transaction's commit, the group's commit
        wait_for(lambda: len(changes) == 8, what="the watcher saw both commits")


def test_a_single_writer_commits_each_write_on_its_own(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", node_id="a") as node:
        m = node.lww_map("m")
        for i in range(5):
            m[i] = i
            del m[i]
        assert node.stats["group_commits"] == 10 == node.stats["group_commit_writes"]
        with pytest.raises(KeyError):
            del m["absent"]  # a delete's own outcome still reaches its caller


def test_a_transaction_whose_flush_fails_still_runs_its_commit_hooks(
    tmp_path: Path, wait_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction committed (every reader sees it), then its flush failed: the caller
    gets the error, and the watchers and on_commit hooks hear of the commit all the same."""
    with crdtstore.open(tmp_path / "n", node_id="a") as node:
        m = node.lww_map("m")
        hooks: list[int] = []
        node.on_commit.append(lambda: hooks.append(1))
        changes: list[Change] = []
        node.watch("m", changes.append)

        def failing_flush(ticket: int) -> None:
            raise crdtstore.StorageError(f"committed, but flushing it failed (ticket {ticket})")

        monkeypatch.setattr(node.replica._env, "make_durable", failing_flush)
        with pytest.raises(crdtstore.StorageError, match="flushing"), node.transaction():
            m["k"] = 1
        assert node.stats["transaction_flush_errors"] == 1
        assert hooks == [1]
        wait_for(lambda: [c.key for c in changes] == ["k"], what="the watcher saw the commit")
        assert dict(m.items()) == {"k": 1}
