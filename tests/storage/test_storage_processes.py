"""Behaviour between real processes: crash safety, sharing a directory, the network role."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import crdtstore
from crdtstore.storage import LMDBReplica

WRITER = """
import sys, crdtstore
path, start = sys.argv[1], int(sys.argv[2])
with crdtstore.open(path, node_id="w") as node:
    m, s = node.lww_map("m"), node.or_set("s")
    print("ready", flush=True)
    i = start
    while True:
        if i % 3 == 0:
            with node.transaction():
                m[f"k{i}"] = i
                s.add(i)
        else:
            m[f"k{i}"] = [i, "x" * (i % 50)]
        print(i, flush=True)  # printed only after the call returned: acknowledged
        i += 1
"""


def test_acknowledged_writes_survive_sigkill(tmp_path: Path, spawn: Any, lines: Any) -> None:
    path = str(tmp_path / "node")
    rng = random.Random(1234)
    acked: list[int] = []
    start = 0
    for _ in range(20):
        child = spawn(WRITER, path, str(start))
        out = lines(child)
        out.expect("ready")
        for _ in range(rng.randint(0, 25)):
            acked.append(int(out.expect("")))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        acked.extend(int(line) for line in out.rest() if line)
        # The directory opens cleanly and holds every acknowledged write.
        with crdtstore.open(path, node_id="w") as node:
            m, s = node.lww_map("m"), node.or_set("s")
            for i in acked:
                assert m[f"k{i}"] == (i if i % 3 == 0 else [i, "x" * (i % 50)])
                if i % 3 == 0:
                    assert i in s
            start = max(acked, default=start) + 1000  # fresh keys for the next round
    assert len(acked) > 20


SHARER = """
import sys, crdtstore
path, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with crdtstore.open(path) as node:
    m, s = node.lww_map("m"), node.or_set("s")
    print("ready", flush=True)
    for i in range(n):
        if i % 10 == 0:
            with node.transaction():
                m["shared"] = f"{me}{i}"
                s.add(f"{me}-{i}")
        else:
            m[f"{me}-{i}"] = i
            s.add(f"{me}-{i}")
    while "parent" not in m:   # the parent's write must show up here too
        pass
    print("saw", m["parent"], flush=True)
"""


def test_two_processes_share_a_directory(
    tmp_path: Path, spawn: Any, lines: Any, wait_for: Any
) -> None:
    path = str(tmp_path / "node")
    n = 60
    with crdtstore.open(path, node_id="shared") as node:
        seen: set[Any] = set()
        node.watch("s", lambda change: seen.add(change.key))
        children = [spawn(SHARER, path, me, str(n)) for me in ("p", "q")]
        outs = [lines(child) for child in children]
        for out in outs:
            out.expect("ready")
        want = {f"{me}-{i}" for me in ("p", "q") for i in range(n)}
        # The watcher in this process sees the other processes' writes (polled, bounded).
        wait_for(lambda: want <= seen, what="watch events from other processes")
        node.lww_map("m")["parent"] = 42
        for out, child in zip(outs, children, strict=True):
            assert out.expect("saw") == "saw 42"
            assert child.wait(timeout=20) == 0
        s, m = node.or_set("s"), node.lww_map("m")
        assert set(s) == want
        assert {k for k in m if k != "shared"} == {
            f"{me}-{i}" for me in ("p", "q") for i in range(n) if i % 10
        } | {"parent"}
        assert m["shared"] in {f"{me}{i}" for me in ("p", "q") for i in range(0, n, 10)}
        ctx = node.replica.context("s")
        assert ctx.vv == {"shared": 2 * n}  # every mutation consumed one dot of the node


ROLE = """
import sys, crdtstore
path = sys.argv[1]
node = crdtstore.open(
    path, node_id="r", bind="tcp://127.0.0.1:0", role_standby=True, role_poll_interval_ms=20
)
node.on_role_acquired.append(lambda: print("acquired", flush=True))
print("role", node.has_network_role, flush=True)
import threading; threading.Event().wait()  # hold the role until killed
"""


def test_network_role_moves_when_its_holder_is_killed(
    tmp_path: Path, spawn: Any, lines: Any
) -> None:
    path = str(tmp_path / "node")
    LMDBReplica(path, "r").close()
    first = spawn(ROLE, path)
    out1 = lines(first)
    assert out1.expect("role") == "role True"
    second = spawn(ROLE, path)
    out2 = lines(second)
    assert out2.expect("role") == "role False"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert out2.expect("acquired") == "acquired"
