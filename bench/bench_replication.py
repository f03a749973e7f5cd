"""Replication between real processes: throughput, latency, wire bytes, idle cost, bootstrap.

Every node is a ``crdtstore serve`` process on loopback (or, where the writer must be the
node holding the network role, a process that opens the node with ``bind``). Figures are
reported beside limits of this machine measured in the same run (raw pyzmq PUB/SUB
messages/s, loopback bytes), because the machine is shared and absolute times drift.

    .venv/bin/python bench/bench_replication.py            # ~5 minutes, bootstrap up to 1M
    .venv/bin/python bench/bench_replication.py --quick    # ~2 minutes, bootstrap 100k only
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import zmq
from machine import lo_bytes, status_kib
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import crdtstore
from crdtstore.testing.localcluster import ServeNode, free_port, wait_until

console = Console()
MSG = b"x" * 60
# spawn, not fork: the bench process holds LMDB environments, which must not cross a fork.
SPAWN = mp.get_context("spawn")
PARTS = ("throughput", "latency", "idle", "bootstrap")
STARTED: list[ServeNode] = []
"""Every node this run started, stopped at the end even when a measurement fails."""


# -- the machine's limit: raw pyzmq PUB/SUB -----------------------------------------------


def _raw_sub(endpoint: str, ready: str, count: int, out: Any) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    push = ctx.socket(zmq.PUSH)
    push.connect(ready)
    while sub.recv() != b"go":  # the publisher repeats "go" until we are subscribed
        pass
    push.send(b"ready")
    got, start = 0, 0.0
    while got < count:
        if sub.recv() != b"go":
            if got == 0:
                start = time.perf_counter()
            got += 1
    out.put(count / (time.perf_counter() - start))


def raw_pubsub_rate(count: int) -> float:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    pull = ctx.socket(zmq.PULL)
    ready_port = pull.bind_to_random_port("tcp://127.0.0.1")
    out: Any = SPAWN.Queue()
    proc = SPAWN.Process(
        target=_raw_sub,
        args=(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{ready_port}", count, out),
    )
    proc.start()
    while not pull.poll(10):
        pub.send(b"go")
    pull.recv()
    for _ in range(count):
        pub.send(MSG)
    rate: float = out.get(timeout=120)
    proc.join()
    ctx.destroy(linger=0)
    return rate


# -- helpers ---------------------------------------------------------------------------------


def entries(data: Path, namespace: str) -> int:
    """Live entries of ``namespace`` in a node directory, read through the public API."""
    with crdtstore.open(data) as node:
        if namespace not in node.namespaces():
            return 0
        return len(node.lww_map(namespace))


def start_cluster(root: Path, count: int, **config: Any) -> list[ServeNode]:
    root.mkdir(parents=True, exist_ok=True)
    nodes: list[ServeNode] = []
    for i in range(count):
        seeds = [nodes[0].bind] if nodes else []
        nodes.append(ServeNode(root, f"n{i + 1}", seeds, config))
        STARTED.append(nodes[-1])
        nodes[-1].start()
    wait_until(
        lambda: all(
            sum(s == "alive" for s, _ in n.member_status().values()) == count for n in nodes
        ),
        f"{count} nodes see each other",
    )
    return nodes


def stop_all(nodes: list[ServeNode]) -> None:
    for node in nodes:
        node.stop()


# -- throughput ----------------------------------------------------------------------------------


def throughput(root: Path, updates: int, batch: int) -> dict[str, float]:
    """One writer process as fast as it can into n1; time until n2 and n3 hold everything."""
    nodes = start_cluster(root, 3)
    before = lo_bytes()
    start = time.perf_counter()
    with crdtstore.open(nodes[0].data) as writer:
        m = writer.lww_map("load")
        for first in range(0, updates, batch):
            with writer.transaction():
                for i in range(first, min(first + batch, updates)):
                    m[f"k{i}"] = i
    written = time.perf_counter() - start
    for peer in nodes[1:]:
        wait_until(lambda p=peer: entries(p.data, "load") == updates, "replicated", 600, 0.02)
    elapsed = time.perf_counter() - start
    wire = lo_bytes() - before
    stop_all(nodes)
    return {
        "written_per_s": updates / written,
        "replicated_per_s": updates / elapsed,
        "wire_bytes_per_update": wire / updates / 2,  # two peers receive each update
    }


# -- latency -------------------------------------------------------------------------------------


def _paced_writer(data: str, bind: str, seeds: list[str], rate: int, seconds: float) -> None:
    """The role holder writes ``rate`` stamped updates/s, committing every millisecond."""
    with crdtstore.open(data, bind=bind, seeds=seeds) as node:
        wait_until(
            lambda: len(node.members()) >= 3 and all(m.status == "alive" for m in node.members()),
            "the writer joined",
            60,
        )
        m = node.lww_map("lat")
        start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate)
            if due > sent:
                with node.transaction():
                    for i in range(sent, due):
                        m[i % 2000] = time.time()
                sent = due
            else:
                time.sleep(0.0005)  # pacing the writer, not waiting for a condition
        time.sleep(0.5)  # let the last publications leave before closing the sockets


def latency(root: Path, rate: int, seconds: float) -> dict[str, float]:
    nodes = start_cluster(root, 2)
    writer_dir = root / f"writer-{rate}"
    proc = SPAWN.Process(
        target=_paced_writer,
        args=(str(writer_dir), f"tcp://127.0.0.1:{free_port()}", [nodes[0].bind], rate, seconds),
    )
    samples: list[float] = []
    try:
        collect(nodes[1].data, proc, seconds, samples)
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join()
        stop_all(nodes)
    samples.sort()
    if not samples:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    return {
        "p50": statistics.median(samples),
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "n": len(samples),
    }


def collect(data: Path, proc: Any, seconds: float, samples: list[float]) -> None:
    """Latency of every change the peer's directory sees, until the writer is done."""
    with crdtstore.open(data, watch_poll_interval_ms=1) as reader:
        feed = reader.changes("lat")
        proc.start()
        deadline = time.monotonic() + seconds + 60
        while proc.is_alive() or not samples:
            change = feed.get(timeout=0.2)
            if change is not None and isinstance(change.new, float):
                samples.append((time.time() - change.new) * 1000)
            if time.monotonic() > deadline:
                break
        while (change := feed.get(timeout=0.5)) is not None:
            if isinstance(change.new, float):
                samples.append((time.time() - change.new) * 1000)


# -- idle ----------------------------------------------------------------------------------------


def idle(root: Path, seconds: float) -> float:
    nodes = start_cluster(root, 3)
    before, start = lo_bytes(), time.perf_counter()
    time.sleep(seconds)  # measuring what an idle cluster sends over this span
    rate = (lo_bytes() - before) / (time.perf_counter() - start) / len(nodes)
    stop_all(nodes)
    return rate


# -- bootstrap -----------------------------------------------------------------------------------


def session_seconds(log: Path) -> float | None:
    """Time from the start to the end of a node's first reconciliation session, from the
    timestamps of the lines the sync engine logs for them (None if either is missing)."""
    stamps = {}
    for line in log.read_text().splitlines():
        for mark in ("reconciling", "reconciled"):
            if f" {mark} " in line:
                stamps.setdefault(mark, datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
    if len(stamps) < 2:
        return None
    return (stamps["reconciled"] - stamps["reconciling"]).total_seconds()


def bootstrap(root: Path, n: int) -> tuple[float, float, float, float | None]:
    """Entries/s of an empty node's bootstrap from a seed holding ``n``, the newcomer's
    peak RSS in MiB (it holds what a session stages until the session ends), its seconds
    from start to READY, and its reconciliation session's seconds (from its log)."""
    root.mkdir(parents=True, exist_ok=True)
    seed_node = ServeNode(root, "seed", [])
    with crdtstore.open(seed_node.data, node_id="seed") as node:
        m = node.lww_map("inventory")
        for first in range(0, n, 50_000):
            with node.transaction():
                for i in range(first, min(first + 50_000, n)):
                    m[f"item-{i:08d}"] = {"qty": i % 97, "site": "dc1"}
    STARTED.append(seed_node)
    seed_node.start()
    newcomer = ServeNode(root, "new", [seed_node.bind])
    STARTED.append(newcomer)
    start = time.perf_counter()
    newcomer.start()
    ready = time.perf_counter() - start
    with Progress(
        TextColumn(f"bootstrap {n:,}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("copy", total=n)
        # Polled every 20 ms (a poll costs ~1 ms of CPU): the end of a 1 s bootstrap is
        # seen within 2% of it (a 0.2 s poll added up to a fifth to the 100,000 row).
        while (have := entries(newcomer.data, "inventory")) < n:
            progress.update(task, completed=have)
            time.sleep(0.02)
        progress.update(task, completed=n)
    elapsed = time.perf_counter() - start
    assert newcomer.proc is not None
    peak = status_kib("VmHWM", newcomer.proc.pid) / 1024
    stop_all([seed_node, newcomer])
    return n / elapsed, peak, ready, session_seconds(newcomer.log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, no 1M bootstrap")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    args = parser.parse_args()
    quick = args.quick
    load = os.getloadavg()[0]
    table = Table(title=f"bench_replication ({os.cpu_count()} cores, load {load:.2f})")
    for col in ("measure", "result", "reference", "ratio / goal"):
        table.add_column(col)
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        try:
            run(Path(tmp), quick, table, set(args.only or PARTS))
        finally:
            stop_all([n for n in STARTED if n.alive()])
    console.print(table)
    return 0


def run(root: Path, quick: bool, table: Table, parts: set[str]) -> None:
    raw = raw_pubsub_rate(200_000 if quick else 500_000)
    console.print(f"raw pyzmq PUB/SUB: {raw:,.0f} msgs/s")
    # The writer's batch size decides the figure: every durable commit writes (and fsyncs)
    # each page it dirtied, about one per key when its keys are scattered by their hash,
    # and so does each receiver's. transaction() of 10,000 dirties about half as many
    # pages per update as one of 1,000, on the writer and on both receivers.
    count = 100_000 if quick else 300_000
    runs = ((10_000, count), (1_000, count), (1, 2_000))
    for batch, count in runs if "throughput" in parts else ():
        r = throughput(root / f"tp{batch}", count, batch)
        label = f"transaction() of {batch:,}" if batch > 1 else "one commit per update"
        table.add_row(
            f"throughput, {label} ({count:,} updates)",
            f"{r['replicated_per_s']:,.0f} upd/s replicated to 2 peers "
            f"(written {r['written_per_s']:,.0f}/s)",
            f"raw PUB/SUB {raw:,.0f} msg/s",
            f"{r['replicated_per_s'] / raw:.2f}x raw; goal >= 50,000/s",
        )
        table.add_row(
            f"loopback bytes per update per peer ({label})",
            f"{r['wire_bytes_per_update']:,.0f} B",
            "",
            "",
        )
    for rate in (1_000, 5_000) if "latency" in parts else ():
        lat = latency(root / f"lat{rate}", rate, 5 if quick else 10)
        table.add_row(
            f"propagation latency at {rate:,} upd/s",
            f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms ({lat['n']:,} samples)",
            "",
            "goal p99 < 50 ms at 5,000/s",
        )
    if "idle" in parts:
        idle_rate = idle(root / "idle", 5 if quick else 10)
        table.add_row("idle loopback bytes/s per node (3 nodes)", f"{idle_rate:,.0f} B/s", "", "")
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    for n in sizes if "bootstrap" in parts else ():
        rate, peak, ready, session = bootstrap(root / f"boot{n}", n)
        # Where the time went: starting the process, then the session (rounds of queries
        # and replies, then one commit), and the rest (joining, the seed's greeting).
        during = "" if session is None else f", session {session:.1f} s"
        table.add_row(
            f"bootstrap of a new node from {n:,} entries",
            f"{rate:,.0f} entries/s ({n / rate:.1f} s)",
            f"newcomer peak RSS {peak:,.0f} MiB; READY after {ready:.2f} s{during}",
            f"{rate / 100_000:.2f}x goal (100,000/s)",
        )


if __name__ == "__main__":
    sys.exit(main())
