"""Group commit: concurrent single durable writes, against Redis ``appendfsync always``.

Writers (threads, or asyncio tasks through ``bindings.aio``) each do single durable puts
of small values, one after the other, into one node directory; Redis gets as many
clients (one connection each) doing SET, in the same run, interleaved round by round so a
drifting disk weighs on both alike. Reported: ops/s and p50/p99 latency of a call, and
the ratios. Then replication: a 3-node cluster of ``crdtstore serve`` processes, 8 writer
threads of single commits into n1's directory, and updates/s until both peers hold all.

    .venv/bin/python bench/bench_group_commit.py [--per-writer 300] [--rounds 3]
        [--only local|replication|receive|propagation|processes] [--rate 5000 --seconds 10]
        [--baseline ../main]

``--baseline`` runs the processes part (several processes writing one directory) with
another checkout's package too, interleaved, for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_replication import entries, start_cluster, stop_all
from bench_storage import redis_server
from rich.console import Console
from rich.table import Table

import crdtstore
from bindings.aio import AsyncNode
from crdtstore.testing.localcluster import free_port, wait_until

console = Console()
VALUE = "v" * 20


class Run:
    """One measurement: ops/s over all writers, and every call's latency (ms)."""

    def __init__(self, ops: int, seconds: float, lat_ms: list[float]) -> None:
        self.rate = ops / seconds
        lat_ms.sort()
        self.p50 = statistics.median(lat_ms)
        self.p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]


def threads(writers: int, per: int, put: Callable[[int, int], Any]) -> Run:
    """``writers`` threads, each calling ``put(writer, i)`` ``per`` times."""
    lat: list[list[float]] = [[] for _ in range(writers)]
    start_line = threading.Barrier(writers + 1)

    def work(w: int) -> None:
        out = lat[w]
        start_line.wait()
        for i in range(per):
            t = time.perf_counter()
            put(w, i)
            out.append((time.perf_counter() - t) * 1000)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in pool:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return Run(writers * per, time.perf_counter() - start, [x for xs in lat for x in xs])


async def tasks(writers: int, per: int, put: Callable[[int, int], Any]) -> Run:
    """``writers`` asyncio tasks, each awaiting ``put(writer, i)`` ``per`` times."""
    lat: list[float] = []

    async def work(w: int) -> None:
        for i in range(per):
            t = time.perf_counter()
            await put(w, i)
            lat.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(work(w) for w in range(writers)))
    return Run(writers * per, time.perf_counter() - start, lat)


def disk(root: Path, count: int = 200) -> tuple[float, float]:
    """This disk's flush costs now (ms, medians): a 4 KiB write and ``fdatasync`` (what
    Redis's ``appendfsync always`` pays per event-loop turn), and one LMDB commit of one
    small put with LMDB's two flushes (data pages, then the meta page), which every
    durable commit here pays (the meta flush outside the writer lock)."""
    import lmdb

    path = root / f"disk-{time.monotonic_ns()}"
    path.mkdir()
    flush, commit = [], []
    fd = os.open(path / "file", os.O_RDWR | os.O_CREAT)
    env = lmdb.open(str(path / "lmdb"), map_size=1 << 26, sync=True, metasync=True)
    try:
        os.write(fd, b"\0" * (count * 4096))
        os.fdatasync(fd)
        for i in range(count):
            t = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, i * 4096)
            os.fdatasync(fd)
            flush.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(b"k%d" % i, VALUE.encode())
            commit.append((time.perf_counter() - t) * 1000)
    finally:
        env.close()
        os.close(fd)
    return statistics.median(flush), statistics.median(commit)


def local(root: Path, per: int, rounds: int, table: Table) -> None:
    import redis
    import redis.asyncio as aredis

    configs = (("1 thread", 1), ("8 threads", 8), ("32 threads", 32), ("8 asyncio tasks", -8))
    ours: dict[str, list[Run]] = {name: [] for name, _ in configs}
    theirs: dict[str, list[Run]] = {name: [] for name, _ in configs}
    groups: dict[str, list[float]] = {name: [] for name, _ in configs}
    with redis_server(root / "redis", "--appendonly", "yes", "--appendfsync", "always") as r:
        if r is None:
            console.print("[red]redis-server or redis-py missing: no reference[/]")
            return
        port = r.connection_pool.connection_kwargs["port"]
        flushes: list[tuple[float, float]] = []
        for rnd in range(rounds):
            flushes.append(disk(root))
            for name, n in configs:
                path = root / f"crdt-{rnd}-{n}"
                if n > 0:
                    ours[name].append(_ours(path, n, per, groups[name]))
                    theirs[name].append(_theirs(redis, port, n, per, f"{rnd}-"))
                else:
                    ours[name].append(asyncio.run(_aio_ours(path, -n, per, groups[name])))
                    theirs[name].append(asyncio.run(_aio_redis(aredis, port, -n, per, rnd)))
    fsync, commit = _med(f for f, _ in flushes), _med(c for _, c in flushes)
    for name, _ in configs:
        a, b = ours[name], theirs[name]
        rate, rrate = _med(x.rate for x in a), _med(x.rate for x in b)
        p50, p99 = _med(x.p50 for x in a), _med(x.p99 for x in a)
        r50, r99 = _med(x.p50 for x in b), _med(x.p99 for x in b)
        ratio = _med(x.rate / y.rate for x, y in zip(a, b, strict=True))
        table.add_row(
            name,
            f"{rate:,.0f}/s  p50 {p50:.2f} / p99 {p99:.2f} ms  (group {_med(groups[name]):.1f})",
            f"{rrate:,.0f}/s  p50 {r50:.2f} / p99 {r99:.2f} ms",
            f"{ratio:.2f}x ops/s; p99 {p99 / r99:.2f}x",
        )
    # A writer's call returns no sooner than one LMDB commit after it began (two flushes
    # in turn: data, then the meta page that points to it); with W writers each waiting
    # for its own, ops/s <= W / commit time (Little's law), whatever the grouping.
    ceiling = [8_000 / c / x.rate for (_, c), x in zip(flushes, theirs["8 threads"], strict=True)]
    table.add_row(
        "this disk, same run",
        f"4 KiB write + fdatasync p50 {fsync:.3f} ms; LMDB commit (2 flushes) p50 {commit:.3f} ms",
        f"ceiling at 8 writers: 8 / commit = {8_000 / commit:,.0f}/s",
        f"{_med(ceiling):.2f}x Redis's 8 threads (median of rounds; goal 3x)",
    )


def _ours(path: Path, n: int, per: int, groups: list[float]) -> Run:
    with crdtstore.open(path, node_id="bench") as node:
        m = node.lww_map("m")
        m["warm"] = 0
        before = dict(node.stats)
        run = threads(n, per, lambda w, i: m.__setitem__(f"{w}-{i}", VALUE))
        groups.append(_group_size(before, node.stats))
        return run


def _theirs(redis: Any, port: int, n: int, per: int, prefix: str) -> Run:
    clients = [redis.Redis(port=port) for _ in range(n)]
    try:
        return threads(n, per, lambda w, i: clients[w].set(f"{prefix}{w}-{i}", VALUE))
    finally:
        for c in clients:
            c.close()


async def _aio_ours(path: Path, n: int, per: int, groups: list[float]) -> Run:
    async with await AsyncNode.open(str(path), node_id="bench") as node:
        m = node.lww_map("m")
        await m.set("warm", 0)
        before = dict(node.node.stats)
        run = await tasks(n, per, lambda w, i: m.set(f"{w}-{i}", VALUE))
        groups.append(_group_size(before, node.node.stats))
        return run


async def _aio_redis(aredis: Any, port: int, n: int, per: int, rnd: int) -> Run:
    clients = [aredis.Redis(port=port) for _ in range(n)]
    try:
        return await tasks(n, per, lambda w, i: clients[w].set(f"a{rnd}-{w}-{i}", VALUE))
    finally:
        for c in clients:
            await c.aclose()


def _group_size(before: dict[str, int], after: Any) -> float:
    commits = after["group_commits"] - before.get("group_commits", 0)
    writes = after["group_commit_writes"] - before.get("group_commit_writes", 0)
    return writes / commits if commits else float("nan")


def _med(xs: Any) -> float:
    return statistics.median(list(xs))


def _paced_threads(
    data: str, bind: str, seeds: list[str], writers: int, rate: int, seconds: float, out: Any
) -> None:
    """The role holder (it publishes each commit at once), ``writers`` threads of single
    durable puts, ``rate`` updates/s in all, each value the wall time of its put."""
    with crdtstore.open(data, bind=bind, seeds=seeds) as node:
        wait_until(
            lambda: len(node.members()) >= 3 and all(m.status == "alive" for m in node.members()),
            "the writer joined",
            60,
        )
        m = node.lww_map("lat")
        each = rate / writers
        start = time.perf_counter()

        def work(w: int) -> None:
            i = 0
            while (due := i / each) < seconds:
                ahead = due - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the writer, not waiting for a condition
                m[f"{w}-{i % 500}"] = time.time()
                i += 1

        pool = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        out.value = int(rate * seconds) / (time.perf_counter() - start)  # the rate achieved
        time.sleep(0.5)  # let the last publications leave before closing the sockets


def _samples(data: Path, ready: threading.Barrier, done: threading.Event, out: list[float]) -> None:
    """Latency (ms) of every change a peer's directory sees, until ``done`` and quiet."""
    with crdtstore.open(data, watch_poll_interval_ms=1) as reader:
        feed = reader.changes("lat")
        ready.wait()
        while True:
            change = feed.get(timeout=0.5)
            if change is None:
                if done.is_set():
                    return  # the writer is done, and nothing came for half a second
                continue
            if isinstance(change.new, float):
                out.append((time.time() - change.new) * 1000)


def propagation(root: Path, writers: int, rate: int, seconds: float, table: Table) -> None:
    """3 nodes: a role holder writing ``rate`` single commits/s from ``writers`` threads,
    two ``crdtstore serve`` peers; propagation latency of each update to each peer."""
    nodes = start_cluster(root / "cluster", 2)
    ctx = multiprocessing.get_context("spawn")  # no LMDB environment crosses a fork
    achieved = ctx.Value("d", 0.0)
    proc = ctx.Process(
        target=_paced_threads,
        args=(str(root / "writer"), f"tcp://127.0.0.1:{free_port()}", [nodes[0].bind],
              writers, rate, seconds, achieved),
    )  # fmt: skip
    lat: list[list[float]] = [[], []]
    ready, done = threading.Barrier(3), threading.Event()
    readers = [
        threading.Thread(target=_samples, args=(n.data, ready, done, out))
        for n, out in zip(nodes, lat, strict=True)
    ]
    try:
        for t in readers:
            t.start()
        ready.wait()
        proc.start()
        proc.join(seconds + 120)
    finally:
        done.set()
        for t in readers:
            t.join()
        if proc.is_alive():
            proc.terminate()
            proc.join()
        stop_all(nodes)
    cells = []
    for out in lat:
        out.sort()
        p99 = out[min(len(out) - 1, int(len(out) * 0.99))] if out else float("nan")
        median = statistics.median(out) if out else float("nan")
        cells.append(f"p50 {median:.1f} / p99 {p99:.1f} ms ({len(out):,} changes)")
    table.add_row(
        f"3 nodes, propagation at {rate:,} upd/s ({achieved.value:,.0f}/s written), "
        f"{writers} writer threads of single commits",
        f"peer 1: {cells[0]}",
        f"peer 2: {cells[1]}",
        "goal p99 < 50 ms",
    )


def replication(root: Path, writers: int, per: int, table: Table) -> None:
    """8 writer threads of single commits into n1's directory; time until n2 and n3 hold
    all (they learn of the commits from n1's daemon, which sees them at its next tick)."""
    nodes = start_cluster(root / "cluster", 3)
    try:
        total = writers * per
        start = time.perf_counter()
        with crdtstore.open(nodes[0].data) as node:
            m = node.lww_map("load")
            run = threads(writers, per, lambda w, i: m.__setitem__(f"{w}-{i}", i))
        for peer in nodes[1:]:
            wait_until(lambda p=peer: entries(p.data, "load") == total, "replicated", 600, 0.02)
        elapsed = time.perf_counter() - start
        # The receivers' side: batches applied per durable commit (one per group of
        # frames queued at one moment), from their status files.
        wait_until(lambda: all(n.status() for n in nodes[1:]), "status files", 30)
        received = [
            (n.counter("sync", "batches_applied"), n.counter("sync", "batch_group_commits"))
            for n in nodes[1:]
        ]
    finally:
        stop_all(nodes)
    per_commit = ", ".join(f"{b:,} batches in {c:,} commits" for b, c in received)
    table.add_row(
        f"3 nodes, {writers} writer thread(s) of single commits ({total:,} updates)",
        f"{total / elapsed:,.0f} upd/s replicated to 2 peers",
        f"written {run.rate:,.0f}/s, p99 {run.p99:.2f} ms",
        f"receivers: {per_commit}",
    )


def receive(root: Path, updates: int, batch: int, table: Table) -> None:
    """The receivers' side: one writer of ``transaction()``s of ``batch`` puts into n1's
    directory as fast as it can; updates/s until n2 and n3 hold all, and the batches the
    receivers applied per durable commit. (The receivers run the code the ``crdtstore
    serve`` processes import: ``PYTHONPATH=<other tree>`` runs another tree's.)"""
    nodes = start_cluster(root / "cluster", 3)
    try:
        start = time.perf_counter()
        with crdtstore.open(nodes[0].data) as node:
            m = node.lww_map("load")
            for first in range(0, updates, batch):
                with node.transaction():
                    for i in range(first, min(first + batch, updates)):
                        m[f"k{i}"] = i
        written = updates / (time.perf_counter() - start)
        for peer in nodes[1:]:
            wait_until(lambda p=peer: entries(p.data, "load") == updates, "replicated", 600, 0.02)
        elapsed = time.perf_counter() - start
        wait_until(lambda: all(n.status() for n in nodes[1:]), "status files", 30)
        received = [
            (n.counter("sync", "batches_applied"), n.counter("sync", "batch_group_commits"))
            for n in nodes[1:]
        ]
    finally:
        stop_all(nodes)
    per_commit = ", ".join(f"{b:,} batches in {c:,} commits" for b, c in received)
    table.add_row(
        f"3 nodes, transaction() of {batch:,} ({updates:,} updates)",
        f"{updates / elapsed:,.0f} upd/s replicated to 2 peers",
        f"written {written:,.0f}/s",
        f"receivers: {per_commit}",
    )


PROCESS_WRITER = """
import sys, threading, time, crdtstore
path, me, threads, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with crdtstore.open(path) as node:
    m = node.lww_map("m")
    m[me] = 0
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts together
    def work(t):
        for i in range(per):
            m[f"{me}-{t}-{i}"] = "v" * 20
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(time.perf_counter() - start, flush=True)
"""


def processes(root: Path, code: Path, count: int, threads_each: int, per: int) -> float:
    """``count`` processes (the package from ``code``), ``threads_each`` writer threads
    each, single durable puts into ONE directory: total ops/s."""
    env = dict(os.environ, PYTHONPATH=str(code))
    path = root / f"shared-{code.name}-{count}-{threads_each}"
    crdtstore.open(path, node_id="shared").close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_WRITER, str(path), f"p{i}", str(threads_each), str(per)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(count)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        p.communicate(timeout=600)
    return count * threads_each * per / (time.perf_counter() - start)


def shared_directory(
    root: Path, baseline: Path | None, per: int, rounds: int, table: Table
) -> None:
    """Several processes writing one directory, this tree against ``baseline`` (another
    checkout, e.g. main's worktree), interleaved round by round."""
    here = Path(__file__).resolve().parents[1]
    trees = [here] if baseline is None else [here, baseline]
    for count, threads_each in ((1, 1), (2, 1), (4, 1), (4, 8)):
        rates: dict[Path, list[float]] = {t: [] for t in trees}
        for _ in range(rounds):
            for tree in trees:
                rates[tree].append(processes(root, tree, count, threads_each, per))
        mine = _med(rates[here])
        ref = "" if baseline is None else f"{_med(rates[baseline]):,.0f}/s at {baseline}"
        ratio = "" if baseline is None else f"{mine / _med(rates[baseline]):.2f}x"
        table.add_row(
            f"{count} processes x {threads_each} threads, one directory",
            f"{mine:,.0f}/s",
            ref,
            ratio,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-writer", type=int, default=300, help="puts per writer")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--only",
        choices=("local", "replication", "receive", "propagation", "processes"),
        action="append",
    )
    parser.add_argument("--rate", type=int, default=5_000, help="propagation: updates/s")
    parser.add_argument("--seconds", type=float, default=10, help="propagation: duration")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout to compare the processes part with"
    )
    args = parser.parse_args()
    parts = set(args.only or ("local", "replication", "receive", "propagation", "processes"))
    load = os.getloadavg()[0]
    table = Table(title=f"bench_group_commit ({os.cpu_count()} cores, load {load:.2f})")
    for col in ("writers", "crdtstore (durable put)", "Redis SET, appendfsync always", "ratio"):
        table.add_column(col)
    other = Table(title="replication, and several processes writing one directory")
    for col in ("measure", "result", "reference", "ratio"):
        other.add_column(col)
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        if "local" in parts:
            local(Path(tmp), args.per_writer, args.rounds, table)
        if "replication" in parts:
            for writers, per in ((1, 2_000), (8, 1_000)):
                replication(Path(tmp) / f"r{writers}", writers, per, other)
        if "receive" in parts:
            receive(Path(tmp) / "recv", 100_000, 1_000, other)
        if "propagation" in parts:
            propagation(Path(tmp) / "prop", 8, args.rate, args.seconds, other)
        if "processes" in parts:
            shared_directory(Path(tmp), args.baseline, args.per_writer, args.rounds, other)
    if table.row_count:
        console.print(table)
    if other.row_count:
        console.print(other)
    return 0


if __name__ == "__main__":
    sys.exit(main())
