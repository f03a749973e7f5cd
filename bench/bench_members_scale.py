"""Membership at scale on real processes: the overlay's cost per node as the cluster grows.

    .venv/bin/python bench/bench_members_scale.py                 # 20, 50, 100 nodes
    .venv/bin/python bench/bench_members_scale.py --sizes 20 50   # fewer
    .venv/bin/python bench/bench_members_scale.py --sizes --solo-against ../main/.venv/bin/python

Every node is a ``crdtstore serve`` process on loopback, started ``--batch`` at a time
(each batch READY before the next starts, so start-up does not swamp the machine). For
each size: the time from the last start until every node's member view (``members.mdb``,
what ``crdtstore members`` reads; the detector writes it at once on every change) shows
every other node alive; the idle cluster's CPU per node (from /proc) and loopback bytes/s
per node, over ``--idle`` seconds; connections per node (from each node's status); then
SIGKILL of ``--kills`` nodes and the time until every survivor's view shows all of them
dead, against the configured bound (``suspect_after_ms + dead_after_ms``), and the
suspicions of members that were not killed, from the views' change logs (false
suspicions).

Loopback bytes are only this benchmark's if it runs in a network namespace of its own: it
re-executes itself under ``unshare -n`` when it can (root, or unprivileged user
namespaces), and says when it could not (then the figure includes every other process's
loopback traffic).

``--solo-against PYTHON``: a lone idle node's CPU, run alternately by this tree's
interpreter and by ``PYTHON`` (another checkout's virtualenv, e.g. the code before a
change), ``--rounds`` times each, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_members import cpu_seconds
from machine import lo_bytes
from rich.console import Console
from rich.table import Table

from crdtstore.membership import MemberStatus
from crdtstore.membership.settings import MembershipSettings
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.testing.localcluster import ServeNode, wait_until

console = Console(width=200)  # tables too wide for 80 columns when piped
OWN_NETNS = "CRDTSTORE_BENCH_NETNS"
"""Set in the re-executed benchmark: it runs in a network namespace of its own."""


class Node(ServeNode):
    """A serve process, optionally run by another interpreter (another checkout)."""

    python: str | None = None

    def command(self) -> list[str]:
        cmd = super().command()
        # -P: the other checkout's own code, not this directory's (python -m puts the
        # working directory first on sys.path).
        return cmd if self.python is None else [self.python, "-P", *cmd[1:]]


class Views:
    """Each node's member view, opened once (reading one costs a read transaction)."""

    def __init__(self, nodes: list[Node]) -> None:
        self._views: dict[str, MemberViewStore] = {}
        self._nodes = nodes

    def rows(self, node: Node) -> dict[str, MemberStatus]:
        view = self._views.get(node.name)
        if view is None:
            view = MemberViewStore.open_existing(node.data, Counter())
            if view is None:
                return {}
            self._views[node.name] = view
        _, rows = view.read()
        return {name: o.status for name, o in rows.items()}

    def seen_everywhere(self, nodes: list[Node], names: set[str], status: MemberStatus) -> bool:
        """Whether every node's view shows every one of ``names`` (but itself) at ``status``."""
        for node in nodes:
            rows = self.rows(node)
            if any(rows.get(name) is not status for name in names - {node.name}):
                return False
        return True

    def last_seqs(self, nodes: list[Node]) -> dict[str, int]:
        return {n.name: self._open(n).last_seq() for n in nodes}

    def suspicions(self, nodes: list[Node], since: dict[str, int], of: set[str]) -> int:
        """Changes to suspect (or dead) of any of ``of`` logged since ``since``."""
        count = 0
        for node in nodes:
            _, changes = self._open(node).changes_after(since[node.name])
            count += sum(
                1
                for c in changes
                if c.node_id in of and c.new in (MemberStatus.SUSPECT, MemberStatus.DEAD)
            )
        return count

    def _open(self, node: Node) -> MemberViewStore:
        self.rows(node)
        return self._views[node.name]

    def close(self) -> None:
        for view in self._views.values():
            view.close()


def start(
    root: Path, count: int, config: dict[str, Any], batch: int, python: str | None = None
) -> tuple[list[Node], float]:
    """``count`` nodes, the first three the seeds of all; ``batch`` started at once."""
    root.mkdir(parents=True, exist_ok=True)
    nodes: list[Node] = []
    for i in range(count):
        seeds = [n.bind for n in nodes[:3]]
        nodes.append(Node(root, f"n{i + 1:03d}", seeds, config))
        nodes[-1].python = python
    nodes[0].start()  # the first seed: the others' joins need it up
    with ThreadPoolExecutor(batch) as pool:
        for first in range(1, count, batch):
            list(pool.map(lambda n: n.start(timeout=120), nodes[first : first + batch]))
    return nodes, time.monotonic()


def cpu_percent(pids: list[int], seconds: float) -> list[float]:
    """Each process's CPU over the next ``seconds``, in % of one core."""
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(seconds)  # the measured window itself
    elapsed = time.monotonic() - t0
    return [(cpu_seconds(p) - b) / elapsed * 100 for p, b in zip(pids, before, strict=True)]


def run(root: Path, count: int, args: argparse.Namespace) -> dict[str, float]:
    idle_s, kills = args.idle, args.kills
    config: dict[str, Any] = dict(args.set)
    membership = MembershipSettings()
    suspect = config.get("suspect_after_ms", membership.suspect_after_ms)
    bound_s = (suspect + config.get("dead_after_ms", membership.dead_after_ms)) / 1000
    nodes, last_start = start(root, count, config, args.batch, args.python)
    views = Views(nodes)
    names = {n.name for n in nodes}
    try:
        wait_until(
            lambda: views.seen_everywhere(nodes, names, MemberStatus.ALIVE),
            f"{count} alive everywhere",
            600,
            0.5,
        )
        converged = time.monotonic() - last_start
        # Settle: the joins' last exchanges (table syncs, repairs) are not idle cost.
        time.sleep(min(10.0, idle_s))
        seqs = views.last_seqs(nodes)
        lo0, t0 = lo_bytes(), time.monotonic()
        cpu = cpu_percent([n.pid for n in nodes], idle_s)
        lo = (lo_bytes() - lo0) / (time.monotonic() - t0) / count
        idle_suspicions = views.suspicions(nodes, seqs, names)
        conns = []
        for n in nodes:
            status = n.status() or {}
            ov = status.get("overlay") or {}
            conns.append(ov.get("connections", count - 1))
        victims, survivors = nodes[-kills:], nodes[:-kills]
        dead = {v.name for v in victims}
        seqs = views.last_seqs(survivors)
        killed = time.monotonic()
        for v in victims:
            v.kill()
        wait_until(
            lambda: views.seen_everywhere(survivors, dead, MemberStatus.DEAD),
            "victims dead everywhere",
            300,
            0.1,
        )
        detected = time.monotonic() - killed
        false = views.suspicions(survivors, seqs, names - dead)
        return {
            "converged_s": converged,
            "cpu_pct": statistics.mean(cpu),
            "cpu_max": max(cpu),
            "lo_bytes_s": lo,
            "conn_mean": statistics.mean(conns),
            "conn_max": max(conns),
            "conn_goal": 2 * math.ceil(math.log2(count)) + 4,
            "idle_suspicions": idle_suspicions,
            "dead_s": detected,
            "bound_s": bound_s,
            "false_suspicions": false,
        }
    finally:
        views.close()
        for n in nodes:
            n.stop()


def solo(root: Path, pythons: dict[str, str | None], rounds: int, idle_s: float) -> None:
    """A lone idle overlay node's CPU under each interpreter, alternately."""
    cpu: dict[str, list[float]] = {label: [] for label in pythons}
    for r in range(rounds):
        for i, (label, python) in enumerate(pythons.items()):
            where = root / f"solo-{r}-{i}"
            where.mkdir(parents=True)
            node = Node(where, "solo", [], {"overlay": True})
            node.python = python
            node.start()
            try:
                time.sleep(2.0)  # past start-up (its first digest, its record's commit)
                [pct] = cpu_percent([node.pid], idle_s)
                cpu[label].append(pct)
            finally:
                node.stop()
    table = Table(title=f"a lone idle overlay node, {rounds} x {idle_s:.0f} s each, interleaved")
    for col in ("interpreter", "CPU % of a core: mean", "rounds"):
        table.add_column(col)
    for label, values in cpu.items():
        shown = " ".join(f"{v:.2f}" for v in values)
        table.add_row(label, f"{statistics.mean(values):.2f}", shown)
    console.print(table)


def own_netns() -> bool:
    """Re-execute in a network namespace of its own (lo up) if possible; False if this
    process should go on where it is (already inside, or no way in)."""
    if os.environ.get(OWN_NETNS) or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return False
    inner = f"ip link set lo up && exec {sys.executable} " + " ".join(
        map(_quote, [__file__, *sys.argv[1:]])
    )
    env = dict(os.environ, **{OWN_NETNS: "1"})
    sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", inner], env=env, check=False).returncode)


def setting(text: str) -> tuple[str, int]:
    name, eq, value = text.partition("=")
    if not eq or not value.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=INT")
    return name, int(value)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10, help="nodes started at once")
    parser.add_argument("--solo-against", metavar="PYTHON", help="another checkout's python")
    parser.add_argument("--rounds", type=int, default=3, help="solo rounds per interpreter")
    parser.add_argument("--shared-lo", action="store_true", help="no network namespace")
    parser.add_argument("--python", help="run the cluster's nodes with this interpreter")
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=INT",
        help="a node setting for every node (repeatable), e.g. poll_ms=250",
    )
    args = parser.parse_args()
    if not args.shared_lo:
        own_netns()
    lo_note = "own netns" if os.environ.get(OWN_NETNS) else "shared lo: includes others"
    with tempfile.TemporaryDirectory(prefix="crdtstore-bench-") as tmp:
        if args.solo_against:
            pythons = {"this tree": None, args.solo_against: args.solo_against}
            solo(Path(tmp), pythons, args.rounds, args.idle)
        who = f"nodes run by {args.python}" if args.python else "this tree"
        extra = "".join(f", {k}={v}" for k, v in args.set)
        table = Table(
            title=f"membership on real processes ({who}{extra}; loopback, this machine; {lo_note})"
        )
        for col in (
            "mode",
            "nodes",
            "last start -> all alive",
            "idle CPU/node mean (max)",
            "idle lo B/s per node",
            "connections mean / max (goal)",
            "idle suspicions",
            f"kill {args.kills}: all dead after",
            "/ bound",
            "false suspicions",
        ):
            table.add_column(col)
        for count in args.sizes:
            mode = "overlay"
            r = run(Path(tmp) / f"{mode}-{count}", count, args)
            table.add_row(
                mode,
                str(count),
                f"{r['converged_s']:.1f} s",
                f"{r['cpu_pct']:.2f}% ({r['cpu_max']:.2f}%)",
                f"{r['lo_bytes_s']:,.0f}",
                f"{r['conn_mean']:.1f} / {r['conn_max']} ({r['conn_goal']})",
                str(r["idle_suspicions"]),
                f"{r['dead_s']:.1f} s",
                f"{r['dead_s'] / r['bound_s']:.2f}",
                str(r["false_suspicions"]),
            )
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
