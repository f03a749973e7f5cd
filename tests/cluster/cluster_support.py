"""Real clusters for tests: ``crdtstore serve`` processes on loopback, inspected from outside.

Imported by name (``from cluster_support import ...``): a module name no other test
directory uses, unlike ``conftest`` (two test directories' ``conftest`` modules collide
when pytest is given both directories).

Every node is a separate OS process holding its directory's network role. Tests write
through their own handle on the node's directory (or through writer subprocesses), and
compare replicas with ``crdt-inspect --json``, the operator's tool, so a test checks
what is on each node's disk, not what some in-process object believes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from crdtstore.testing.faults import FaultSpec
from crdtstore.testing.localcluster import (  # noqa: F401 - re-exported to the test modules
    BIN,
    ServeNode,
    free_port,
    inspect_json,
    same_state,
    wait_until,
)

WRITER = Path(__file__).with_name("cluster_writer.py")


def run_writer(node: ServeNode, *args: str) -> subprocess.Popen[str]:
    """A writer process on ``node``'s directory; it prints ``ACK <key>`` after each write."""
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(node.data), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[ServeNode] = []

    def add(
        self,
        name: str,
        seeds: list[str] | None = None,
        start: bool = True,
        faults: FaultSpec | None = None,
        **config: Any,
    ) -> ServeNode:
        if seeds is None:
            seeds = [self.nodes[0].bind] if self.nodes else []
        node = ServeNode(self.root, name, seeds, config, faults=faults)
        self.nodes.append(node)
        return node.start() if start else node

    def start(self, count: int, faults: FaultSpec | None = None, **config: Any) -> list[ServeNode]:
        return [self.add(f"n{i + 1}", faults=faults, **config) for i in range(count)]

    def all_members_alive(self, count: int) -> bool:
        for node in self.nodes:
            seen = node.member_status()
            if sum(1 for status, _ in seen.values() if status == "alive") != count:
                return False
        return True

    def close(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.stop()
