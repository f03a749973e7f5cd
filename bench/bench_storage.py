"""Storage benchmark: local reads, durable writes, batched writes, open time and memory.

Each figure is reported against the machine's own limit measured in the same run (raw
LMDB on the same disk) and against Redis (Debian's ``redis-server`` on loopback, started
and stopped here, installed with apt-get first when running as root and missing; skipped
with a message when it stays absent).

    .venv/bin/python bench/bench_storage.py [--entries 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import msgpack
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import ensure_installed

import crdtstore

console = Console()


def ops_per_s(fn: Callable[[int], Any], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def latencies_ms(fn: Callable[[int], Any], n: int) -> tuple[float, float]:
    return paired_latencies_ms([fn], n)[0]


def paired_latencies_ms(fns: list[Callable[[int], Any]], n: int) -> list[tuple[float, float]]:
    """p50 / p99 of each function, sampled in turn (a, b, a, b, ...) so that a disk whose
    fsync latency drifts during the run weighs on every side alike."""
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for fn, out in zip(fns, samples, strict=True):
            start = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - start) * 1000)
    result = []
    for out in samples:
        out.sort()
        result.append((statistics.median(out), out[int(len(out) * 0.99) - 1]))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(workdir: Path, *extra: str) -> Iterator[Any]:
    """A redis client connected to a fresh redis-server, or None when unavailable."""
    exe = ensure_installed("redis-server", "redis-server")
    try:
        import redis
    except ImportError:
        redis = None  # type: ignore[assignment]
    if exe is None or redis is None:
        yield None
        return
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def batched(node: crdtstore.Node, write: Callable[[int, int], Any], first: int, n: int) -> float:
    """Ops/s of ``n`` transactions of 1,000 writes of keys from ``first * 1000`` on."""
    start = time.perf_counter()
    for r_ in range(first, first + n):
        with node.transaction():
            for i in range(r_ * 1000, r_ * 1000 + 1000):
                write(i, i)
    return n * 1000 / (time.perf_counter() - start)


def scattered(i: int) -> int:
    """A key with no locality: ``i`` times a large odd constant, modulo 2**62 (a
    permutation, so keys stay distinct), like ids drawn at random."""
    return (i * 0x9E3779B97F4A7C15) % (1 << 62)


def raw_batches(
    path: Path, rounds: int, *, hash_bytes: int, key: Callable[[int], int] = int
) -> tuple[float, float]:
    """Bare LMDB doing what the store's batch benchmark does (sync, 1,000 puts per
    transaction, 50,000 rows filled first): puts/s of new keys, then of existing keys. Rows
    are keyed ``ns + blake2b(key)[:hash_bytes] + key``: 1 as the store keys them (storage
    format 4), 8 as format 3 did (neighbouring keys scattered over the table), 0 in plain
    key order. Keys are ``key(i)``. Values are 40 bytes, about a stored row's."""

    def put_rounds(txn_rounds: range) -> float:
        start = time.perf_counter()
        for r_ in txn_rounds:
            with env.begin(write=True) as txn:
                for i in range(r_ * 1000, r_ * 1000 + 1000):
                    ekey = msgpack.packb(key(i))
                    h = hashlib.blake2b(ekey, digest_size=8).digest()[:hash_bytes]
                    txn.put(b"\0\0\0\1" + h + ekey, value)
        return len(txn_rounds) * 1000 / (time.perf_counter() - start)

    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)
    try:
        value = os.urandom(40)
        put_rounds(range(50))
        return put_rounds(range(50, 50 + rounds)), put_rounds(range(rounds))
    finally:
        env.close()


OPEN_PROBE = """
import sys, time
sys.path.insert(0, sys.argv[2])
import crdtstore
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
t = time.perf_counter()
node = crdtstore.open(sys.argv[1])
m = node.lww_map("big")
m.get(7)
opened = time.perf_counter() - t
print(opened, before, rss())
node.close()
"""


def fill(path: Path, n: int) -> None:
    with crdtstore.open(path, node_id="bench", durability="async") as node:
        m = node.lww_map("big")
        step = 10_000
        for base in range(0, n, step):
            with node.transaction():
                for i in range(base, min(n, base + step)):
                    m[i] = i


def probe_open(path: Path) -> tuple[float, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN_PROBE, str(path), str(Path(__file__).resolve().parents[1])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=os.environ.get("BENCH_DIR")))
    rows: list[tuple[str, str, str, str]] = []
    try:
        # -- local reads ------------------------------------------------------------------------
        # Rounds alternate crdtstore and Redis so that both see the same machine (its speed
        # drifts by 2x within minutes); the ratio is the median of the rounds' ratios.
        n, redis_n, read_rounds = int(200_000 * scale), int(20_000 * scale), 5
        keys = [f"key{random.randrange(10_000)}" for _ in range(1000)]
        members = [f"member{random.randrange(10_000)}" for _ in range(1000)]
        reads: dict[str, list[float]] = {"get": [], "in": [], "GET": [], "SISMEMBER": []}
        with (
            crdtstore.open(tmp / "reads", node_id="bench") as node,
            redis_server(tmp / "redis-mem", "--appendonly", "no") as r,
        ):
            m, s = node.lww_map("m"), node.or_set("s")
            with node.transaction():
                for i in range(10_000):
                    m[f"key{i}"] = f"value{i}"
                    s.add(f"member{i}")
            if r is None:
                console.print("[yellow]redis-server or redis-py missing: Redis skipped[/]")
            else:
                for i in range(10_000):
                    r.set(f"key{i}", f"value{i}")
                r.sadd("s", *[f"member{i}" for i in range(10_000)])
            for _ in range(read_rounds):
                reads["get"].append(ops_per_s(lambda i: m[keys[i % 1000]], n))
                reads["in"].append(ops_per_s(lambda i: members[i % 1000] in s, n))
                if r is not None:
                    reads["GET"].append(ops_per_s(lambda i: r.get(keys[i % 1000]), redis_n))
                    reads["SISMEMBER"].append(
                        ops_per_s(lambda i: r.sismember("s", members[i % 1000]), redis_n)
                    )
        for mine, theirs, label in (
            ("get", "GET", "lww_map get"),
            ("in", "SISMEMBER", "or_set in"),
        ):
            ours = statistics.median(reads[mine])
            if not reads[theirs]:
                rows.append((label, f"{ours:,.0f} ops/s", "-", "-"))
                continue
            ratio = statistics.median(
                a / b for a, b in zip(reads[mine], reads[theirs], strict=True)
            )
            rows.append(
                (
                    label,
                    f"{ours:,.0f} ops/s",
                    f"Redis {theirs} {statistics.median(reads[theirs]):,.0f} ops/s",
                    f"{ratio:.1f}x (goal 20x; median of {read_rounds} alternating rounds)",
                )
            )

        # -- durable single writes --------------------------------------------------------------
        samples = int(500 * scale) + 50
        env = lmdb.open(str(tmp / "raw"), map_size=1 << 30, sync=True, metasync=True)

        def raw_put(i: int) -> None:
            with env.begin(write=True) as txn:
                txn.put(f"k{i}".encode(), str(i).encode())

        with crdtstore.open(tmp / "writes", node_id="bench") as node:
            m = node.lww_map("m")
            (p50, p99), (raw50, raw99) = paired_latencies_ms(
                [lambda i: m.__setitem__(f"k{i}", i), raw_put], samples
            )
        env.close()
        rows.append(
            (
                "durable put p50 / p99",
                f"{p50:.3f} / {p99:.3f} ms",
                f"raw LMDB sync put {raw50:.3f} / {raw99:.3f} ms",
                f"{p50 / raw50:.2f}x / {p99 / raw99:.2f}x (goal <= 2x)",
            )
        )
        with redis_server(tmp / "redis-aof", "--appendonly", "yes", "--appendfsync", "always") as r:
            if r is None:
                rows.append(("", "", "Redis appendfsync always: skipped", "-"))
            else:
                r50, r99 = latencies_ms(lambda i: r.set(f"k{i}", i), samples)
                rows.append(
                    (
                        "",
                        "",
                        f"Redis SET appendfsync=always {r50:.3f} / {r99:.3f} ms",
                        f"{p50 / r50:.2f}x / {p99 / r99:.2f}x",
                    )
                )

        # -- batched transactions --------------------------------------------------------------
        # A namespace of 50,000 keys (filled untimed), then timed rounds of 1,000 per
        # transaction: new keys (the namespace grows), then existing keys (replaced). Keys
        # are neighbours (i, i+1, ...): rows are in key order inside each of 256 hash
        # buckets, so a batch dirties about a page per bucket, and its fsync writes them.
        # Raw LMDB doing the same on rows keyed like the store's is this disk's limit for
        # that pattern; beside it, keys with no locality (scattered), and the limit for
        # rows keyed by the whole hash, as storage format 3 had them.
        rounds = int(30 * scale) + 3
        with crdtstore.open(tmp / "batch", node_id="bench") as node:
            m, s = node.lww_map("m"), node.or_set("s")
            batched(node, m.__setitem__, 0, 50)
            batched(node, lambda k, v: s.add(k), 0, 50)
            put_new = batched(node, m.__setitem__, 50, rounds)
            put_old = batched(node, m.__setitem__, 0, rounds)
            add_new = batched(node, lambda k, v: s.add(k), 50 + rounds, rounds)
            add_old = batched(node, lambda k, v: s.add(k), 0, rounds)
        with crdtstore.open(tmp / "batch-scattered", node_id="bench") as node:
            m = node.lww_map("m")
            batched(node, lambda k, v: m.__setitem__(scattered(k), v), 0, 50)
            put_far = batched(node, lambda k, v: m.__setitem__(scattered(k), v), 50, rounds)
        raw_new, raw_old = raw_batches(tmp / "rawbatch", rounds, hash_bytes=1)
        far_new, _ = raw_batches(tmp / "rawbatch-far", rounds, hash_bytes=1, key=scattered)
        v3_new, v3_old = raw_batches(tmp / "rawbatch-v3", rounds, hash_bytes=8)
        for what, ours, raw in (
            ("puts, new keys", put_new, raw_new),
            ("puts, existing keys", put_old, raw_old),
            ("adds, new elements", add_new, raw_new),
            ("adds, existing elements", add_old, raw_old),
            ("puts, new scattered keys", put_far, far_new),
        ):
            rows.append(
                (
                    f"transaction() of 1,000 {what}",
                    f"{ours:,.0f} ops/s",
                    f"raw LMDB, same rows: {raw:,.0f}/s",
                    f"{ours / raw:.2f}x of raw (goal 100,000/s)",
                )
            )
        rows.append(
            (
                "  raw, rows keyed by the whole hash (format 3)",
                "",
                f"raw LMDB: {v3_new:,.0f} / {v3_old:,.0f}/s",
                f"{raw_new / v3_new:.1f}x / {raw_old / v3_old:.1f}x slower than format 4",
            )
        )

        # -- open time and memory ---------------------------------------------------------------
        for n in sorted({args.entries // 10, args.entries}):
            path = tmp / f"open{n}"
            t0 = time.perf_counter()
            fill(path, n)
            fill_s = time.perf_counter() - t0
            opened, before, after = probe_open(path)
            size = (path / "data.mdb").stat().st_size
            rows.append(
                (
                    f"open with {n:,} entries",
                    f"{opened * 1000:.1f} ms",
                    f"RSS +{(after - before) / 1024:.1f} MiB (file {size / 2**20:.0f} MiB, "
                    f"filled in {fill_s:.1f} s)",
                    "goal < 1 s, RSS not ~ n",
                )
            )
            shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table("measure", "crdtstore", "reference", "ratio", title="bench_storage")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
