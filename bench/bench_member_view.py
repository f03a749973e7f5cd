"""What a process without the network role sees of a crash, against the role holder.

    .venv/bin/python bench/bench_member_view.py            # 3 kills, default timings
    .venv/bin/python bench/bench_member_view.py --quick    # 1 kill

Five ``crdtstore serve`` nodes with the default failure detection settings; beside each
survivor, a separate process opens the survivor's directory (``crdtstore.open(DIR)``, no
network role) and polls ``members()`` every 10 ms. One node is SIGKILLed; for each
survivor the table shows when its role holder's detector took the victim for suspect,
then dead (the ``status_since_ms`` it records in the directory), and when the process
beside it first saw each status; then the victim restarts, and each reader must see it
alive at a higher incarnation. The goal: each reader within one ``member_view_interval_ms``
of its holder.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crdtstore.settings import NodeSettings
from crdtstore.testing.localcluster import ServeNode, wait_until

console = Console()

READER = """
import json, sys, time
import crdtstore
path, victim = sys.argv[1], sys.argv[2]
last = None
with crdtstore.open(path) as node:
    print("READY", flush=True)
    while True:
        seen = {m.node_id: m for m in node.members()}.get(victim)
        state = None if seen is None else (seen.status, seen.incarnation)
        if state != last:
            last = state
            print(json.dumps({
                "at": time.time_ns() // 1_000_000,
                "status": None if seen is None else seen.status,
                "incarnation": None if seen is None else seen.incarnation,
                "since": None if seen is None else seen.status_since_ms,
            }), flush=True)
        time.sleep(0.01)  # the reader's polling interval
"""


class Reader:
    def __init__(self, node: ServeNode, victim: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.name = node.name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(node.data), victim],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"
        self.events: list[dict[str, Any]] = []

    def poll(self) -> None:
        assert self.proc.stdout is not None
        while select.select([self.proc.stdout], [], [], 0)[0]:
            line = self.proc.stdout.readline()
            if not line:
                return
            self.events.append(json.loads(line))

    def first(self, status: str, after: int) -> dict[str, Any] | None:
        for e in self.events:
            if e["at"] >= after and e["status"] == status:
                return e
        return None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def run(root: Path, kills: int) -> list[dict[str, Any]]:
    nodes: list[ServeNode] = []
    for i in range(5):
        seeds = [nodes[0].bind] if nodes else []
        nodes.append(ServeNode(root, f"n{i + 1}", seeds).start())
    victim, survivors = nodes[-1], nodes[:-1]
    wait_until(
        lambda: all(sum(s == "alive" for s, _ in n.member_status().values()) == 5 for n in nodes),
        "5 alive everywhere",
        60,
    )
    readers = [Reader(n, victim.name) for n in survivors]
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(kills):
            incarnation = max(
                e["incarnation"] or 0 for r in readers for e in r.events or [{"incarnation": 0}]
            )
            killed = wall_ms()
            victim.kill()

            def all_dead(since: int = killed) -> bool:
                for r in readers:
                    r.poll()
                return all(r.first("dead", since) for r in readers)

            wait_until(all_dead, "every reader sees the victim dead", 60, 0.05)
            for r in readers:
                suspect, dead = r.first("suspect", killed), r.first("dead", killed)
                assert suspect is not None and dead is not None, (r.name, r.events)
                rows.append(
                    {
                        "node": r.name,
                        "holder_suspect": suspect["since"] - killed,
                        "reader_suspect": suspect["at"] - killed,
                        "holder_dead": dead["since"] - killed,
                        "reader_dead": dead["at"] - killed,
                    }
                )
            restarted = wall_ms()
            victim.start()

            def all_back(since: int = restarted, old: int = incarnation) -> bool:
                for r in readers:
                    r.poll()
                return all(
                    any(
                        e["at"] >= since and e["status"] == "alive" and e["incarnation"] > old
                        for e in r.events
                    )
                    for r in readers
                )

            wait_until(all_back, "every reader sees the victim alive, newer incarnation", 60)
    finally:
        for r in readers:
            r.stop()
        for n in nodes:
            n.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one kill")
    args = parser.parse_args()
    interval = NodeSettings().membership.member_view_interval_ms
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        rows = run(Path(tmp), 1 if args.quick else 3)
    table = Table(
        title=(
            "a kill as seen by the role holder and by a process sharing its directory "
            f"(ms after SIGKILL; view refreshed every {interval} ms)"
        )
    )
    for col in (
        "survivor",
        "holder: suspect",
        "reader: suspect",
        "lag",
        "holder: dead",
        "reader: dead",
        "lag",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["node"],
            str(r["holder_suspect"]),
            str(r["reader_suspect"]),
            str(r["reader_suspect"] - r["holder_suspect"]),
            str(r["holder_dead"]),
            str(r["reader_dead"]),
            str(r["reader_dead"] - r["holder_dead"]),
        )
    console.print(table)
    lags = [r["reader_suspect"] - r["holder_suspect"] for r in rows]
    lags += [r["reader_dead"] - r["holder_dead"] for r in rows]
    console.print(
        f"lag reader - holder: median {statistics.median(lags):.0f} ms, max {max(lags)} ms; "
        f"{sum(lag <= interval for lag in lags)}/{len(lags)} within one refresh interval"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
