"""Run the chaos suite: ``python -m chaos.run --seed 1 --duration 90 --nodes 5``.

One run, per seed: build the network (:mod:`chaos.net`), start a ``crdtstore serve`` node
in each namespace and wait until every node sees every other alive; start the clients
(:mod:`chaos.client`); play the seeded fault plan (:mod:`chaos.schedule`) for
``--duration`` seconds; heal everything (every filter removed, every paused process
continued, every killed node restarted); stop the clients; then poll, with a bound, until
every replica holds identical entries and every node sees every member alive, which gives
the time to converge. Last, check the history against each replica (:mod:`chaos.checker`).

The exit status is 0 if every seed passed, 1 if any failed (2 for a run that could not
start, such as one without root). A failed run keeps its directory (node logs, histories,
the plan, the differences between replicas); ``--keep`` keeps a passing one too.
Everything the run created (processes, namespaces, veths, bridge, TAP) is removed at the
end, also after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from chaos import net
from chaos.checker import Replica, Verdict, check
from chaos.client import REGISTERS, SET
from chaos.history import read_history
from chaos.processes import (
    NODE_PORT,
    ClientProcess,
    DelayerProcess,
    Exit,
    NodeProcess,
    Process,
)
from chaos.schedule import TRACKS, Fault, make_schedule
from crdtstore.inspect import Snapshot, diff, dump, live_status

FORM_TIMEOUT_S = 60.0
"""How long a fresh cluster may take until every node sees every other alive."""
POLL_S = 0.25
SUPERVISE_S = 0.5
"""How often, between two planned faults, the run looks for processes that died."""
LINK_PRIO = {"loss": net.LOSS_PRIO, "delay": net.DELAY_PRIO, "duplicate": net.DUPLICATE_PRIO}
REPORT_WIDTH = 160
"""Columns of the report when it goes to a file or a pipe, where rich would assume 80."""
_runs = itertools.count()


@dataclass
class Options:
    seed: int
    nodes: int
    clients_per_node: int
    duration: float
    rate: float
    tracks: tuple[str, ...]
    converge_timeout: float
    delay_ms: tuple[float, float]
    workdir: Path | None
    keep: bool


@dataclass
class Result:
    seed: int
    workdir: Path
    verdict: Verdict = field(default_factory=Verdict)
    identical: bool = False
    members_alive: bool = False
    converge_s: float | None = None
    unexpected: list[Exit] = field(default_factory=list)
    unclean: list[str] = field(default_factory=list)
    """Processes that did not exit 0 when asked to stop."""
    faults: int = 0
    error: str | None = None
    """Why the run could not complete (set-up failed, interrupted)."""

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.verdict.ok
            and self.identical
            and self.members_alive
            and not self.unexpected
            and not self.unclean
        )


def read_state(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Every entry (key, value, dots) of the workload's namespaces on one node's disk."""
    snap = Snapshot(str(data))
    try:
        names = snap.namespaces()
        return {ns: dump(snap, ns)["entries"] if ns in names else [] for ns in (SET, REGISTERS)}
    finally:
        snap.close()


def replica_of(node: str, state: dict[str, list[dict[str, Any]]]) -> Replica:
    return Replica(
        node,
        frozenset(str(e["key"]) for e in state[SET]),
        {str(e["key"]): e["value"] for e in state[REGISTERS]},
    )


def members_seen(data: Path) -> dict[str, str]:
    """node id -> status, as the node holding ``data`` sees the cluster now ({} if its
    status file is missing or stale)."""
    try:
        status = live_status(str(data))
    except SystemExit:  # live_status's way of saying there is no status file yet
        return {}
    if status["stale"]:
        return {}
    return {m["node_id"]: m["status"] for m in status["members"]}


class ChaosRun:
    """One seed's run, from an empty machine back to an empty machine."""

    def __init__(self, options: Options, console: Console) -> None:
        self.o = options
        self.console = console
        self.topo = net.Topology(f"cx{os.getpid()}-{next(_runs)}", options.nodes)
        base = options.workdir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"crdtstore-chaos-{options.seed}-", dir=base))
        self.history_dir = self.workdir / "history"
        self.history_dir.mkdir()
        self.result = Result(options.seed, self.workdir)
        self.nodes: list[NodeProcess] = []
        self.clients: list[ClientProcess] = []
        self.delayer: DelayerProcess | None = None
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:7.1f}s[/] {message}")

    def processes(self) -> Iterator[Process]:
        yield from self.nodes
        yield from self.clients
        if self.delayer is not None:
            yield self.delayer

    # -- the phases ----------

    def run(self) -> Result:
        plan = make_schedule(
            self.o.seed,
            self.o.nodes,
            self.o.nodes * self.o.clients_per_node,
            self.o.duration,
            self.o.tracks,
        )
        self.result.faults = len(plan)
        (self.workdir / "plan.txt").write_text("".join(f.describe() + "\n" for f in plan))
        try:
            self.set_up()
            self.play(plan)
            self.heal()
            self.converge()
        finally:
            self.tear_down()
        return self.result

    def set_up(self) -> None:
        for name in net.remove_stale():
            self.say(f"removed namespace {name} of a run that is gone")
        self.topo.create()
        self.delayer = DelayerProcess(
            "delayer",
            self.workdir / "delayer.log",
            namespace=self.topo.hub,
            tap=net.DELAY_TAP,
            seed=self.o.seed,
            min_ms=self.o.delay_ms[0],
            max_ms=self.o.delay_ms[1],
        )
        self.delayer.start()
        self.topo.attach_delayer()
        count = self.o.nodes
        for i in self.topo.nodes():
            # Two seeds, so that a node restarted while one of them is cut off still
            # finds the cluster; the seeds themselves join through each other.
            seeds = [f"tcp://{self.topo.address(j)}:{NODE_PORT}" for j in (1, 2) if j != i]
            node = NodeProcess(
                f"n{i}",
                self.workdir / f"n{i}.log",
                namespace=self.topo.node_ns(i),
                address=self.topo.address(i),
                data=self.workdir / f"n{i}",
                seeds=tuple(seeds),
            )
            node.start()
            self.nodes.append(node)
        self.say(f"{count} nodes up in namespaces {self.topo.prefix}-n1..n{count}")
        if self.wait(self.all_alive, FORM_TIMEOUT_S) is None:
            raise RuntimeError(f"the cluster did not form within {FORM_TIMEOUT_S:.0f}s")
        for i, (node, _) in enumerate(
            itertools.product(self.nodes, range(self.o.clients_per_node)), start=1
        ):
            client = ClientProcess(
                f"c{i}",
                self.workdir / f"c{i}.log",
                client=f"c{i}",
                node=node.name,
                data=node.data,
                history_dir=self.history_dir,
                seed=self.o.seed,
                rate=self.o.rate,
            )
            client.start()
            self.clients.append(client)
        self.say(f"cluster formed; {len(self.clients)} clients writing")

    def play(self, plan: list[Fault]) -> None:
        events: list[tuple[float, int, str, Fault]] = []
        for fault in plan:
            events.append((fault.start, 1, "begin", fault))
            events.append((fault.end, 0, "end", fault))  # at one instant: ends first
        events.sort(key=lambda e: (e[0], e[1]))
        start = time.monotonic()
        for when, _, action, fault in events:
            self.until(start + when)
            self.say(f"{action:5} {fault.describe()}")
            (self.begin if action == "begin" else self.end)(fault)
        self.until(start + self.o.duration)

    def until(self, deadline: float) -> None:
        """Supervise the processes until ``deadline`` (the plan's clock)."""
        while (left := deadline - time.monotonic()) > 0:
            self.supervise()
            time.sleep(min(left, SUPERVISE_S))  # the plan's clock: faults start on time
        self.supervise()

    def supervise(self) -> None:
        """Restart, as a supervisor would, any process that died without being asked."""
        for proc in self.processes():
            found = proc.exited_unexpectedly()
            if found is None:
                continue
            self.result.unexpected.append(found)
            self.say(f"[red]unexpected exit[/] {found.describe()}; restarting it")
            if isinstance(proc, ClientProcess):
                proc.restart()
            elif isinstance(proc, NodeProcess):
                proc.start()
            else:
                raise RuntimeError(f"the delay line died: {found.describe()}")

    def begin(self, fault: Fault) -> None:
        if fault.track == "cut":
            self.topo.partition(fault.blocked)
        elif fault.track == "link":
            apply = {
                "loss": self.topo.loss,
                "delay": self.topo.delay,
                "duplicate": self.topo.duplicate,
            }[fault.kind]
            for node in fault.targets:
                apply(node, fault.probability)
        else:
            proc = self.target(fault)
            if fault.kind == "kill":
                proc.kill()
            else:
                proc.pause()

    def end(self, fault: Fault) -> None:
        if fault.track == "cut":
            self.topo.heal([net.PARTITION_PRIO])
        elif fault.track == "link":
            self.topo.heal([LINK_PRIO[fault.kind]])
        else:
            proc = self.target(fault)
            if fault.kind == "pause":
                proc.resume()
            elif isinstance(proc, ClientProcess):
                proc.restart()
            elif proc.down:
                proc.start()

    def target(self, fault: Fault) -> Process:
        group: list[NodeProcess] | list[ClientProcess] = (
            self.clients if fault.track == "client" else self.nodes
        )
        return group[fault.targets[0] - 1]

    def heal(self) -> None:
        self.topo.heal()
        acted = self.topo.acted
        self.say(
            f"packets dropped (cuts, loss) {self.topo.dropped()}, duplicated "
            f"{acted['duplicated']}, sent through the delay line {acted['delayed']}"
        )
        for node in self.nodes:
            if node.down:
                node.start()
            elif node.paused:
                node.resume()
        self.supervise()
        for client in self.clients:
            code = client.stop()
            if code != 0:
                self.result.unclean.append(f"{client.process}: exit {code} on SIGTERM")
        self.say("healed: no faults, every node running, clients stopped")

    def converge(self) -> None:
        states: list[dict[str, list[dict[str, Any]]]] = []

        def converged() -> bool:
            self.supervise()
            states[:] = [read_state(node.data) for node in self.nodes]
            self.result.identical = all(s == states[0] for s in states[1:])
            self.result.members_alive = self.all_alive()
            return self.result.identical and self.result.members_alive

        self.result.converge_s = self.wait(converged, self.o.converge_timeout)
        if self.result.converge_s is None:
            self.say(f"[red]not converged[/] after {self.o.converge_timeout:.0f}s")
            self.explain_divergence()
        else:
            self.say(f"converged {self.result.converge_s:.1f}s after the heal")
        for node in self.nodes:
            code = node.stop()
            if code != 0:
                self.result.unclean.append(f"{node.name}: exit {code} on SIGTERM")
        history = read_history(self.history_dir)
        replicas = [replica_of(n.name, s) for n, s in zip(self.nodes, states, strict=True)]
        self.result.verdict = check(history.ops, replicas)
        if history.torn_lines:
            self.result.verdict.errors["torn history line"] += history.torn_lines

    def wait(self, condition: Callable[[], bool], bound: float) -> float | None:
        """Poll ``condition`` until it holds (seconds it took) or ``bound`` passes (None)."""
        start = time.monotonic()
        while True:
            if condition():
                return time.monotonic() - start
            if time.monotonic() - start > bound:
                return None
            time.sleep(POLL_S)  # the poll's interval; the bound above ends the wait

    def all_alive(self) -> bool:
        names = {node.name for node in self.nodes}
        for node in self.nodes:
            seen = members_seen(node.data)
            if {n for n, status in seen.items() if status == "alive"} != names:
                return False
        return True

    def explain_divergence(self) -> None:
        """Save what differs between the first node and each other, and who sees whom."""
        views = {node.name: members_seen(node.data) for node in self.nodes}
        (self.workdir / "members.json").write_text(json.dumps(views, indent=1, sort_keys=True))
        for name, view in views.items():
            self.say(f"  {name} sees {view or 'no fresh status'}")
        first = self.nodes[0]
        for node in self.nodes[1:]:
            a, b = Snapshot(str(first.data)), Snapshot(str(node.data))
            try:
                found = diff(a, b)["differences"]
            finally:
                a.close()
                b.close()
            out = self.workdir / f"diff-{first.name}-{node.name}.json"
            out.write_text(json.dumps(found, indent=1, sort_keys=True))
            if found:
                self.say(f"  {first.name} vs {node.name}: {len(found)} entries differ ({out})")

    def tear_down(self) -> None:
        try:
            if self.delayer is not None and self.delayer.running():
                self.delayer.stop()
                if self.delayer.last_words.strip():
                    self.say(f"delay line: {self.delayer.last_words.strip()}")
        finally:
            try:
                for proc in self.processes():
                    if proc.running():
                        proc.kill()
            finally:
                self.topo.destroy()


# -- reporting ----------


def violations_table(result: Result, limit: int) -> Table | None:
    if not result.verdict.violations:
        return None
    table = Table("kind", "element / key", "on", "detail", title=f"seed {result.seed}")
    shown: dict[str, int] = {}
    for v in result.verdict.violations:
        shown[v.kind] = shown.get(v.kind, 0) + 1
        if shown[v.kind] <= limit:
            table.add_row(v.kind, v.subject, ",".join(v.nodes), v.detail)
    return table


def summary_table(results: list[Result]) -> Table:
    table = Table(
        "seed",
        "faults",
        "acked",
        "unknown",
        "failed",
        "lost",
        "phantoms",
        "undone rm",
        "stale reg",
        "identical",
        "members",
        "crashes",
        "converge s",
        "verdict",
        title="chaos",
    )
    for r in results:
        c = r.verdict.counts
        kinds = Counter(v.kind for v in r.verdict.violations)
        acked = sum(v for k, v in c.items() if k.endswith(" ok"))
        table.add_row(
            str(r.seed),
            str(r.faults),
            str(acked),
            str(sum(v for k, v in c.items() if k.endswith(" info"))),
            str(sum(v for k, v in c.items() if k.endswith(" fail"))),
            str(kinds["lost add"] + kinds["lost register"]),
            str(kinds["phantom"] + kinds["phantom value"]),
            str(kinds["undone remove"]),
            str(kinds["stale register"]),
            "yes" if r.identical else "[red]NO[/]",
            "all alive" if r.members_alive else "[red]NO[/]",
            str(len(r.unexpected)),
            "-" if r.converge_s is None else f"{r.converge_s:.1f}",
            "[green]PASS[/]" if r.ok else f"[red]FAIL[/]{f' ({r.error})' if r.error else ''}",
        )
    return table


# -- the command line ----------


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the run through every ``finally`` (SIGINT too: a
    shell starts a background job with SIGINT ignored, and Python then keeps it so)."""

    def raise_interrupt(signum: int, _frame: Any) -> NoReturn:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {
        s: signal.signal(s, raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run_seed(options: Options, console: Console) -> Result:
    console.rule(f"chaos seed={options.seed}")
    clients = options.nodes * options.clients_per_node
    console.print(
        f"seed={options.seed} nodes={options.nodes} clients={clients}"
        f" duration={options.duration:.0f}s tracks={','.join(options.tracks)}"
    )
    chaos = ChaosRun(options, console)
    console.print(f"workdir {chaos.workdir}")
    try:
        result = chaos.run()
    except (RuntimeError, net.NetError, OSError) as exc:
        result = chaos.result
        result.error = str(exc)
        console.print(f"[red]run failed:[/] {exc}")
    table = violations_table(result, limit=10)
    if table is not None:
        console.print(table)
    for found in result.unexpected:
        console.print(f"[red]unexpected exit[/] {found.describe()}\n{found.log_tail}")
    for line in result.unclean:
        console.print(f"[red]unclean stop[/] {line}")
    if result.verdict.errors:
        console.print(f"failed operations by error: {dict(result.verdict.errors)}")
    if result.ok and not options.keep:
        shutil.rmtree(chaos.workdir, ignore_errors=True)
    else:
        console.print(f"kept {chaos.workdir}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__)
    parser.add_argument(
        "--seed", type=int, action="append", help="a seed (repeatable; default: one random)"
    )
    parser.add_argument("--nodes", type=int, default=5, help="nodes, at least 3")
    parser.add_argument("--clients-per-node", type=int, default=1)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of faults")
    parser.add_argument("--rate", type=float, default=20.0, help="ops a second per client")
    parser.add_argument(
        "--tracks",
        default=",".join(TRACKS),
        help=f"fault tracks to play, comma-separated (default: {','.join(TRACKS)})",
    )
    parser.add_argument(
        "--converge-timeout", type=float, default=60.0, help="bound on convergence after heal"
    )
    parser.add_argument("--delay-ms", type=float, nargs=2, default=(20.0, 300.0))
    parser.add_argument("--workdir", type=Path, help="where run directories go (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep passing runs' directories")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = REPORT_WIDTH
    why = net.netns_available()
    if why is not None:
        console.print(f"chaos: cannot run: {why}")
        return 2
    if args.nodes < 3:
        console.print("chaos: --nodes must be at least 3 (a bridge partition needs three)")
        return 2
    tracks = tuple(t for t in args.tracks.split(",") if t)
    unknown = set(tracks) - set(TRACKS)
    if unknown:
        console.print(f"chaos: unknown tracks {sorted(unknown)}; known: {', '.join(TRACKS)}")
        return 2
    seeds = args.seed or [int.from_bytes(os.urandom(4), "big")]
    results: list[Result] = []
    try:
        with interrupts_as_exceptions():
            run_seeds(args, tracks, seeds, console, results)
    except KeyboardInterrupt as exc:
        console.print(f"chaos: interrupted ({exc or 'SIGINT'}); everything it made is removed")
        if results:
            console.print(summary_table(results))
        return 130
    console.print(summary_table(results))
    return 0 if all(r.ok for r in results) else 1


def run_seeds(
    args: argparse.Namespace,
    tracks: tuple[str, ...],
    seeds: list[int],
    console: Console,
    results: list[Result],
) -> None:
    for seed in seeds:
        options = Options(
            seed=seed,
            nodes=args.nodes,
            clients_per_node=args.clients_per_node,
            duration=args.duration,
            rate=args.rate,
            tracks=tracks,
            converge_timeout=args.converge_timeout,
            delay_ms=(args.delay_ms[0], args.delay_ms[1]),
            workdir=args.workdir,
            keep=args.keep,
        )
        results.append(run_seed(options, console))


if __name__ == "__main__":
    sys.exit(main())
