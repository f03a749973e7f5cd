"""Membership at scale on the deterministic simulator: 1,000 nodes, 2-10 ms links, 1% loss.

    .venv/bin/python bench/bench_membership_scale.py            # 1,000 nodes, ~3-5 minutes
    .venv/bin/python bench/bench_membership_scale.py --quick    # 200 nodes, well under a minute
    .venv/bin/python bench/bench_membership_scale.py --nodes 500 --seed 2

One seeded run of ``--nodes`` nodes with default protocol settings: nodes start one
after another (``--stagger-ms`` apart), 5% of them slowed 10x for the whole run; once
every node sees every node alive and no update is left to send, the idle cluster is
measured, then one join, one leave and one crash, each timed until 99.9% of the other
live nodes know it. Idle cost is measured the same way on smaller clusters for the ratio
of per-node cost (goal: flat within 1.5x). Connections per node are its active
neighbours plus every peer it exchanged a frame with (either way) in the last
``2 * probe_interval`` of simulated time. Frames are encoded with the real codec (sizes
are real); decoding is skipped (see ``crdtstore.testing.netsim``). All times are
simulated milliseconds; the wall time of the run is printed for the simulator's sake.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.protocol import ProtocolSettings
from crdtstore.testing.netsim import NetSim, counters

console = Console()
SETTINGS = ProtocolSettings()
SHARE = 0.999
LOSS = 0.01
SLOW_SHARE = 0.05


@dataclass
class Idle:
    nodes: int
    msgs_per_s: float
    bytes_per_s: float
    conn_max: int
    conn_mean: float
    settle_ms: float
    wall_s: float


def ids(n: int) -> list[str]:
    return [f"n{i:04d}" for i in range(n)]


def settled(sim: NetSim) -> bool:
    live = sim.live()
    want = len(live)
    for node in live:
        proto = node.protocol
        if len(proto.table) < want or proto.table.suspects or proto.pending_updates():
            return False
    return all(
        all(node.protocol.status(o.node_id) is MemberStatus.ALIVE for o in live) for node in live
    )


def start(n: int, seed: int, stagger_ms: float) -> tuple[NetSim, float]:
    sim = NetSim(seed, loss=LOSS, decode=False)
    sim.record_observations = False  # a start storm is N^2 observations; none are needed
    rng = random.Random(seed)
    names = ids(n)
    slow = set(rng.sample(names, int(n * SLOW_SHARE)))
    for i, node_id in enumerate(names):
        sim.run_until(i * stagger_ms)
        seeds = [names[rng.randrange(i)]] if i else []
        sim.add_node(node_id, seeds=seeds, slow=node_id in slow)
    last_start = sim.now
    done = sim.run_until_true(lambda: settled(sim), last_start + 120_000, 500)
    if done is None:
        raise SystemExit(f"{n} nodes did not settle within 120 s of the last start")
    sim.record_observations = True  # from here on, any suspicion is a false one
    return sim, done - last_start


def measure_idle(sim: NetSim, window_ms: float, settle_ms: float, wall_s: float) -> Idle:
    live = sim.live()
    before = counters(live)
    start_ms = sim.now
    sim.run_until(start_ms + window_ms)
    after = counters(live)
    seconds = window_ms / 1000
    n = len(live)
    conns = [sim.connections(node, 2 * SETTINGS.probe_interval_ms) for node in live]
    return Idle(
        n,
        (after["sent_msgs"] - before["sent_msgs"]) / n / seconds,
        (after["sent_bytes"] - before["sent_bytes"]) / n / seconds,
        max(conns),
        statistics.fmean(conns),
        settle_ms,
        wall_s,
    )


def time_to_share(sim: NetSim, subject: str, status: MemberStatus, since: float) -> float | None:
    done = sim.run_until_true(
        lambda: sim.share_seeing(subject, status) >= SHARE, since + 60_000, 10
    )
    return None if done is None else done - since


def events(sim: NetSim, rng: random.Random) -> dict[str, float | None]:
    """A join, a leave and a crash on the settled cluster, one after another."""
    out: dict[str, float | None] = {}
    names = [n.node_id for n in sim.live() if not n.slow]
    joiner = "j0000"
    since = sim.now
    sim.add_node(joiner, seeds=[rng.choice(names)])
    out["join"] = time_to_share(sim, joiner, MemberStatus.ALIVE, since)
    sim.run_until(sim.now + 2_000)
    leaver = rng.choice(names)
    since = sim.now
    sim.leave(leaver)
    out["leave"] = time_to_share(sim, leaver, MemberStatus.LEFT, since)
    sim.run_until(sim.now + 2_000)
    victim = rng.choice([n for n in names if n != leaver])
    since = sim.now
    sim.crash(victim)
    total = time_to_share(sim, victim, MemberStatus.DEAD, since)
    first = sim.first_time(victim, MemberStatus.DEAD, 0.0, after_ms=since)
    out["crash total"] = total
    out["crash detection"] = None if first is None else first - since
    out["crash dissemination"] = None if first is None or total is None else total - (first - since)
    sim.run_until(sim.now + 5_000)  # room for a late false verdict to show
    out["false suspicions"] = float(
        sum(
            1
            for o in sim.observations
            if o.change.new is MemberStatus.SUSPECT and o.change.node_id != victim
        )
    )
    out["refutations"] = float(len(sim.refutations))
    out["observed_ms"] = sim.now - since
    return out


def fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 nodes, shorter windows")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stagger-ms", type=float, default=20.0)
    parser.add_argument("--idle-ms", type=float, default=10_000)
    args = parser.parse_args()
    n = 200 if args.quick and args.nodes == 1000 else args.nodes
    idle_ms = args.idle_ms / 2 if args.quick else args.idle_ms
    if n < 10:
        parser.error(f"--nodes {n}: at least 10")
    sizes = sorted({s for s in (50, 200) if s < n} | {n})

    idle: dict[int, Idle] = {}
    results: dict[str, float | None] = {}
    for size in sizes:
        wall = time.perf_counter()
        sim, settle_ms = start(size, args.seed, args.stagger_ms)
        idle[size] = measure_idle(sim, idle_ms, settle_ms, 0.0)
        if size == n:
            results = events(sim, random.Random(args.seed))
        idle[size].wall_s = time.perf_counter() - wall
        console.print(f"[dim]{size} nodes simulated in {idle[size].wall_s:.0f} s wall[/dim]")

    goal = 2 * math.ceil(math.log2(n)) + 4
    table = Table(title=f"Membership on {n} simulated nodes (2-10 ms links, 1% loss, 5% slow 10x)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("settled after the last start", fmt(idle[n].settle_ms), "")
    table.add_row("join known to 99.9%", fmt(results["join"]), "< 3,000 ms")
    table.add_row("leave known to 99.9%", fmt(results["leave"]), "< 3,000 ms")
    table.add_row("crash: detection (first declared dead)", fmt(results["crash detection"]), "")
    table.add_row(
        "crash: dissemination (to 99.9%)", fmt(results["crash dissemination"]), "< 3,000 ms"
    )
    table.add_row("crash: total", fmt(results["crash total"]), "")
    watched_s = (idle_ms + (results["observed_ms"] or 0)) / 1000
    table.add_row(
        f"false suspicions ({watched_s:.0f} s after settling)",
        f"{results['false suspicions']:.0f}",
        "0",
    )
    table.add_row("refutations", f"{results['refutations']:.0f}", "0")
    table.add_row("connections per node: max", str(idle[n].conn_max), f"<= {goal}")
    table.add_row("connections per node: mean", f"{idle[n].conn_mean:.1f}", f"<= {goal}")
    console.print(table)

    costs = Table(title="Idle cost per node (settled cluster)")
    for col in ("nodes", "msgs/s", "bytes/s", "conn max", "conn mean", "settled", "wall"):
        costs.add_column(col, justify="right")
    for size in sizes:
        i = idle[size]
        costs.add_row(
            str(size),
            f"{i.msgs_per_s:.1f}",
            f"{i.bytes_per_s:,.0f}",
            str(i.conn_max),
            f"{i.conn_mean:.1f}",
            fmt(i.settle_ms),
            f"{i.wall_s:.0f} s",
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
