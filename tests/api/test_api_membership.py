"""The membership API in process: members(), watch_members(), leave(), topics, reserved names.

Two nodes in one test process still talk over real ZeroMQ sockets on loopback.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

import crdtstore
from crdtstore.localcluster import free_port, wait_until
from crdtstore.membership import MemberStatus, StatusChange

FAST = {"heartbeat_interval_ms": 100, "suspect_after_ms": 600, "dead_after_ms": 1500}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[crdtstore.Node, crdtstore.Node]]:
    a_addr = f"tcp://127.0.0.1:{free_port()}"
    a = crdtstore.open(tmp_path / "a", node_id="a", bind=a_addr, **FAST)
    b = crdtstore.open(
        tmp_path / "b",
        node_id="b",
        bind=f"tcp://127.0.0.1:{free_port()}",
        seeds=[a_addr],
        **FAST,
    )
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def statuses(node: crdtstore.Node) -> dict[str, str]:
    return {m.node_id: m.status for m in node.members()}


def test_members_watch_and_leave(pair: tuple[crdtstore.Node, crdtstore.Node]) -> None:
    a, b = pair
    wait_until(lambda: statuses(a) == {"a": "alive", "b": "alive"}, "a sees b alive")
    [me] = [m for m in a.members() if m.is_self]
    assert me.node_id == "a" and me.router == a.router_address and me.incarnation >= 1
    [peer] = [m for m in a.members() if not m.is_self]
    assert peer.router == b.router_address and peer.last_heard_ms is not None

    b.leave()
    wait_until(lambda: statuses(a).get("b") == "left", "a sees b's leave")


def test_watch_members_reports_join_then_leave(tmp_path: Path) -> None:
    a_addr = f"tcp://127.0.0.1:{free_port()}"
    with crdtstore.open(tmp_path / "a", node_id="a", bind=a_addr, **FAST) as a:
        events: queue.Queue[StatusChange] = queue.Queue()
        a.watch_members(events.put)
        b = crdtstore.open(
            tmp_path / "b",
            node_id="b",
            bind=f"tcp://127.0.0.1:{free_port()}",
            seeds=[a_addr],
            **FAST,
        )
        first = events.get(timeout=30)
        assert (first.node_id, first.new) == ("b", MemberStatus.ALIVE)
        b.leave()
        while (change := events.get(timeout=30)).new is not MemberStatus.LEFT:
            pass
        assert change.node_id == "b"


def test_local_node_reads_members_from_the_replicated_records(tmp_path: Path) -> None:
    a_addr = f"tcp://127.0.0.1:{free_port()}"
    with (
        crdtstore.open(tmp_path / "a", node_id="a", bind=a_addr, **FAST) as a,
        crdtstore.open(
            tmp_path / "b",
            node_id="b",
            bind=f"tcp://127.0.0.1:{free_port()}",
            seeds=[a_addr],
            **FAST,
        ),
    ):
        # b's record replicated, not only its hello heard (members() lists b from that).
        wait_until(lambda: a.replica.context("__members").max_seq("b") > 0, "a holds b's record")
    # Without the network role (here: after the daemon stopped) the records still answer.
    with crdtstore.open(tmp_path / "a") as local:
        assert {m.node_id: m.status for m in local.members()} == {"a": "alive", "b": "alive"}
        with pytest.raises(crdtstore.Error, match="network role"):
            local.watch_members(lambda change: None)


def test_reserved_namespaces_are_refused(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n") as node:
        with pytest.raises(crdtstore.InvalidValue, match="reserved"):
            node.lww_map("__members")
        assert "__members" not in node.namespaces()


def test_topics_are_persisted_for_every_process_sharing_the_directory(tmp_path: Path) -> None:
    with crdtstore.open(tmp_path / "n", topics=["a"]) as node:
        node.lww_map("a")["k"] = 1
        with pytest.raises(crdtstore.NotReplicated):
            node.or_set("b")
    with crdtstore.open(tmp_path / "n") as other:
        assert other.topics == frozenset({"a"})
        with pytest.raises(crdtstore.NotReplicated):
            other.lww_map("b")
        assert "b" not in other.namespaces()
