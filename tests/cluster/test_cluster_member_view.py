"""Membership as every process on a host sees it: a service process beside each node.

Each reader (``member_reader.py``) opens a node's directory without the network role, as a
service next to ``crdtstore serve`` does, and reports what ``member_view()`` and
``watch_members`` show it. It must see what the node's own failure detector sees.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster_support import Cluster, ServeNode, wait_until

READER = Path(__file__).with_name("member_reader.py")
FAST = {
    "heartbeat_interval_ms": 100,
    "suspect_after_ms": 600,
    "dead_after_ms": 1500,
    "status_interval_ms": 100,
    "member_view_interval_ms": 200,
}


class Reader:
    """A member_reader process and everything it printed so far."""

    def __init__(self, node: ServeNode) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            [sys.executable, str(READER), str(node.data)], stdout=subprocess.PIPE
        )
        self._buf = b""
        self.lines: list[dict[str, Any]] = []
        wait_until(lambda: self.seen("ready"), f"the reader of {node.name} is ready", 30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the reader of {self.node.name} exited")
            self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        self.lines += [json.loads(line) for line in complete]

    def seen(self, via: str) -> list[dict[str, Any]]:
        self._read()
        return [line for line in self.lines if line["via"] == via]

    def statuses(self, node_id: str) -> list[tuple[str, int]]:
        """``(status, incarnation)`` of ``node_id`` in ``members()``, each change in order."""
        return [
            (m["status"], m["incarnation"]) for m in self.seen("members") if m["node"] == node_id
        ]

    def status(self, node_id: str) -> str:
        history = self.statuses(node_id)
        return history[-1][0] if history else "?"

    def incarnation(self, node_id: str) -> int:
        history = self.statuses(node_id)
        return history[-1][1] if history else 0

    def watched(self, node_id: str) -> list[tuple[str | None, str]]:
        return [(w["old"], w["new"]) for w in self.seen("watch") if w["node"] == node_id]

    def stale(self) -> bool:
        rows = self.seen("members")
        return bool(rows) and rows[-1]["stale"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_processes_beside_the_survivors_see_a_kill_and_the_return_as_their_nodes_do(
    cluster: Cluster,
) -> None:
    nodes = cluster.start(5, **FAST)
    wait_until(lambda: cluster.all_members_alive(5), "every node sees 5 alive members")
    victim, survivors = nodes[4], nodes[:4]
    readers = [Reader(n) for n in survivors]
    try:
        wait_until(
            lambda: all(r.status("n5") == "alive" for r in readers), "every reader sees n5 alive"
        )
        old = max(r.incarnation("n5") for r in readers)
        victim.kill()
        wait_until(
            lambda: (
                all(r.status("n5") == "dead" for r in readers)
                and all(r.watched("n5")[-1:] == [("suspect", "dead")] for r in readers)
            ),
            "every reader sees n5 dead",
            30,
        )
        for r in readers:
            statuses = [s for s, _ in r.statuses("n5")]
            assert statuses[-3:] == ["alive", "suspect", "dead"], (r.node.name, statuses)
            assert ("alive", "suspect") in r.watched("n5"), (r.node.name, r.watched("n5"))
            assert not r.stale()
        # What the readers saw is what the nodes beside them decided (their status files,
        # refreshed every 100 ms, may show it a little later than the directory's view).
        wait_until(
            lambda: all(n.member_status()["n5"][0] == "dead" for n in survivors),
            "every survivor's own status says n5 is dead",
        )

        victim.start()
        wait_until(
            lambda: (
                all(r.status("n5") == "alive" and r.incarnation("n5") > old for r in readers)
                and all(r.watched("n5")[-1:] == [("dead", "alive")] for r in readers)
            ),
            "every reader sees n5 alive again at a higher incarnation",
            30,
        )
    finally:
        for r in readers:
            r.close()


def test_a_reader_says_the_view_is_stale_while_no_process_serves_the_directory(
    cluster: Cluster,
) -> None:
    n1, _ = cluster.start(2, **FAST)
    wait_until(lambda: cluster.all_members_alive(2), "both nodes see 2 alive members")
    reader = Reader(n1)
    try:
        wait_until(lambda: reader.status("n2") == "alive", "the reader sees n2 alive")
        n1.kill()  # n1's holder dies; nobody on this host watches n2 any more
        wait_until(
            lambda: (
                reader.status("n2") == "unknown"
                and reader.stale()
                and reader.watched("n2")[-1:] == [("alive", "unknown")]
            ),
            "the reader reports n2 unknown, the view stale",
            30,
        )
        n1.start()
        wait_until(
            lambda: (
                reader.status("n2") == "alive"
                and not reader.stale()
                and reader.watched("n2")[-1:] == [("unknown", "alive")]
            ),
            "the reader sees n2 alive once n1 serves again",
            30,
        )
    finally:
        reader.close()
