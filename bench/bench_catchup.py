"""The crash-restart recipe that once left a replica diverged for good, tried many times.

    .venv/bin/python bench/bench_catchup.py              # 20 tries, ~6 minutes
    .venv/bin/python bench/bench_catchup.py --tries 5    # quicker

Three ``crdtstore serve`` nodes on loopback; a writer process on each node's directory
puts its own keys and five keys all writers share, paced at ``--rate`` writes a second;
one node is SIGKILLed for 3 s (well inside suspect + dead, so its peers keep their logs
of its gap) and restarted; the writers stop. A try is *stuck* when the replicas are not
identical ``--bound`` seconds after the writers stopped. Catch-up time runs from the
writers' stop to the moment every replica's dump is identical (polled; the poll's
period, about the cost of three ``crdt-inspect`` runs, bounds the error).

Also reported, summed over the tries, the restarted node's counters that tell how it
caught up: repairs, log gaps (a range session), and ``stuck_fallbacks`` (the liveness
net; 0 means repair alone did it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import crdtstore
from crdtstore.testing.localcluster import ServeNode, same_state, wait_until

console = Console()

WRITER = """
import sys, time, crdtstore
data, name, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
with crdtstore.open(data) as node:
    m = node.lww_map("cfg")
    i, start = 0, time.monotonic()
    while True:
        m[f"{name}-{i}"] = i
        m[f"shared{i % 5}"] = f"{name}-{i}"
        i += 1
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
"""


def one_try(root: Path, rate: float, bound: float) -> dict[str, float]:
    nodes: list[ServeNode] = []
    for i in range(3):
        seeds = [nodes[0].bind] if nodes else []
        nodes.append(ServeNode(root, f"n{i + 1}", seeds).start())
    writers: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(
            lambda: all(
                sum(s == "alive" for s, _ in n.member_status().values()) == 3 for n in nodes
            ),
            "all alive",
            60,
        )
        for node in nodes:
            with crdtstore.open(node.data) as handle:
                handle.lww_map("cfg")[f"hello-{node.name}"] = 1
        wait_until(lambda: same_state(nodes, ["cfg"]), "first writes replicated", 60)
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(n.data), n.name, str(rate)])
            for n in nodes
        ]
        time.sleep(2.0)  # the writers' run before the fault
        nodes[2].kill()
        time.sleep(3.0)  # the fault: down for 3 s
        nodes[2].start()
        time.sleep(2.0)  # the writers' run after the restart
        for w in writers:
            w.kill()
            w.wait()
        stopped = time.monotonic()
        converged = True
        try:
            wait_until(lambda: same_state(nodes, ["cfg"]), "converged", bound)
        except AssertionError:
            converged = False
        took = time.monotonic() - stopped
        status = nodes[2].status() or {}
        sync = status.get("sync", {})
        return {
            "stuck": 0.0 if converged else 1.0,
            "catchup_s": took,
            "repairs": float(sync.get("repairs_requested", 0)),
            "log_gaps": float(sync.get("log_gaps", 0)),
            "stuck_fallbacks": float(sync.get("stuck_fallbacks", 0)),
            "entries": float(len(nodes[0].dump("cfg"))),
        }
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
        for node in nodes:
            if node.alive():
                node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--rate", type=float, default=150.0, help="writes/s per writer")
    parser.add_argument("--bound", type=float, default=60.0, help="s to wait for convergence")
    parser.add_argument("--quick", action="store_true", help="5 tries")
    args = parser.parse_args()
    tries = 5 if args.quick else args.tries
    results = []
    for i in range(tries):
        with tempfile.TemporaryDirectory(prefix="catchup-") as tmp:
            r = one_try(Path(tmp), args.rate, args.bound)
        results.append(r)
        state = "STUCK" if r["stuck"] else f"caught up in {r['catchup_s']:.2f} s"
        console.print(f"try {i + 1}/{tries}: {state} ({int(r['entries'])} entries)")
    caught = [r["catchup_s"] for r in results if not r["stuck"]]
    table = Table(title=f"crash-restart with writers sharing keys, {tries} tries")
    for column in ("tries", "stuck", "catch-up p50 s", "catch-up max s"):
        table.add_column(column, justify="right")
    for column in ("repairs", "log gaps", "stuck fallbacks"):
        table.add_column(f"{column} (sum)", justify="right")
    table.add_row(
        str(tries),
        str(int(sum(r["stuck"] for r in results))),
        f"{statistics.median(caught):.2f}" if caught else "-",
        f"{max(caught):.2f}" if caught else "-",
        str(int(sum(r["repairs"] for r in results))),
        str(int(sum(r["log_gaps"] for r in results))),
        str(int(sum(r["stuck_fallbacks"] for r in results))),
    )
    console.print(table)
    return 1 if any(r["stuck"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
