"""Replication protocol costs, in bytes, measured on the deterministic simulator.

(a) Re-converging two replicas that differ in d entries out of n, through the delta log
    and through range reconciliation (log trimmed), against the encoded size of the d
    entries and of the full state.
(b) Idle digest bytes per peer per round, 5 nodes.
(c) Steady state, 5 replicas all writing: bytes received per node / delta payload bytes.

Bytes only (the simulator's clock is simulated); no wall-clock figure is a goal here.
Run: .venv/bin/python bench/bench_sync.py [--quick]
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import fields
from typing import Any

from rich.console import Console
from rich.table import Table

from crdtstore.codec import encode_value, pack
from crdtstore.crdt import CausalContext, Dot, ORSet
from crdtstore.sync.messages import DeltaBatch, decode_message
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.simulator import Simulator

BENCH = SyncSettings(
    digest_interval_ms=500,
    repair_grace_ms=600,
    repair_timeout_ms=2000,
    range_session_timeout_ms=5000,
)


def with_settings(**changes: Any) -> SyncSettings:
    base = {f.name: getattr(BENCH, f.name) for f in fields(BENCH)}
    return SyncSettings(**{**base, **changes})


def base_state(n: int) -> ORSet:
    return ORSet({f"k{i}": {Dot("n0", i + 1): None} for i in range(n)}, CausalContext({"n0": n}))


def reconverge(n: int, d: int, via_range: bool) -> dict[str, float]:
    cfg = with_settings(max_log_batches=0) if via_range else BENCH
    sim = Simulator(2, seed=1, settings=cfg)
    state = base_state(n)
    for node in sim.nodes:
        sim.replica(node).load_state("s", state)
    sim.run(1_000)
    sim.partition({"n0"})
    keys = []
    for i in range(d):
        key = f"new{i}"
        keys.append(key)
        sim.add("n0", "s", key)
    sim.run(1_500)  # the fast path is lost to the partition; logs are bounded meanwhile
    sim.reset_counters()
    started = time.perf_counter()
    assert sim.run_until_quiescent(600_000), "did not converge"
    wall = time.perf_counter() - started
    value = sim.replica("n0").value("s")
    diff_bytes = len(pack(encode_value(value.restrict(keys))))
    full_bytes = len(pack(encode_value(value)))
    total = sim.total_bytes()
    digests = digest_bytes(sim)
    return {
        "bytes": total,
        "digest": digests,
        "diff": diff_bytes,
        "full": full_bytes,
        "ratio_diff": (total - digests) / diff_bytes,
        "ratio_full": total / full_bytes,
        "sessions": sim.engine("n1").stats["range_sessions_completed"],
        "wall": wall,
    }


DIGEST_KINDS = ("digest", "digest_h", "vv_req", "vv")
"""What anti-entropy's digests move: full or hashed digests, and the vectors asked for."""


def digest_bytes(sim: Simulator) -> int:
    return sum(sim.bytes[kind] for kind in DIGEST_KINDS)


def idle_digests() -> dict[str, float]:
    sim = Simulator(5, seed=2, settings=BENCH)
    for i in range(200):
        sim.add(f"n{i % 5}", "s", i)
        sim.put(f"n{i % 5}", "m", i, i)
    assert sim.run_until_quiescent(60_000)
    sim.reset_counters()
    rounds = 20
    sim.run(rounds * BENCH.digest_interval_ms)
    per_frame = digest_bytes(sim) / (sim.messages["digest"] + sim.messages["digest_h"])
    per_node_round = sum(sim.received_bytes.values()) / 5 / rounds
    return {
        "frame": per_frame,
        "per_peer_round": per_node_round / 4,
        "other": sim.total_bytes() - digest_bytes(sim),
    }


def steady_state(seconds: int, writes_per_s: int, flush_ms: int) -> dict[str, float]:
    sim = Simulator(5, seed=3, settings=BENCH, record=True, flush_ms=flush_ms)
    payload_per_write = 0
    step = 1000 // writes_per_s
    for t in range(seconds * writes_per_s):
        for j in range(5):
            node = f"n{j}"
            batch = sim.put(node, "m", f"{node}-{t % 50}", t) if t % 2 else sim.add(node, "s", t)
            # Each write's own delta is what every other node needs: 4 receivers.
            payload_per_write += 4 * len(pack(encode_value(batch.delta)))
        sim.run(step)
    assert sim.run_until_quiescent(60_000)
    received = sum(sim.received_bytes.values())
    assert sim.wire is not None
    framed = sum(
        len(pack(encode_value(m.delta)))
        for m in (decode_message(data) for _, _, data in sim.wire)
        if isinstance(m, DeltaBatch)
    )
    return {
        "received_per_node": received / 5,
        "ratio": received / payload_per_write,
        "ratio_framed": received / framed,
        "digest_share": digest_bytes(sim) / sim.total_bytes(),
    }


def main() -> None:
    logging.disable(logging.WARNING)  # seeding by load_state makes the engines grumble
    quick = "--quick" in sys.argv
    console = Console()
    started = time.perf_counter()
    sizes = [10_000] if quick else [10_000, 100_000]

    table = Table(title="(a) bytes to re-converge 2 replicas differing in d entries")
    for col in (
        "n",
        "d",
        "path",
        "bytes",
        "of which digests",
        "d entries enc.",
        "full state enc.",
        "(bytes-digests)/d enc.",
        "bytes/full",
        "sessions",
        "wall s",
    ):
        table.add_column(col, justify="right")
    for n in sizes:
        for d in (10, 1_000):
            for via_range in (False, True):
                r = reconverge(n, d, via_range)
                table.add_row(
                    f"{n:,}",
                    f"{d:,}",
                    "range" if via_range else "log",
                    f"{r['bytes']:,.0f}",
                    f"{r['digest']:,.0f}",
                    f"{r['diff']:,.0f}",
                    f"{r['full']:,.0f}",
                    f"{r['ratio_diff']:.2f}x",
                    f"{r['ratio_full']:.2%}",
                    f"{r['sessions']:.0f}",
                    f"{r['wall']:.1f}",
                )
    console.print(table)

    idle = idle_digests()
    t2 = Table(title="(b) idle digests, 5 nodes, 2 namespaces")
    for col in ("bytes per digest frame", "bytes per peer per round", "non-digest bytes"):
        t2.add_column(col, justify="right")
    t2.add_row(f"{idle['frame']:.0f}", f"{idle['per_peer_round']:.0f}", f"{idle['other']:.0f}")
    console.print(t2)

    t3 = Table(title="(c) steady state, 5 replicas all writing")
    for col in (
        "writes/s/node",
        "flush ms",
        "received bytes/node",
        "received / per-write delta bytes",
        "received / framed delta bytes",
        "digest share",
    ):
        t3.add_column(col, justify="right")
    for rate, flush in ((20, 10), (200, 10), (200, 100)):
        steady = steady_state(5 if quick else 10, rate, flush)
        t3.add_row(
            str(rate),
            str(flush),
            f"{steady['received_per_node']:,.0f}",
            f"{steady['ratio']:.3f}",
            f"{steady['ratio_framed']:.3f}",
            f"{steady['digest_share']:.1%}",
        )
    console.print(t3)
    console.print(f"total wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
