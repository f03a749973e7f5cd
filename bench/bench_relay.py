"""Relayed deltas (Plumtree on PUB/SUB) on a simulated 1,000-node overlay.

    .venv/bin/python bench/bench_relay.py                      # 1,000 nodes, ~3 minutes
    .venv/bin/python bench/bench_relay.py --nodes 200          # quicker
    .venv/bin/python bench/bench_relay.py --overlay /tmp/ov.json   # build once, reuse

The overlay is each node's HyParView active view after the membership protocol settled
(``crdtstore.testing.netsim``, the slow part at 1,000 nodes); then every node runs a
``Relay`` on simulated ZeroMQ PUB/SUB (``crdtstore.testing.relaysim``) with link delay
2-10 ms and 1% loss of every frame but subscriptions. Per scenario (every node holds the
namespace, or 10% do), ``--warmup`` batches let the tree form, then ``--batches`` are
measured, each from a random holder, ``--rate`` a second cluster-wide:

- time from a batch's publication until every holder has it (p50, p99, max; "lost" is
  how many never reached every holder by the relay alone: the engine's anti-entropy,
  not simulated here, repairs those);
- bytes received per holder per batch against the batch's size, for each ``--payload``:
  data (topic, frame headers and the batch), have notices, subscriptions, prunes,
  grafts, fetches and their answers: everything the relay sends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crdtstore.sync.relay import RelaySettings
from crdtstore.testing.relaysim import RelaySim, converged_overlay

console = Console(width=150)
NS = "t"


def load_overlay(nodes: int, seed: int, path: Path | None) -> dict[str, tuple[str, ...]]:
    if path is not None and path.exists():
        cached = json.loads(path.read_text())
        if cached["nodes"] == nodes and cached["seed"] == seed:
            return {k: tuple(v) for k, v in cached["views"].items()}
    started = time.monotonic()
    views = converged_overlay(nodes, seed)
    console.print(f"overlay of {nodes} built in {time.monotonic() - started:.0f} s")
    if path is not None:
        path.write_text(json.dumps({"nodes": nodes, "seed": seed, "views": views}))
    return views


def run(
    views: dict[str, tuple[str, ...]], share: float, args: argparse.Namespace
) -> dict[str, object]:
    ids = sorted(views)
    holding = ids if share >= 1 else ids[:: round(1 / share)]
    holders = {n: frozenset({NS}) if n in set(holding) else frozenset() for n in ids}
    sim = RelaySim(views, holders, seed=args.seed, loss=args.loss, settings=RelaySettings())
    gap = 1000.0 / args.rate
    rng = sim.rng
    for i in range(args.warmup):
        sim.publish_at(10 + i * gap, holding[rng.randrange(len(holding))], NS)
    start = 10 + args.warmup * gap + 2_000
    sim.run_until(start)
    before, stats_before, done = sim.received(NS), sim.relay_stats(), len(sim.published)
    for i in range(args.batches):
        sim.publish_at(start + i * gap, holding[rng.randrange(len(holding))], NS)
    quiet = sim.run_quiet(start + args.batches * gap + 60_000)
    keys = list(sim.published)[done:]
    times = [sim.completion_ms(k) for k in keys]
    reached = sorted(t for t in times if t is not None)
    got = sim.received(NS) - before
    churn = sim.relay_stats() - stats_before
    per = len(holding) * len(keys)
    ratios = {}
    for payload in args.payload:
        total = sum(v for k, v in got.items() if k != "copies") + got["copies"] * payload
        ratios[payload] = total / (per * payload)
    return {
        "holders": len(holding),
        "p50": statistics.median(reached),
        "p99": reached[min(len(reached) - 1, int(0.99 * len(reached)))],
        "max": reached[-1],
        "lost": len(keys) - len(reached),
        "quiet": quiet,
        "ratios": ratios,
        "per_kind": {k: v / per for k, v in got.items()},
        "churn": {k: churn[k] for k in ("relay_prunes_sent", "relay_grafts_sent", "relay_fetches")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="batches/s, cluster-wide")
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--payload", type=int, nargs="+", default=[200, 1_000])
    parser.add_argument("--overlay", type=Path, help="cache file for the built overlay")
    args = parser.parse_args()
    views = load_overlay(args.nodes, args.seed, args.overlay)
    degrees = [len(v) for v in views.values()]
    console.print(
        f"{args.nodes} nodes, active view {min(degrees)}-{max(degrees)} "
        f"(mean {statistics.mean(degrees):.2f}); {args.rate:g} batches/s, "
        f"loss {args.loss:.0%}, {args.warmup} warm-up + {args.batches} measured batches"
    )
    table = Table(title="relay: delivery to every holder, bytes per holder per batch")
    for col in ("holders", "p50 ms", "p99 ms", "max ms", "lost"):
        table.add_column(col, justify="right")
    for payload in args.payload:
        table.add_column(f"x {payload} B", justify="right")
    table.add_column("per batch: data/have/sub/ctl/fetch B (+ batch)", justify="right")
    table.add_column("prunes/grafts/fetches", justify="right")
    ok = True
    for share in (1.0, 0.1):
        started = time.monotonic()
        r = run(views, share, args)
        kinds = r["per_kind"]
        assert isinstance(kinds, dict) and isinstance(r["ratios"], dict)
        churn = r["churn"]
        assert isinstance(churn, dict)
        table.add_row(
            str(r["holders"]),
            f"{r['p50']:.0f}",
            f"{r['p99']:.0f}",
            f"{r['max']:.0f}",
            str(r["lost"]),
            *(f"{r['ratios'][p]:.2f}" for p in args.payload),
            "/".join(
                f"{kinds.get(k, 0):.0f}"
                for k in ("data", "have", "subscribe", "control", "fetched")
            )
            + f" (+{kinds.get('copies', 0):.2f})",
            "/".join(str(v) for v in churn.values()),
        )
        ok = ok and bool(r["quiet"])
        console.print(f"  {share:.0%} holders simulated in {time.monotonic() - started:.0f} s")
    console.print(table)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
