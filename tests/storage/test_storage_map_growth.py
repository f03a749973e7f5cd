"""Opening a directory while another process grows its LMDB map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import crdtstore

GROWER = """
import sys, crdtstore
with crdtstore.open(sys.argv[1], map_size=1 << 20) as node:
    m = node.lww_map("m")
    print("ready", flush=True)
    for r in range(40):
        with node.transaction():
            for i in range(2000):
                m[r * 2000 + i] = "x" * 100
"""


def test_open_while_another_process_grows_the_map(tmp_path: Path) -> None:
    data = tmp_path / "n"
    crdtstore.open(data, map_size=1 << 20).close()
    grower = subprocess.Popen(
        [sys.executable, "-c", GROWER, str(data)], stdout=subprocess.PIPE, text=True
    )
    assert grower.stdout is not None and grower.stdout.readline().strip() == "ready"
    seen = [0]
    # Every open races the other process's map growth; each must succeed, and what it
    # reads only grows (each commit is whole: a multiple of one transaction's 2,000).
    while grower.poll() is None or len(seen) == 1:
        with crdtstore.open(data, map_size=1 << 20) as node:
            count = len(node.lww_map("m"))
        assert count >= seen[-1] and count % 2000 == 0
        seen.append(count)
    assert grower.wait() == 0
    with crdtstore.open(data, map_size=1 << 20) as node:
        assert len(node.lww_map("m")) == 80_000
