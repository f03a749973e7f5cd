"""The membership API in process: members(), watch_members(), leave(), topics, reserved names.

Two nodes in one test process still talk over real ZeroMQ sockets on loopback.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore.membership import MemberStatus, StatusChange
from crdtstore.testing.localcluster import free_port, wait_until

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


def test_without_a_role_holder_the_view_is_stale_and_claims_no_member_alive(
    tmp_path: Path,
) -> None:
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
        wait_until(lambda: statuses(a) == {"a": "alive", "b": "alive"}, "a sees b alive")
        held = a.member_view()
        assert held.stale is None and held.holder_pid == os.getpid()
    # Without the network role (here: after the daemon stopped) the records still answer,
    # but nobody on this host watches b any more: its status is unknown, not alive.
    with crdtstore.open(tmp_path / "a") as local:
        view = local.member_view()
        assert {m.node_id: m.status for m in view.members} == {"a": "alive", "b": "unknown"}
        assert view.stale is not None and "stopped" in view.stale, view.stale
        [b] = [m for m in view.members if m.node_id == "b"]
        assert b.last_heard_ms is not None and b.observed_at_ms == view.written_at_ms


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


def test_probes_go_on_while_both_replicators_are_held_in_a_long_step(
    pair: tuple[crdtstore.Node, crdtstore.Node],
) -> None:
    a, b = pair
    wait_until(
        lambda: statuses(a) == statuses(b) == {"a": "alive", "b": "alive"}, "both see both alive"
    )
    release = threading.Event()
    inside: set[str] = set()
    for node in (a, b):
        # The replicator's thread ticks its engine every sync_tick_ms: held there, it is
        # as busy as inside a bootstrap's apply or a slow fsync, and reads nothing.
        engine = node._network.engine
        tick = engine.on_tick

        def held(now: int, tick: Any = tick, name: str = node.node_id) -> Any:
            inside.add(name)
            release.wait(timeout=120)
            return tick(now)

        engine.on_tick = held
    try:
        wait_until(lambda: inside == {"a", "b"}, "both replicators are held")
        beyond = time.time_ns() // 1_000_000 + 2 * FAST["suspect_after_ms"]
        # Each side still hears the other, for longer than it takes to suspect a silent one.
        liveness = {n.node_id: n._network.liveness for n in (a, b)}
        wait_until(
            lambda: (
                (liveness["a"].last_heard_ms("b") or 0) > beyond
                and (liveness["b"].last_heard_ms("a") or 0) > beyond
            ),
            "probes are answered while both replicators are held",
        )
        assert liveness["a"].status("b") is MemberStatus.ALIVE
        assert liveness["b"].status("a") is MemberStatus.ALIVE
    finally:
        release.set()
    a.lww_map("cfg")["after"] = "a"
    wait_until(lambda: "after" in b.lww_map("cfg"), "replication goes on once released")
    for node in (a, b):
        assert node._network.stats["members_became_suspect"] == 0, node.node_id
