"""Instructions per write of the batch workloads, counted by valgrind: a figure the shared
machine's noise does not move, for comparing two trees or one change.

bench_storage times transaction() of 1,000 against raw LMDB; on this machine its absolute
figures drift by 2x within minutes and a change of 5% is lost in them. Here each workload
runs under cachegrind twice, with 2 and with 12 transactions after the same set-up, and
the difference over the 10,000 extra writes is its user-space instructions per write:
repeatable to ~0.5% (``PYTHONHASHSEED`` is fixed). Instructions are not time: what the
kernel does for the commit (page writes, fsync) is not counted, and instructions that
miss the cache cost more than those that hit (compiling the write path with mypyc took
17% of its instructions and 5% of its time). Use it to see what a change removed, and
bench_storage to see what that is worth.

Installs Debian's ``valgrind`` with apt-get when running as root and missing; skips with
a message when it stays absent.

    .venv/bin/python bench/bench_instructions.py [--tree DIR ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import ensure_installed

REPO = Path(__file__).resolve().parents[1]
console = Console()

CHILD = r"""
import sys, tempfile
from pathlib import Path
import crdtstore  # the measured tree's (PYTHONPATH), before bench_storage puts this one first
sys.path.insert(0, sys.argv[4])
from bench_storage import RawTable, one_batch
kind, n = sys.argv[1], int(sys.argv[2])
tmp = Path(tempfile.mkdtemp(prefix="bench-instr-", dir=sys.argv[3]))
if kind.startswith("raw"):
    batch = RawTable(tmp / "raw").batch
else:
    node = crdtstore.open(tmp / "n", node_id="bench")
    m, s = node.lww_map("m"), node.or_set("s")
    write = m.__setitem__ if kind.startswith("put") else (lambda k, v: s.add(k))
    batch = lambda r_: one_batch(node, write, r_)
for r_ in range(10):
    batch(r_)
for r_ in range(n):  # keys r_ * 1000 on: rewrite the first 10,000, or new ones
    batch(r_ % 10 if kind.endswith("old") else 100 + r_)
"""
"""One workload in a child of its own, with bench_storage's RawTable and one_batch: 10
transactions of set-up, then ``n`` of ``kind``."""

WORKLOADS = {
    "put new": "puts, new keys",
    "put old": "puts, existing keys",
    "add new": "adds, new elements",
    "add old": "adds, existing elements",
    "raw new": "raw LMDB, new rows",
    "raw old": "raw LMDB, existing rows",
}
FEW, MANY = 2, 12


def instructions(valgrind: str, tree: Path, kind: str, n: int, workdir: str) -> int:
    """User-space instructions of the child running ``n`` transactions of ``kind``."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    out = subprocess.run(
        [
            valgrind,
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CHILD,
            kind.replace(" ", "-"),
            str(n),
            workdir,
            str(Path(__file__).resolve().parent),
        ],
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        timeout=1800,
        check=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_write(valgrind: str, tree: Path, kind: str, workdir: str) -> float:
    few = instructions(valgrind, tree, kind, FEW, workdir)
    many = instructions(valgrind, tree, kind, MANY, workdir)
    return (many - few) / ((MANY - FEW) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="a checkout to measure (repeatable; default: this one), e.g. a git worktree "
        "of an older commit",
    )
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree] if args.tree else [REPO]
    last = trees[-1]
    valgrind = ensure_installed("valgrind", "valgrind")
    if valgrind is None:
        console.print("valgrind is absent and could not be installed: skipped")
        return
    table = Table(
        "instructions per write",
        *(str(t) for t in trees),
        "last tree vs raw LMDB",
        title="bench_instructions",
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as workdir:
        counts = {
            (tree, kind): per_write(valgrind, tree, kind, workdir)
            for tree in trees
            for kind in WORKLOADS
            if tree == last or not kind.startswith("raw")  # raw LMDB is the same in each
        }
    for kind, what in WORKLOADS.items():
        raw = counts[(last, "raw " + kind.split()[1])]
        cells = [f"{counts[(t, kind)]:,.0f}" if (t, kind) in counts else "" for t in trees]
        ratio = "" if kind.startswith("raw") else f"{counts[(last, kind)] / raw:.2f}x"
        table.add_row(what, *cells, ratio)
    console.print(table)


if __name__ == "__main__":
    main()
