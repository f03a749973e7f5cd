"""A new node's bootstrap in one process: the newcomer's own CPU per entry.

``bench_replication`` times a bootstrap between real processes, start-up, seed and
contention for the 2 cores included, so its figure moves with the machine's load. This
one runs the seed's and the newcomer's sync engines in one process over real LMDB
directories, passes their frames by hand, and times only the newcomer's steps (process
CPU time): the replies' arrival (their entries kept as the bytes they came in) and the
session's apply (one transaction, checking each entry as it writes its row). Beside it,
the machine's own limit: raw LMDB writing the rows the newcomer ends with, in one
transaction, measured in the same run.

    .venv/bin/python bench/bench_bootstrap.py            # 100,000 and 1,000,000 (~2 min)
    .venv/bin/python bench/bench_bootstrap.py --quick    # 100,000 only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lmdb
from rich.console import Console
from rich.table import Table

import crdtstore
from crdtstore.cli import tune_gc
from crdtstore.storage.replica import LMDBReplica
from crdtstore.sync.engine import Send, SyncEngine

console = Console()


def fill(path: Path, n: int) -> None:
    with crdtstore.open(path, node_id="seed", durability="async") as node:
        m = node.lww_map("inventory")
        for first in range(0, n, 50_000):
            with node.transaction():
                for i in range(first, min(first + 50_000, n)):
                    m[f"item-{i:08d}"] = {"qty": i % 97, "site": "dc1"}


def bootstrap(seed_dir: Path, new_dir: Path) -> tuple[float, float, int]:
    """CPU seconds of the newcomer's steps before the last one (the replies' arrival) and
    of the last one (the session's apply), and how many replies it received."""
    seed_replica, newcomer = LMDBReplica(seed_dir), LMDBReplica(new_dir, "new")
    try:
        seed = SyncEngine(seed_replica.node_id, seed_replica)
        new = SyncEngine("new", newcomer)
        seed.add_peer("new")
        new.add_peer(seed.node_id)
        now = int(time.time() * 1000)
        steps: list[float] = []
        queue = [("new", seed.node_id, out.data) for out in seed.greet("new")]
        while queue:
            to, sender, data = queue.pop(0)
            engine = new if to == "new" else seed
            start = time.process_time()
            outs = engine.on_messages([(sender, data, None)], now)
            if engine is new:
                steps.append(time.process_time() - start)
            queue.extend((out.peer, to, out.data) for out in outs if isinstance(out, Send))
        assert new.stats["range_sessions_completed"] >= 1, new.stats
        return sum(steps[:-1]), steps[-1], len(steps)
    finally:
        seed_replica.close()
        newcomer.close()


def raw_write(new_dir: Path, work: Path) -> tuple[float, int]:
    """CPU seconds of raw LMDB writing the newcomer's state rows into a new environment,
    in one transaction, in their order; and how many rows."""
    src = lmdb.open(str(new_dir), readonly=True, lock=False, max_dbs=16)
    rows = []
    with src.begin(db=src.open_db(b"state", create=False)) as txn:
        rows = list(txn.cursor())
    src.close()
    dst = lmdb.open(str(work / "raw"), map_size=4 << 30, max_dbs=2)
    db = dst.open_db(b"state")
    start = time.process_time()
    with dst.begin(write=True, db=db) as txn:
        for key, value in rows:
            txn.put(key, value)
    elapsed = time.process_time() - start
    dst.close()
    return elapsed, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="100,000 entries only")
    args = parser.parse_args()
    if args.quick:
        args.entries = [100_000]
    tune_gc()  # as `crdtstore serve` does
    table = Table(title="bench_bootstrap: the newcomer's CPU, in one process")
    for column in ("entries", "arrival (replies)", "apply", "per entry", "raw LMDB, same rows"):
        table.add_column(column, justify="right")
    for n in args.entries:
        with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as tmp:
            work = Path(tmp)
            console.print(f"filling a seed with {n:,} entries ...")
            fill(work / "seed", n)
            arrival, apply, replies = bootstrap(work / "seed", work / "new")
            raw, rows = raw_write(work / "new", work)
            assert rows == n, rows
            per_entry = (arrival + apply) / n
            table.add_row(
                f"{n:,}",
                f"{arrival:.2f} s ({replies} replies)",
                f"{apply:.2f} s",
                f"{per_entry * 1e6:.1f} us = {1 / per_entry:,.0f} entries/s of CPU",
                f"{raw:.2f} s; apply {apply / raw:.1f}x",
            )
    console.print(table)


if __name__ == "__main__":
    main()
