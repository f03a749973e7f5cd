"""tooz on ``crdt://`` against tooz on Redis and on etcd, measured in the same run.

Latency of ``join_group``, ``heartbeat`` and ``get_members``, and whether group state is
still readable by a coordinator cut off from the rest (crdt: its peer node is SIGKILLed;
Redis / etcd: the server is stopped). Debian's ``redis-server`` and ``etcd-server`` are
started on loopback by this script (installed with apt-get first when running as root
and missing) and stopped afterwards; a backend whose server is absent is skipped with a
message.

    .venv/bin/python bench/bench_tooz.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from machine import ensure_installed
from rich.console import Console
from rich.table import Table
from tooz import coordination

from crdtstore.testing.localcluster import ServeNode, free_port, wait_until

console = Console()


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def redis_server(root: Path) -> Iterator[tuple[str, Callable[[], None]] | None]:
    binary = ensure_installed("redis-server", "redis-server")
    if binary is None:
        console.print("[yellow]redis-server absent: Redis skipped[/]")
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), "redis-server listens", 30)
        yield f"redis://127.0.0.1:{port}", lambda: stop(proc)
    finally:
        stop(proc)


@contextmanager
def etcd_server(root: Path) -> Iterator[tuple[str, Callable[[], None]] | None]:
    binary = ensure_installed("etcd", "etcd-server")
    if binary is None:
        console.print("[yellow]etcd absent: etcd skipped[/]")
        yield None
        return
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--data-dir",
            str(root / "etcd"),
            "--name",
            "bench",
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"bench=http://127.0.0.1:{peer}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(client), "etcd listens", 30)
        yield f"etcd3+http://127.0.0.1:{client}?api_version=v3", lambda: stop(proc)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@contextmanager
def crdt_cluster(root: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """Node A (the coordinator's, in this process) and node B (a serve process)."""
    peer = ServeNode(root, "peer", []).start()
    url = f"crdt://{root / 'a'}?bind=tcp://127.0.0.1:{free_port()}&seed={peer.bind}&timeout=30"
    try:
        yield url, peer.kill
    finally:
        if peer.alive():
            peer.stop()


def timed(fn: Callable[[], object], count: int) -> float:
    """Median latency of ``fn`` in milliseconds."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def measure(url: str, cut_off: Callable[[], None], count: int) -> dict[str, object]:
    coord = coordination.get_coordinator(url, b"bench-member")
    coord.start()
    try:
        groups = [f"g{i}-{os.getpid()}-{time.time_ns()}".encode() for i in range(count)]
        for g in groups:
            coord.create_group(g).get()
        it = iter(groups)
        join = timed(lambda: coord.join_group(next(it)).get(), count)
        beat = timed(coord.heartbeat, count)
        members = timed(lambda: coord.get_members(groups[0]).get(), count)
        cut_off()
        try:
            got = coord.get_members(groups[0]).get(timeout=10)
            readable = f"yes ({len(got)} member)"
        except Exception as exc:  # whatever the backend raises when its server is gone
            readable = f"no: {type(exc).__name__}"
        return {"join": join, "heartbeat": beat, "get_members": members, "readable": readable}
    finally:
        with suppress(Exception):
            coord.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    count = 100 if args.quick else 400
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        root = Path(tmp)
        with crdt_cluster(root) as (url, cut):
            results["crdt:// (2 nodes)"] = measure(url, cut, count)
        with redis_server(root) as server:
            if server is not None:
                results["redis"] = measure(*server, count)
        with etcd_server(root) as server:
            if server is not None:
                results["etcd"] = measure(*server, count)
    crdt = results["crdt:// (2 nodes)"]
    load = os.getloadavg()[0]
    table = Table(title=f"tooz latency, median of {count} calls (ms); load {load:.2f}")
    for col in (
        "backend",
        "join_group",
        "heartbeat",
        "get_members",
        "get_members vs crdt://",
        "readable when cut off",
    ):
        table.add_column(col)
    for name, r in results.items():
        ratio = float(r["get_members"]) / float(crdt["get_members"])  # type: ignore[arg-type]
        versus = "1x (goal: others >= 10x)" if r is crdt else f"{ratio:.1f}x slower"
        table.add_row(
            name,
            f"{r['join']:.3f}",
            f"{r['heartbeat']:.3f}",
            f"{r['get_members']:.3f}",
            versus,
            str(r["readable"]),
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
