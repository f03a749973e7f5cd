"""Membership at scale on real processes: the overlay mode against the full mesh.

    .venv/bin/python bench/bench_members_scale.py                 # 20, 50, 100 nodes
    .venv/bin/python bench/bench_members_scale.py --sizes 20 50   # fewer
    .venv/bin/python bench/bench_members_scale.py --full 20       # the full mesh too, at 20

Every node is a ``crdtstore serve`` process on loopback. For each size: the time from the
last start until every node's status shows every member alive; the idle cluster's CPU
per node and loopback bytes/s per node (from /proc, over ``--idle`` seconds); connections
per node (neighbours plus short-lived ones, from each node's status); then SIGKILL of 5
nodes and the time until every survivor shows all five dead, against the configured
bound (``suspect_after_ms + dead_after_ms``), and the suspicions raised meanwhile of
members that were not killed (false suspicions).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_members import cpu_seconds
from machine import lo_bytes
from rich.console import Console
from rich.table import Table

from crdtstore.testing.localcluster import ServeNode, wait_until

console = Console()


def start(root: Path, count: int, config: dict[str, Any]) -> tuple[list[ServeNode], float]:
    root.mkdir(parents=True, exist_ok=True)
    nodes: list[ServeNode] = []
    for i in range(count):
        seeds = [n.bind for n in nodes[:3]]
        nodes.append(ServeNode(root, f"n{i + 1:03d}", seeds, config).start())
    return nodes, time.monotonic()


def seen_everywhere(nodes: list[ServeNode], names: set[str], status: str) -> bool:
    """Whether every node's status file shows every one of ``names`` at ``status``."""
    for node in nodes:
        seen = node.member_status()
        if any(seen.get(name, ("?", 0))[0] != status for name in names):
            return False
    return True


def suspicions(nodes: list[ServeNode]) -> int:
    return sum(n.counter("replicator", "members_became_suspect") for n in nodes)


def run(root: Path, count: int, overlay: bool, idle_s: float, kills: int) -> dict[str, float]:
    config: dict[str, Any] = {"status_interval_ms": 250, "overlay": overlay}
    nodes, last_start = start(root, count, config)
    names = {n.name for n in nodes}
    try:
        wait_until(
            lambda: seen_everywhere(nodes, names, "alive"), f"{count} alive everywhere", 600, 0.5
        )
        converged = time.monotonic() - last_start
        time.sleep(2 * 0.25)  # two status intervals: the counters below are current
        cpu0 = {n.name: cpu_seconds(n.pid) for n in nodes}
        lo0, t0 = lo_bytes(), time.monotonic()
        sus0 = suspicions(nodes)
        time.sleep(idle_s)  # measuring the idle cluster over this span
        elapsed = time.monotonic() - t0
        cpu = [(cpu_seconds(n.pid) - cpu0[n.name]) / elapsed * 100 for n in nodes]
        lo = (lo_bytes() - lo0) / elapsed / count
        idle_suspicions = suspicions(nodes) - sus0
        conns = []
        for n in nodes:
            status = n.status() or {}
            ov = status.get("overlay") or {}
            conns.append(ov.get("connections", count - 1) if overlay else count - 1)
        victims = nodes[-kills:]
        survivors = nodes[:-kills]
        sus_before = suspicions(survivors)
        killed = time.monotonic()
        for v in victims:
            v.kill()
        dead_names = {v.name for v in victims}
        wait_until(lambda: seen_everywhere(survivors, dead_names, "dead"), "victims dead", 300, 0.2)
        detected = time.monotonic() - killed
        time.sleep(0.5)
        # Each survivor may suspect each victim once before declaring it dead.
        false = max(0, suspicions(survivors) - sus_before - len(survivors) * kills)
        bound = 2_000 + 6_000
        return {
            "converged_s": converged,
            "cpu_pct": statistics.mean(cpu),
            "cpu_max": max(cpu),
            "lo_bytes_s": lo,
            "conn_mean": statistics.mean(conns),
            "conn_max": max(conns),
            "conn_goal": 2 * math.ceil(math.log2(count)) + 4,
            "idle_suspicions": idle_suspicions,
            "dead_s": detected,
            "bound_s": bound / 1000,
            "false_suspicions": false,
        }
    finally:
        for n in nodes:
            n.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--full", type=int, nargs="*", default=[], help="full-mesh sizes too")
    parser.add_argument("--idle", type=float, default=15.0, help="idle window, seconds")
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    table = Table(title="membership on real processes (loopback, this machine)")
    for col in (
        "mode",
        "nodes",
        "last start -> all alive",
        "idle CPU/node mean (max)",
        "idle lo B/s per node",
        "connections mean / max (goal)",
        "idle suspicions",
        f"kill {args.kills}: all dead after",
        "/ bound",
        "false suspicions",
    ):
        table.add_column(col)
    runs = [(False, n) for n in args.full] + [(True, n) for n in args.sizes]
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        for overlay, count in runs:
            mode = "overlay" if overlay else "full mesh"
            r = run(Path(tmp) / f"{mode}-{count}", count, overlay, args.idle, args.kills)
            table.add_row(
                mode,
                str(count),
                f"{r['converged_s']:.1f} s",
                f"{r['cpu_pct']:.2f}% ({r['cpu_max']:.2f}%)",
                f"{r['lo_bytes_s']:,.0f}",
                f"{r['conn_mean']:.1f} / {r['conn_max']} ({r['conn_goal']})",
                str(r["idle_suspicions"]),
                f"{r['dead_s']:.1f} s",
                f"{r['dead_s'] / r['bound_s']:.2f}",
                str(r["false_suspicions"]),
            )
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
