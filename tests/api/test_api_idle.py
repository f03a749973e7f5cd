"""An idle node waits for work instead of polling for it, and loses no latency doing so.

The replicator's thread waits for a delivery, a wake or its next deadline: an idle engine
is ticked once per digest, not every ``sync_tick_ms``. A write of this process is still
published at once (the commit wakes the thread), and one of another process sharing the
directory within ``poll_ms`` (a look at LMDB's last transaction id). Nodes in the test
process talk over real ZeroMQ sockets on loopback; the other process is a real one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore.testing.localcluster import free_port, wait_until

FAST = {"heartbeat_interval_ms": 100, "suspect_after_ms": 600, "dead_after_ms": 1500}
QUIET = {"digest_interval_ms": 120_000, "poll_ms": 120_000}
"""Nothing periodic would carry a write for two minutes: no digest (so no repair), no look
for other processes' commits."""


def statuses(node: crdtstore.Node) -> dict[str, str]:
    return {m.node_id: m.status for m in node.members()}


@pytest.fixture
def make_pair(tmp_path: Path) -> Iterator[Callable[..., tuple[crdtstore.Node, crdtstore.Node]]]:
    """Two nodes, each seeing the other alive (neighbours: each one's SUB hears the
    other's PUB); ``a`` with the settings given."""
    opened: list[crdtstore.Node] = []

    def make(**a_settings: Any) -> tuple[crdtstore.Node, crdtstore.Node]:
        a_addr = f"tcp://127.0.0.1:{free_port()}"
        a = crdtstore.open(tmp_path / "a", node_id="a", bind=a_addr, **FAST, **a_settings)
        opened.append(a)
        b = crdtstore.open(
            tmp_path / "b",
            node_id="b",
            bind=f"tcp://127.0.0.1:{free_port()}",
            seeds=[a_addr],
            **FAST,
        )
        opened.append(b)
        wait_until(
            lambda: statuses(a) == statuses(b) == {"a": "alive", "b": "alive"},
            "both see both alive",
        )
        return a, b

    yield make
    for node in reversed(opened):
        node.close()


def test_an_idle_node_ticks_its_engine_once_per_digest(tmp_path: Path) -> None:
    node = crdtstore.open(
        tmp_path / "n",
        node_id="n",
        bind=f"tcp://127.0.0.1:{free_port()}",
        digest_interval_ms=200,
        sync_tick_ms=20,
    )
    try:
        engine = node._network.engine
        tick = engine.on_tick
        ticks = 0

        def counted(now: int) -> Any:
            nonlocal ticks
            ticks += 1
            return tick(now)

        engine.on_tick = counted  # type: ignore[method-assign]
        digests = engine.stats["digests_sent"]
        wait_until(lambda: engine.stats["digests_sent"] >= digests + 5, "five more digests")
        sent = engine.stats["digests_sent"] - digests
        # Ticked every sync_tick_ms, it would be about ten per digest. One tick more than
        # the digests may follow the node's own start (its member record is a commit).
        assert ticks <= sent + 2, (ticks, sent)
    finally:
        node.close()


def test_a_write_on_an_idle_node_is_published_at_once(
    make_pair: Callable[..., tuple[crdtstore.Node, crdtstore.Node]],
) -> None:
    a, b = make_pair(**QUIET)
    a.lww_map("m")["k"] = 1
    wait_until(lambda: b.lww_map("m").get("k") == 1, "b has a's write", timeout=20)


def test_a_commit_of_a_process_without_the_role_is_published(
    make_pair: Callable[..., tuple[crdtstore.Node, crdtstore.Node]],
    spawn: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # No digest for two minutes: only a's look at the directory (every poll_ms) finds
    # the other process's commit, and publishes it.
    _, b = make_pair(digest_interval_ms=QUIET["digest_interval_ms"])
    child = spawn(
        """
        import sys, crdtstore
        with crdtstore.open(sys.argv[1]) as node:
            node.lww_map("m")["from-child"] = 1
        """,
        str(tmp_path / "a"),
    )
    assert child.wait(timeout=60) == 0, child.stderr.read()
    wait_until(lambda: b.lww_map("m").get("from-child") == 1, "b has the child's write", 20)
