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
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica
from crdtstore.sync.fingerprint import encoded_position
from crdtstore.sync.messages import decode_message

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


def one_batch(
    node: crdtstore.Node, write: Callable[[int, int], Any], r_: int
) -> tuple[float, float]:
    """Seconds of wall clock and of this thread's CPU (user and system: the commit's
    writes and fsyncs are made by this thread) for one transaction of 1,000 writes, of
    keys ``r_ * 1000`` on."""
    start, cpu = time.perf_counter(), time.thread_time()
    with node.transaction():
        for i in range(r_ * 1000, r_ * 1000 + 1000):
            write(i, i)
    return time.perf_counter() - start, time.thread_time() - cpu


def user_key(i: int) -> str:
    """A string key with a decimal id, ``user:i``: neighbours share a bucket a hundred at a
    time (their last two digits), not 256 as integers do."""
    return f"user:{i}"


def scattered(i: int) -> int:
    """A key with no locality: ``i`` times a large odd constant, modulo 2**62 (a
    permutation, so keys stay distinct), like ids drawn at random."""
    return (i * 0x9E3779B97F4A7C15) % (1 << 62)


def format5_position(ekey: bytes) -> bytes:
    """As storage formats 4 and 5 keyed a row: the first byte of the whole key's hash."""
    return hashlib.blake2b(ekey, digest_size=8).digest()[:1] + ekey


class RawTable:
    """Bare LMDB doing what the store's batch benchmark does (sync, 1,000 puts per
    transaction): this disk's limit for the pattern. Rows are keyed ``ns +
    position(packed key)``, by default as the store keys them (storage format 6). Keys
    are ``key(i)``. Values are 40 bytes, about a stored row's."""

    def __init__(
        self,
        path: Path,
        *,
        position: Callable[[bytes], bytes] = encoded_position,
        key: Callable[[int], Any] = int,
    ) -> None:
        self.env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)
        self.position, self.key = position, key
        self.value = os.urandom(40)

    def batch(self, r_: int) -> tuple[float, float]:
        """As :func:`one_batch`."""
        start, cpu = time.perf_counter(), time.thread_time()
        with self.env.begin(write=True) as txn:
            for i in range(r_ * 1000, r_ * 1000 + 1000):
                txn.put(b"\0\0\0\1" + self.position(msgpack.packb(self.key(i))), self.value)
        return time.perf_counter() - start, time.thread_time() - cpu


class ReceivedBatches:
    """A peer's delta batches of 1,000 puts of ``user:i`` keys, and a replica (durable, as
    a node's) that applies them one commit each, as the sync engine hands them over:
    decoded from the wire, their rows checked by the apply. ``setup`` batches of new keys
    are applied untimed; then each round has a batch of new keys and a batch rewriting
    keys the replica holds (the peer's, observed)."""

    def __init__(self, path: Path, setup: int, rounds: int) -> None:
        peer = LMDBReplica(path / "peer", "peer", NodeSettings(durability="async"))

        def write(first: int) -> None:
            w = peer.begin_local()
            for i in range(first, first + 1000):
                w.put("u", user_key(i), i)
            w.commit()

        for r_ in range(setup):
            write(r_ * 1000)
        for r_ in range(rounds):
            write((setup + r_) * 1000)
            write(r_ * 1000)
        raws = peer.log_batches("u", "peer", 1, (setup + 2 * rounds) * 1000) or []
        peer.close()
        self.replica = LMDBReplica(path / "received", "bench")
        for raw in raws[:setup]:
            self.apply(raw)
        self.new, self.old = raws[setup::2], raws[setup + 1 :: 2]

    def apply(self, raw: bytes) -> tuple[float, float]:
        """As :func:`one_batch`, for one received batch."""
        start, cpu = time.perf_counter(), time.thread_time()
        self.replica.apply_batches([(decode_message(raw), raw)])
        return time.perf_counter() - start, time.thread_time() - cpu


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
        # Namespaces of 50,000 keys (filled untimed), then transactions of 1,000: new keys
        # (the namespace grows) and existing keys (replaced). Keys are neighbours (i, i+1,
        # ...): they share a bucket while they differ only in their last byte, and are in
        # key order inside it, so a batch dirties a few pages per bucket it touches, and
        # its fsync writes them. Raw LMDB doing the same on rows keyed like the store's is
        # this disk's limit for that pattern. Beside it: keys with no locality (scattered);
        # string keys with a decimal id (user:i, a hundred to a bucket), in a namespace of
        # their own; and the limit for rows keyed as storage format 5 had them (a bucket
        # per whole-key hash: a batch dirtied a page in each of the 256). Last, the receive
        # path: a peer's batches of 1,000 user:i puts, applied one commit each
        # (ReceivedBatches), new keys and keys held. Each round runs one transaction of
        # every workload in turn, so all see the same machine (its
        # speed drifts by 2x within minutes); a figure is the median of its rounds, a
        # ratio the median of the rounds' ratios.
        rounds = int(30 * scale) + 3
        with (
            crdtstore.open(tmp / "batch", node_id="bench") as node,
            crdtstore.open(tmp / "batch-scattered", node_id="bench") as far_node,
        ):
            m, s, u = node.lww_map("m"), node.or_set("s"), node.lww_map("u")
            far = far_node.lww_map("m")
            raw = RawTable(tmp / "rawbatch")
            raw_far = RawTable(tmp / "rawbatch-far", key=scattered)
            raw_user = RawTable(tmp / "rawbatch-user", key=user_key)
            raw_v5 = RawTable(tmp / "rawbatch-v5", position=format5_position)
            put, add = m.__setitem__, (lambda k, v: s.add(k))
            put_far = lambda k, v: far.__setitem__(scattered(k), v)  # noqa: E731
            put_user = lambda k, v: u.__setitem__(user_key(k), v)  # noqa: E731
            received = ReceivedBatches(tmp / "apply", 50, rounds)
            for r_ in range(50):
                one_batch(node, put, r_)
                one_batch(node, add, r_)
                one_batch(far_node, put_far, r_)
                one_batch(node, put_user, r_)
                for table in (raw, raw_far, raw_v5, raw_user):
                    table.batch(r_)
            workloads: dict[str, Callable[[int], tuple[float, float]]] = {
                "put new": lambda r_: one_batch(node, put, 50 + r_),
                "put old": lambda r_: one_batch(node, put, r_),
                "add new": lambda r_: one_batch(node, add, 50 + r_),
                "add old": lambda r_: one_batch(node, add, r_),
                "put far": lambda r_: one_batch(far_node, put_far, 50 + r_),
                "put user": lambda r_: one_batch(node, put_user, 50 + r_),
                "raw new": lambda r_: raw.batch(50 + r_),
                "raw old": lambda r_: raw.batch(r_),
                "raw far": lambda r_: raw_far.batch(50 + r_),
                "raw user": lambda r_: raw_user.batch(50 + r_),
                "v5 new": lambda r_: raw_v5.batch(50 + r_),
                "v5 old": lambda r_: raw_v5.batch(r_),
                "apply new": lambda r_: received.apply(received.new[r_]),
                "apply old": lambda r_: received.apply(received.old[r_]),
            }
            took: dict[str, list[float]] = {name: [] for name in workloads}
            cpu: dict[str, list[float]] = {name: [] for name in workloads}
            for r_ in range(rounds):
                for name, run in workloads.items():
                    wall, used = run(r_)
                    took[name].append(wall)
                    cpu[name].append(used)
            for table in (raw, raw_far, raw_v5, raw_user):
                table.env.close()
            received.replica.close()

        def rate(name: str) -> float:
            return 1000 / statistics.median(took[name])

        def cpu_us(name: str) -> float:
            return statistics.median(cpu[name]) * 1000  # seconds per 1,000 = us per op

        def ratio(name: str, reference: str) -> float:
            pairs = zip(took[name], took[reference], strict=True)
            return statistics.median(theirs / ours for ours, theirs in pairs)

        for what, ours, limit in (
            ("puts, new keys", "put new", "raw new"),
            ("puts, existing keys", "put old", "raw old"),
            ("adds, new elements", "add new", "raw new"),
            ("adds, existing elements", "add old", "raw old"),
            ("puts, new scattered keys", "put far", "raw far"),
            ("puts, new keys user:i", "put user", "raw user"),
        ):
            rows.append(
                (
                    f"transaction() of 1,000 {what}",
                    f"{rate(ours):,.0f} ops/s, CPU {cpu_us(ours):.1f} us/op",
                    f"raw LMDB, same rows: {rate(limit):,.0f}/s, CPU {cpu_us(limit):.1f} us",
                    f"{ratio(ours, limit):.2f}x of raw (goal 100,000/s)",
                )
            )
        for what, ours in (
            ("new keys user:i", "apply new"),
            ("existing keys user:i", "apply old"),
        ):
            rows.append(
                (
                    f"apply_batches of 1,000 received puts, {what}",
                    f"{rate(ours):,.0f} ops/s, CPU {cpu_us(ours):.1f} us/op",
                    f"transaction() of 1,000 puts, new keys user:i: {rate('put user'):,.0f}/s",
                    f"{ratio(ours, 'put user'):.2f}x of the local puts",
                )
            )
        rows.append(
            (
                "  raw, rows keyed as format 5 (a bucket per whole-key hash)",
                "",
                f"raw LMDB: {rate('v5 new'):,.0f} / {rate('v5 old'):,.0f}/s",
                f"{1 / ratio('v5 new', 'raw new'):.1f}x / {1 / ratio('v5 old', 'raw old'):.1f}x "
                "slower than format 6",
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
