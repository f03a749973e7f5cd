"""Disk use under overwrites: a node's file against its live state, table by table.

The shape of issue 22's soak, on one node: ``--keys`` keys overwritten again and again,
``--per-txn`` per transaction, for ``--rounds`` rounds (a round writes every key once).
After each reported round it prints the data file's size (allocated blocks, not the
sparse apparent size), the map's used pages, and each table's bytes of pages as LMDB
counts them (``stat``: branch, leaf and overflow pages times the page size). Live state is
what the state and bucket tables hold; the ratio is the file over it.

    .venv/bin/python bench/bench_disk_use.py [--keys 10000] [--per-txn 100] [--rounds 20]
        [--value-bytes 40] [--bind tcp://127.0.0.1:0] [--durability async] [--json]

``--bind`` runs the node with its replicator (a cluster of one: no peer's digest trims
the delta log, only its own bound does); without it the node is local-only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crdtstore
from crdtstore.storage import layout

MIB = 1024 * 1024


def table_bytes(node: crdtstore.Node) -> dict[str, int]:
    replica = node.replica
    out = {}
    with replica.env.begin() as txn:
        for name in layout.TABLES:
            st = txn.stat(replica.dbs[name])
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            out[name] = pages * st["psize"]
    return out


def measure(node: crdtstore.Node, path: Path, round_: int, writes: int) -> dict[str, Any]:
    tables = table_bytes(node)
    data = path / "data.mdb"
    info, psize = node.replica.env.info(), node.replica.env.stat()["psize"]
    live = tables["state"] + tables["buckets"]
    allocated = data.stat().st_blocks * 512
    return {
        "round": round_,
        "writes": writes,
        "file_bytes": allocated,
        "map_used_bytes": (info["last_pgno"] + 1) * psize,
        "live_bytes": live,
        "file_over_live": round(allocated / live, 2) if live else None,
        "tables": tables,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--per-txn", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--value-bytes", type=int, default=40)
    parser.add_argument("--report-every", type=int, default=5, help="rounds between reports")
    parser.add_argument("--bind", default=None, help="run the replicator, bound here")
    parser.add_argument("--durability", choices=("sync", "async"), default="async")
    parser.add_argument("--json", action="store_true", help="one JSON object per report")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        path = Path(tmp) / "n1"
        with crdtstore.open(path, "n1", bind=args.bind, durability=args.durability) as node:
            cfg = node.lww_map("config")
            writes, started = 0, time.perf_counter()
            reports = []
            for round_ in range(1, args.rounds + 1):
                pad = "v" * max(0, args.value_bytes - 12)
                for start in range(0, args.keys, args.per_txn):
                    with node.transaction():
                        for k in range(start, min(start + args.per_txn, args.keys)):
                            cfg[f"key-{k:06d}"] = f"{round_:06d}-{k:06d}{pad}"
                    writes += min(args.per_txn, args.keys - start)
                if round_ % args.report_every == 0 or round_ == args.rounds:
                    report = measure(node, path, round_, writes)
                    reports.append(report)
                    print_report(report, args.json)
            elapsed = time.perf_counter() - started
    if not args.json:
        first, last = reports[0], reports[-1]
        print(
            f"{writes} writes in {elapsed:.1f} s; file {last['file_bytes'] / MIB:.1f} MiB "
            f"after round {last['round']} ({first['file_bytes'] / MIB:.1f} MiB after round "
            f"{first['round']}), live {last['live_bytes'] / MIB:.1f} MiB, "
            f"file/live {last['file_over_live']}"
        )


def print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
        return
    tables = "  ".join(f"{name} {b / MIB:.2f}" for name, b in report["tables"].items())
    print(
        f"round {report['round']:4d}  writes {report['writes']:8d}  "
        f"file {report['file_bytes'] / MIB:7.2f} MiB  used {report['map_used_bytes'] / MIB:7.2f}"
        f"  live {report['live_bytes'] / MIB:6.2f}  x{report['file_over_live']}  "
        f"tables (MiB): {tables}",
        flush=True,
    )


if __name__ == "__main__":
    main()
