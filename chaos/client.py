"""A chaos client: writes through one node's directory and records its history.

It opens the directory with ``crdtstore.open(DIR)`` (no ``bind``: it writes locally, and
the ``crdtstore serve`` process holding the directory's network role replicates its
commits), then runs a seeded random workload until SIGTERM:

- OR-Set ``set``: adds of elements unique to this operation (``<process>:<n>``), and
  removes of elements the client has just seen in its replica (its own or any other
  client's), so that every acknowledged remove removed an observed add;
- LWW-map ``reg``: puts of unique values (``<process>:<n>``) to a few keys every client
  shares (``s0``..), and to a few keys of this client's own (``<client>-k0``..).

Every operation is recorded (:mod:`chaos.history`) as invoke, then ok or fail. The pace is
a Poisson process of ``--rate`` operations a second: the waits are the workload's think
time, and a SIGTERM ends one at once.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import crdtstore
from chaos.history import ADD, PUT, REMOVE, HistoryWriter

SET = "set"
REGISTERS = "reg"
REFRESH_EVERY = 20
"""Operations between two full reads of the set, which feed the pool of remove
candidates with other clients' elements."""
POOL_MAX = 200


def shared_key(i: int) -> str:
    return f"s{i}"


def own_key(client: str, i: int) -> str:
    return f"{client}-k{i}"


class Workload:
    """The seeded choice of each next operation, and what the client has seen."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = random.Random(f"{args.seed}/{args.process}")
        self.args = args
        self.pool: list[str] = []

    def next_op(self, n: int) -> tuple[str, str, str | None]:
        """(function, element or key, value) of operation ``n``."""
        unique = f"{self.args.process}:{n}"
        roll = self.rng.random()
        if roll < 0.40:
            return ADD, unique, None
        if roll < 0.55 and self.pool:
            return REMOVE, self.pool.pop(self.rng.randrange(len(self.pool))), None
        if roll < 0.85:
            return PUT, shared_key(self.rng.randrange(self.args.shared_keys)), unique
        return PUT, own_key(self.args.client, self.rng.randrange(self.args.own_keys)), unique

    def saw(self, elements: list[Any]) -> None:
        picks = self.rng.sample(elements, min(len(elements), POOL_MAX // 2))
        self.pool = (self.pool + [str(e) for e in picks])[-POOL_MAX:]


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_term(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    history = HistoryWriter(args.history, args.process, args.node)
    workload = Workload(args)
    with crdtstore.open(args.data) as node:
        elements = node.or_set(SET)
        registers = node.lww_map(REGISTERS)
        n = 0
        while not stop.wait(workload.rng.expovariate(args.rate)):
            n += 1
            if n % REFRESH_EVERY == 0:
                workload.saw(list(elements))
            f, key, value = workload.next_op(n)
            if f == REMOVE and key not in elements:
                continue  # already removed: nothing left to observe, so nothing to record
            history.invoke(n, f, key, value, observed=f == REMOVE)
            try:
                if f == ADD:
                    elements.add(key)
                    workload.pool.append(key)
                elif f == REMOVE:
                    elements.discard(key)
                else:
                    registers[key] = value
            except Exception as exc:  # recorded as a failed op, and the checker counts it
                history.fail(n, f"{type(exc).__name__}: {exc}")
                continue
            history.ok(n)
    history.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="chaos.client", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the node's directory")
    parser.add_argument("--node", required=True, help="the node's id, for the history")
    parser.add_argument("--client", required=True, help="client id (owns its own keys)")
    parser.add_argument("--process", required=True, help="this incarnation, e.g. c1.0")
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="operations a second")
    parser.add_argument("--shared-keys", type=int, default=6)
    parser.add_argument("--own-keys", type=int, default=3)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
