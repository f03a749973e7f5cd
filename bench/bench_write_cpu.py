"""CPU per durable write: what each single ``m[k] = v`` costs the process, not the clock.

On a shared machine ops/s swing with the neighbours' load; the process's own CPU time
(user + system, from ``getrusage``) per write moves far less, and it is what bounds the
rate of a GIL-bound writer. Each run opens a fresh directory in a process of its own and
has W threads do single puts; reported per write: CPU (user, system), voluntary and
involuntary context switches, and the group size. With several ``--tree`` checkouts the
runs alternate tree by tree, round by round (an interleaved A/B), and medians are shown.

    .venv/bin/python bench/bench_write_cpu.py [--threads 1 8] [--per-writer 1000]
        [--rounds 6] [--durability sync|async] [--tree ../main --tree .]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parents[1]

# Run in a child process whose sys.path starts with the tree under test.
RUN = """
import json, os, resource, sys, tempfile, threading, time
import crdtstore
writers, per, durability = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with tempfile.TemporaryDirectory(prefix="crdtstore-cpu-") as tmp:
    with crdtstore.open(os.path.join(tmp, "n"), node_id="bench", durability=durability) as node:
        m = node.lww_map("m")
        m["warm"] = 0
        start_line = threading.Barrier(writers + 1)
        def work(w):
            start_line.wait()
            for i in range(per):
                m[f"{w}-{i}"] = "v" * 20
        pool = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
        for t in pool:
            t.start()
        before = resource.getrusage(resource.RUSAGE_SELF)
        commits = node.stats["group_commits"]
        start_line.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        n = writers * per
        print(json.dumps({
            "rate": n / seconds,
            "user": (after.ru_utime - before.ru_utime) / n * 1e6,
            "sys": (after.ru_stime - before.ru_stime) / n * 1e6,
            "vcsw": (after.ru_nvcsw - before.ru_nvcsw) / n,
            "ivcsw": (after.ru_nivcsw - before.ru_nivcsw) / n,
            "group": n / max(1, node.stats["group_commits"] - commits),
        }))
"""


def run(tree: Path, writers: int, per: int, durability: str) -> dict[str, float]:
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n{RUN}"
    out = subprocess.run(
        [sys.executable, "-c", code, str(writers), str(per), durability],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--per-writer", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (median)")
    parser.add_argument("--durability", choices=("sync", "async"), default="sync")
    parser.add_argument(
        "--tree", type=Path, action="append", help="a checkout to measure (repeat for A/B)"
    )
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [HERE]]
    load = os.getloadavg()
    results: dict[tuple[Path, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for writers in args.threads:
            for tree in trees:
                results.setdefault((tree, writers), []).append(
                    run(tree, writers, args.per_writer, args.durability)
                )
    table = Table(
        title=f"CPU per write ({args.durability}; {os.cpu_count()} cores, load "
        f"{load[0]:.1f} -> {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds)"
    )
    for col in ("tree", "threads", "CPU us/write (user + sys)", "ops/s", "switches/write"):
        table.add_column(col)
    for (tree, writers), runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        cpu = statistics.median(r["user"] + r["sys"] for r in runs)
        table.add_row(
            str(tree),
            str(writers),
            f"{cpu:.1f} ({med('user'):.1f} + {med('sys'):.1f})",
            f"{med('rate'):,.0f}",
            f"{med('vcsw'):.2f} + {med('ivcsw'):.2f} (group {med('group'):.1f})",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
