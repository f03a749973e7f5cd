"""The whole node protocol on the deterministic simulator: 1,000 nodes, 2-10 ms links, 1% loss.

    .venv/bin/python bench/bench_nodesim.py            # 1,000 nodes, ~7 minutes of CPU
    .venv/bin/python bench/bench_nodesim.py --quick    # 200 nodes, about a minute
    .venv/bin/python bench/bench_nodesim.py --nodes 500 --seed 2

Every node runs the membership protocol and a relaying sync engine over a memory replica
(``crdtstore.testing.nodesim``): sync frames travel only between linked members. Every
node holds namespace ``cfg``; a random tenth also holds ``t1`` (so ``t1``'s holders are
joined by topic links; a node receives no batch of a topic it does not hold, as its SUB
does not subscribe to it); 5% of the nodes are slowed 10x. Nodes start
``--stagger-ms`` apart; once membership agrees and every namespace has converged, the
idle cluster is measured at 50, 200 and ``--nodes`` nodes (messages and bytes received
per node per second, sync and membership). At ``--nodes``: ``--writes`` LWW writes of a
``--payload``-byte value at random holders, one every ``--write-gap-ms``, alternately to
``cfg`` and ``t1``, each timed until every live holder has it (p50/p99/max); delta bytes
received per holder per update against the batch's encoded size; the suspicions raised
so far (all false); then a partition into two halves for ``--partition-ms`` with writes
on both sides, and the time from the heal until every namespace has converged and until
membership agrees. Membership frames are encoded (sizes are real) but not decoded; sync
frames are real bytes, decoded by the engines. All times are simulated; wall time is
printed for the simulator's sake.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from bench_membership_scale import LOSS, SLOW_SHARE, fmt, ids
from rich.console import Console
from rich.table import Table

from crdtstore.membership.detector import MemberStatus
from crdtstore.sync.messages import encode_message
from crdtstore.testing.nodesim import NodeSim

console = Console()
TOPIC_SHARE = 0.1


@dataclass
class Idle:
    nodes: int
    msgs_per_s: float
    bytes_per_s: float
    sync_msgs_per_s: float
    sync_bytes_per_s: float
    links_mean: float
    settle_ms: float


def start(n: int, seed: int, stagger_ms: float) -> tuple[NodeSim, float]:
    sim = NodeSim(seed, loss=LOSS, decode=False)
    sim.record_observations = False  # a start storm is N^2 observations; none are needed
    rng = random.Random(seed)
    names = ids(n)
    with_t1 = set(rng.sample(names, max(3, int(n * TOPIC_SHARE))))
    slow = set(rng.sample(names, int(n * SLOW_SHARE)))
    for i, node_id in enumerate(names):
        sim.run_until(i * stagger_ms)
        seeds = [names[rng.randrange(i)]] if i else []
        topics = ["cfg", "t1"] if node_id in with_t1 else ["cfg"]
        sim.add_node(node_id, seeds=seeds, slow=node_id in slow, topics=topics)
    last_start = sim.now
    # An idle cluster has no namespace yet: one write each makes convergence mean something.
    for ns in ("cfg", "t1"):
        holders = sim.holders(ns)
        sim.put(holders[0], ns, "hello", 0)
    done = sim.run_until_true(sim.settled, last_start + 120_000, 250)
    if done is None:
        raise SystemExit(f"{n} nodes did not settle within 120 s of the last start")
    sim.record_observations = True  # from here on, any suspicion is a false one
    return sim, done - last_start


def measure_idle(sim: NodeSim, window_ms: float, settle_ms: float) -> Idle:
    live = sim.live()
    n, seconds = len(live), window_ms / 1000
    msgs = sum(node.recv_msgs for node in live)
    size = sum(node.recv_bytes for node in live)
    sync_msgs = sum(sim.sync_received.values())
    sync_bytes = sum(sim.sync_received_bytes.values())
    sim.run_until(sim.now + window_ms)
    per = n * seconds
    return Idle(
        n,
        (sum(node.recv_msgs for node in live) - msgs) / per,
        (sum(node.recv_bytes for node in live) - size) / per,
        (sum(sim.sync_received.values()) - sync_msgs) / per,
        (sum(sim.sync_received_bytes.values()) - sync_bytes) / per,
        statistics.fmean(len(sim.links_of(node.node_id)) for node in live),
        settle_ms,
    )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_writes(
    sim: NodeSim, writes: int, gap_ms: float, payload: int, rng: random.Random
) -> dict[str, float]:
    first = len(sim.writes)
    delta_bytes = sim.sync_received_bytes["delta"] + sim.sync_received_bytes["repair"]
    holders_total = 0
    batch_sizes: list[int] = []
    value = "x" * payload
    for k in range(writes):
        ns = "cfg" if k % 2 == 0 else "t1"
        holders = sim.holders(ns)
        holders_total += len(holders) - 1
        batch = sim.put(rng.choice(holders), ns, f"key{k % 50}", value)
        batch_sizes.append(len(encode_message(batch)))
        sim.run_until(sim.now + gap_ms)
    ours = sim.writes[first:]
    sim.run_until_true(lambda: all(w.done_ms is not None for w in ours), sim.now + 30_000, 100)
    received = sim.sync_received_bytes["delta"] + sim.sync_received_bytes["repair"] - delta_bytes
    latencies = {
        ns: [w.done_ms - w.at_ms for w in ours if w.namespace == ns and w.done_ms is not None]
        for ns in ("cfg", "t1")
    }
    out: dict[str, float] = {"unfinished": float(sum(w.done_ms is None for w in ours))}
    for ns, values in latencies.items():
        out[f"{ns} p50"] = quantile(values, 0.5)
        out[f"{ns} p99"] = quantile(values, 0.99)
        out[f"{ns} max"] = max(values)
    batch_bytes = statistics.fmean(batch_sizes)
    out["batch bytes"] = batch_bytes
    out["delta bytes per holder per update"] = received / holders_total
    out["ratio"] = received / holders_total / batch_bytes
    out["t1 holders"] = float(len(sim.holders("t1")))
    return out


def measure_partition(
    sim: NodeSim, partition_ms: float, rng: random.Random
) -> dict[str, float | None]:
    names = [node.node_id for node in sim.live()]
    rng.shuffle(names)
    left, right = sorted(names[: len(names) // 2]), sorted(names[len(names) // 2 :])
    sim.partition(left, right)
    for k in range(20):
        side = left if k % 2 == 0 else right
        sim.put(rng.choice(side), "cfg", f"split{k}", k)
        sim.run_until(sim.now + partition_ms / 20)
    healed_at = sim.now
    sim.heal()
    data = sim.run_until_true(sim.converged, healed_at + 300_000, 250)
    agreed = sim.run_until_true(lambda: sim.disagreement() is None, healed_at + 300_000, 250)
    return {
        "converged": None if data is None else data - healed_at,
        "agreed": None if agreed is None else agreed - healed_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 nodes, fewer writes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stagger-ms", type=float, default=20.0)
    parser.add_argument("--idle-ms", type=float, default=10_000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--write-gap-ms", type=float, default=50.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--partition-ms", type=float, default=20_000)
    args = parser.parse_args()
    n = 200 if args.quick and args.nodes == 1000 else args.nodes
    writes = args.writes // 4 if args.quick else args.writes
    if n < 20 or writes < 2:
        parser.error("at least 20 nodes and 2 writes")
    sizes = sorted({s for s in (50, 200) if s < n} | {n})
    rng = random.Random(args.seed)

    idle: dict[int, Idle] = {}
    for size in sizes:
        wall = time.perf_counter()
        sim, settle_ms = start(size, args.seed, args.stagger_ms)
        idle[size] = measure_idle(sim, args.idle_ms, settle_ms)
        console.print(
            f"[dim]{size} nodes started and idled in {time.perf_counter() - wall:.0f} s wall[/dim]"
        )
    wall = time.perf_counter()
    w = measure_writes(sim, writes, args.write_gap_ms, args.payload, rng)
    false_suspicions = sum(o.change.new is MemberStatus.SUSPECT for o in sim.observations)
    p = measure_partition(sim, args.partition_ms, rng)
    console.print(f"[dim]writes and partition in {time.perf_counter() - wall:.0f} s wall[/dim]")

    table = Table(
        title=f"Whole node protocol on {n} simulated nodes (2-10 ms links, 1% loss, 5% slow "
        "10x; relay + neighbour-only anti-entropy)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("settled after the last start", fmt(idle[n].settle_ms), "")
    for ns, who in (("cfg", "all nodes"), ("t1", "a tenth")):
        table.add_row(f"write reaches every holder, {ns} ({who}): p50", fmt(w[f"{ns} p50"]), "")
        table.add_row("  p99", fmt(w[f"{ns} p99"]), "< 1,000 ms")
        table.add_row("  max", fmt(w[f"{ns} max"]), "")
    table.add_row("writes unfinished after 30 s", f"{w['unfinished']:.0f}", "0")
    table.add_row("batch size (encoded)", f"{w['batch bytes']:.0f} B", "")
    table.add_row(
        "delta bytes received per holder per update",
        f"{w['delta bytes per holder per update']:.0f} B ({w['ratio']:.2f}x)",
        "<= 1.5x",
    )
    table.add_row("holders of t1", f"{w['t1 holders']:.0f}", "")
    table.add_row("false suspicions (idle and writes)", str(false_suspicions), "0")
    table.add_row(
        f"partition {args.partition_ms / 1000:.0f} s, heal: data converged", fmt(p["converged"]), ""
    )
    table.add_row("  membership agreed", fmt(p["agreed"]), "")
    console.print(table)

    costs = Table(title="Idle cost per node, received (settled cluster)")
    for col in ("nodes", "msgs/s", "bytes/s", "sync msgs/s", "sync bytes/s", "links", "settled"):
        costs.add_column(col, justify="right")
    for size in sizes:
        i = idle[size]
        costs.add_row(
            str(size),
            f"{i.msgs_per_s:.1f}",
            f"{i.bytes_per_s:,.0f}",
            f"{i.sync_msgs_per_s:.1f}",
            f"{i.sync_bytes_per_s:,.0f}",
            f"{i.links_mean:.1f}",
            fmt(i.settle_ms),
        )
    console.print(costs)
    small, big = idle[sizes[0]], idle[n]
    console.print(
        f"per-node idle cost {n}/{small.nodes}: "
        f"messages {big.msgs_per_s / small.msgs_per_s:.2f}x, "
        f"bytes {big.bytes_per_s / small.bytes_per_s:.2f}x (goal <= 1.5x)"
    )


if __name__ == "__main__":
    main()
