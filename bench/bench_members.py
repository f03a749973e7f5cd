"""Membership on real processes: failure detection time, false positives, a 20-node cluster.

    .venv/bin/python bench/bench_members.py            # ~4 minutes
    .venv/bin/python bench/bench_members.py --quick    # fewer kills, 10 nodes

Detection time is measured from the SIGKILL to the moment every survivor's status file
shows the victim dead; status files are refreshed every 100 ms, which bounds the error.
Per-node CPU, memory and loopback bytes of the idle cluster come from /proc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import lo_bytes
from rich.console import Console
from rich.table import Table

from crdtstore.testing.localcluster import ServeNode, wait_until

console = Console()
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def start(root: Path, count: int, **config: Any) -> list[ServeNode]:
    root.mkdir(parents=True, exist_ok=True)
    nodes: list[ServeNode] = []
    for i in range(count):
        seeds = [nodes[0].bind] if nodes else []
        nodes.append(ServeNode(root, f"n{i + 1:02d}", seeds, config).start())
    return nodes


def all_alive(nodes: list[ServeNode], count: int) -> bool:
    return all(
        sum(status == "alive" for status, _ in n.member_status().values()) == count for n in nodes
    )


def detection(root: Path, heartbeat_ms: int, kills: int) -> dict[str, float]:
    config = {
        "heartbeat_interval_ms": heartbeat_ms,
        "suspect_after_ms": 4 * heartbeat_ms,
        "dead_after_ms": 8 * heartbeat_ms,
        "status_interval_ms": 100,
    }
    nodes = start(root, 5, **config)
    wait_until(lambda: all_alive(nodes, 5), "5 alive", 60)
    suspect_times, dead_times = [], []
    for k in range(kills):
        victim = nodes[-1]
        observers = nodes[:-1]
        killed = time.monotonic()
        victim.kill()
        suspected = None
        while True:
            seen = [o.member_status().get(victim.name, ("?", 0))[0] for o in observers]
            if suspected is None and all(s in ("suspect", "dead") for s in seen):
                suspected = time.monotonic() - killed
            if all(s == "dead" for s in seen):
                dead_times.append(time.monotonic() - killed)
                break
            time.sleep(0.01)  # polling the status files
        suspect_times.append(suspected or dead_times[-1])
        victim.start()
        wait_until(lambda: all_alive(nodes, 5), f"5 alive again after kill {k}", 60)
    false_positives = (
        sum(n.counter("replicator", "members_became_suspect") for n in nodes[:-1]) - kills * 4
    )
    for n in nodes:
        n.stop()
    return {
        "suspect_p50": statistics.median(suspect_times) * 1000,
        "dead_p50": statistics.median(dead_times) * 1000,
        "dead_max": max(dead_times) * 1000,
        "configured": (config["suspect_after_ms"] + config["dead_after_ms"]),
        "false_positives": max(false_positives, 0),
    }


def scale(root: Path, count: int, idle_s: float) -> dict[str, float]:
    started = time.monotonic()
    nodes = start(root, count)
    wait_until(lambda: all_alive(nodes, count), f"every node sees {count} alive", 300, 0.2)
    converged = time.monotonic() - started
    cpu0 = {n.name: cpu_seconds(n.pid) for n in nodes}
    lo0, t0 = lo_bytes(), time.monotonic()
    time.sleep(idle_s)  # measuring the idle cluster over this span
    elapsed = time.monotonic() - t0
    cpu = [(cpu_seconds(n.pid) - cpu0[n.name]) / elapsed * 100 for n in nodes]
    lo = (lo_bytes() - lo0) / elapsed / count
    rss = [rss_mib(n.pid) for n in nodes]
    for n in nodes:
        n.stop()
    return {
        "converged_s": converged,
        "cpu_pct": statistics.mean(cpu),
        "cpu_max": max(cpu),
        "lo_bytes_s": lo,
        "rss_mib": statistics.mean(rss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 kill per interval, 10 nodes")
    args = parser.parse_args()
    kills = 1 if args.quick else 3
    size = 10 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        root = Path(tmp)
        det = Table(title="failure detection, 5 nodes (suspect after 4, dead after 8 more beats)")
        for col in (
            "heartbeat",
            "suspected p50",
            "dead p50",
            "dead max",
            "configured bound",
            "dead p50 / bound",
            "false suspicions",
        ):
            det.add_column(col)
        for hb in (100, 250, 500):
            r = detection(root / f"hb{hb}", hb, kills)
            det.add_row(
                f"{hb} ms",
                f"{r['suspect_p50']:.0f} ms",
                f"{r['dead_p50']:.0f} ms",
                f"{r['dead_max']:.0f} ms",
                f"{r['configured']:.0f} ms",
                f"{r['dead_p50'] / r['configured']:.2f}",
                str(int(r["false_positives"])),
            )
        console.print(det)
        s = scale(root / "scale", size, 10)
        t = Table(title=f"{size} nodes, separate processes, on {os.cpu_count()} cores")
        for col in ("measure", "value"):
            t.add_column(col)
        t.add_row(f"start to every node seeing {size} alive", f"{s['converged_s']:.1f} s")
        t.add_row("idle CPU per node (mean / max)", f"{s['cpu_pct']:.1f}% / {s['cpu_max']:.1f}%")
        t.add_row("idle loopback bytes/s per node", f"{s['lo_bytes_s']:,.0f} B/s")
        t.add_row("RSS per node (mean)", f"{s['rss_mib']:.1f} MiB")
        console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
