"""``crdtstore demo``: a 3-node cluster on loopback, shown converging and repairing.

Each node is a ``crdtstore serve`` process holding its directory's network role. The
demo itself opens the same directories as local replicas (LMDB is multi-process safe),
writes through them, and reads every node's state straight from its own disk, which is
exactly how a service embedding crdtstore beside a daemon would use it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import crdtstore
from crdtstore.testing.localcluster import ServeNode

console = Console()
NAMES = ("n1", "n2", "n3")


class DemoNode(ServeNode):
    """A ``crdtstore serve`` process (see :mod:`crdtstore.testing.localcluster`) the demo reads."""

    def __init__(self, name: str, root: Path, seed: str | None) -> None:
        super().__init__(root, name, [seed] if seed else [], log_level="WARNING")

    def snapshot(self) -> tuple[dict[Any, Any], frozenset[Any], int]:
        with crdtstore.open(self.data) as node:
            members = sum(m.status == "alive" for m in node.members())
            return dict(node.lww_map("config").items()), frozenset(node.or_set("hosts")), members


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    with console.status(f"waiting until {what} ..."):
        while not condition():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting until {what}")
            time.sleep(0.05)  # polling a condition, bounded by timeout
    took = time.monotonic() - start
    console.print(f"  [green]✓[/] {what} [dim]({took * 1000:.0f} ms)[/]")
    return took


def show(nodes: list[DemoNode], title: str) -> None:
    table = Table(title=title)
    table.add_column("node")
    table.add_column("config (LWW-map)")
    table.add_column("hosts (OR-Set)")
    for node in nodes:
        config, hosts, _ = node.snapshot()
        table.add_row(node.name, repr(dict(sorted(config.items()))), repr(sorted(hosts)))
    console.print(table)


def converged(nodes: list[DemoNode]) -> bool:
    snaps = [n.snapshot()[:2] for n in nodes]
    return all(s == snaps[0] for s in snaps)


def write(node: DemoNode, action: Callable[[crdtstore.Node], None], text: str) -> None:
    with crdtstore.open(node.data) as handle:
        action(handle)
    console.print(f"  [cyan]{node.name}[/] {text}")


def run_demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="crdtstore-demo-"))
    console.rule("[bold]crdtstore demo: three nodes, no central server")
    console.print(f"data directories under {root}\n")
    nodes: list[DemoNode] = []
    try:
        first = DemoNode("n1", root, None)
        nodes = [first, DemoNode("n2", root, first.bind), DemoNode("n3", root, first.bind)]
        console.print(
            "[bold]1. Start three `crdtstore serve` processes[/] (n2 and n3 know only n1)"
        )
        for node in nodes:
            node.start()
            console.print(f"  started {node.name} on {node.bind}")
        wait_for("every node knows all 3 members", lambda: all(n.snapshot()[2] == 3 for n in nodes))

        console.print("\n[bold]2. Write on every node[/] (each write is local and durable at once)")
        write(
            nodes[0],
            lambda h: h.lww_map("config").update({"region": "eu-west"}),
            "config['region'] = 'eu-west'",
        )
        write(nodes[1], lambda h: h.or_set("hosts").add("compute-1"), "hosts.add('compute-1')")
        write(nodes[2], lambda h: h.or_set("hosts").add("compute-2"), "hosts.add('compute-2')")
        write(
            nodes[2],
            lambda h: h.lww_map("config").update({"replicas": 3}),
            "config['replicas'] = 3",
        )
        wait_for("all three nodes hold the same state", lambda: converged(nodes))
        show(nodes, "after replication")

        console.print("\n[bold]3. SIGKILL n3, keep writing on n1 and n2[/]")
        nodes[2].kill()
        console.print("  [red]n3 killed[/]")
        write(
            nodes[0], lambda h: h.or_set("hosts").discard("compute-1"), "hosts.discard('compute-1')"
        )
        write(nodes[1], lambda h: h.or_set("hosts").add("compute-3"), "hosts.add('compute-3')")
        write(
            nodes[1],
            lambda h: h.lww_map("config").update({"region": "eu-central"}),
            "config['region'] = 'eu-central'",
        )
        wait_for("n1 and n2 agree", lambda: converged(nodes[:2]))
        show(nodes, "while n3 is down (n3 shows what it had when killed)")

        console.print("\n[bold]4. Restart n3[/]: anti-entropy repairs what it missed")
        nodes[2].start()
        wait_for("n3 has caught up", lambda: converged(nodes))
        show(nodes, "after n3's repair")
        console.rule("[bold green]every node converged; no write was lost")
        return 0
    finally:
        for node in nodes:
            node.stop()
        if keep:
            console.print(f"kept {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os._exit(run_demo())
