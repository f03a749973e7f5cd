"""Convergence of five replicas over a faulty network, against a sequential specification.

Hypothesis drives random OR-Set and LWW-map writes on random nodes, partitions and heals,
crash-restarts, drop/duplicate/reorder toggles and the passage of time. The log bound is
tiny, so gaps are often repaired by range reconciliation rather than from the log.

The specification is computed from the operation history with explicit causality: each op
records the dot it consumed and its replica's context when it ran. A write's dot survives
unless another op on the same key ran with that dot in its context (it replaced or removed
what it observed); the LWW value is the greatest (timestamp, writer) among surviving puts.
Equality with it proves no lost add, no resurrected remove and no lost last write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtstore.crdt import CausalContext, Dot, LWWMap, ORSet
from crdtstore.sync.settings import SyncSettings
from crdtstore.sync.simulator import Faults, Simulator

NODES = ["n0", "n1", "n2", "n3", "n4"]
KEYS = st.integers(0, 5)
SET_NS, MAP_NS = "set", "map"

FAST = SyncSettings(
    digest_interval_ms=200,
    repair_grace_ms=300,
    repair_timeout_ms=500,
    range_session_timeout_ms=500,
    range_fanout=4,
    range_leaf_entries=1,
    max_log_batches=6,
)

FAULTS = st.sampled_from(
    [
        Faults(),
        Faults(drop=0.3),
        Faults(duplicate=0.3),
        Faults(reorder=0.5, reorder_ms=400),
        Faults(drop=0.2, duplicate=0.2, reorder=0.3, delay_ms=(1, 50)),
    ]
)


@dataclass(frozen=True)
class Op:
    node: str
    ns: str
    key: Any
    kind: str  # add | remove | put | delete
    dot: Dot
    seen: CausalContext  # the writer's context when the op ran
    stamped: tuple[int, Any] | None = None  # (timestamp, value) of a put


def expected_entries(ops: list[Op], ns: str) -> dict[Any, dict[Dot, Any]]:
    """Key -> surviving dots (with payloads) per the sequential specification."""
    out: dict[Any, dict[Dot, Any]] = {}
    for op in ops:
        if op.ns != ns or op.kind in ("remove", "delete"):
            continue
        replaced = any(
            o.ns == ns and o.key == op.key and o is not op and op.dot in o.seen for o in ops
        )
        if not replaced:
            out.setdefault(op.key, {})[op.dot] = op.stamped
    return out


class ConvergenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulator(NODES, seed=0, settings=FAST)
        self.ops: list[Op] = []
        self.issued: dict[tuple[str, Dot], Any] = {}

    def _record(self, node: str, ns: str, key: Any, kind: str, write: Any) -> None:
        if not self.sim.nodes[node].up:
            return
        seen = self.sim.context(node, ns)
        batch = write()
        dot = Dot(node, batch.first)
        stamped = batch.delta.entries[key].get(dot) if kind == "put" else None
        self.ops.append(Op(node, ns, key, kind, dot, seen, stamped))
        if kind in ("add", "put"):
            self.issued[(ns, dot)] = stamped

    @rule(node=st.sampled_from(NODES), key=KEYS)
    def add(self, node: str, key: int) -> None:
        self._record(node, SET_NS, key, "add", lambda: self.sim.add(node, SET_NS, key))

    @rule(node=st.sampled_from(NODES), key=KEYS)
    def remove(self, node: str, key: int) -> None:
        self._record(node, SET_NS, key, "remove", lambda: self.sim.remove(node, SET_NS, key))

    @rule(node=st.sampled_from(NODES), key=KEYS, value=st.integers(0, 3))
    def put(self, node: str, key: int, value: int) -> None:
        self._record(node, MAP_NS, key, "put", lambda: self.sim.put(node, MAP_NS, key, value))

    @rule(node=st.sampled_from(NODES), key=KEYS)
    def delete(self, node: str, key: int) -> None:
        self._record(node, MAP_NS, key, "delete", lambda: self.sim.delete(node, MAP_NS, key))

    @rule(ms=st.integers(1, 2500))
    def advance(self, ms: int) -> None:
        self.sim.run(ms)

    @rule(group=st.sets(st.sampled_from(NODES), min_size=1, max_size=4))
    def partition(self, group: set[str]) -> None:
        self.sim.partition(group)

    @rule()
    def heal(self) -> None:
        self.sim.heal()

    @rule(faults=FAULTS)
    def set_faults(self, faults: Faults) -> None:
        self.sim.set_faults(faults)

    @precondition(lambda self: sum(not n.up for n in self.sim.nodes.values()) < 2)
    @rule(node=st.sampled_from(NODES))
    def crash(self, node: str) -> None:
        self.sim.crash(node)

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        if not self.sim.nodes[node].up:
            self.sim.restart(node)

    @invariant()
    def replicas_hold_only_issued_writes(self) -> None:
        for ns in self.sim.namespaces():
            for node, value in self.sim.values(ns).items():
                for key, entry in value.entries.items():
                    for dot, payload in entry.items():
                        assert self.issued.get((ns, dot), "missing") == payload, (node, key, dot)
                        assert dot in value.context, (node, dot)

    def teardown(self) -> None:
        assert self.sim.run_until_quiescent(120_000), "replicas did not converge"
        for ns, cls in ((SET_NS, ORSet), (MAP_NS, LWWMap)):
            want = expected_entries(self.ops, ns)
            writes = {n: sum(1 for o in self.ops if o.ns == ns and o.node == n) for n in NODES}
            all_dots = CausalContext(writes)
            for node, value in self.sim.values(ns).items():
                assert isinstance(value, cls)
                got = {k: dict(e) for k, e in value.entries.items() if e}
                assert got == want, (ns, node)
                assert value.context == all_dots, (ns, node)
                if isinstance(value, LWWMap):
                    for key, entry in want.items():
                        best = max(entry.items(), key=lambda de: (de[1][0], de[0].replica))
                        assert value.get(key) == best[1][1]
            holders = sum(1 for o in self.ops if o.ns == ns) and len(NODES)
            assert len(self.sim.values(ns)) == holders


ConvergenceMachine.TestCase.settings = settings(
    settings.default,
    max_examples=settings.default.max_examples,
    stateful_step_count=50,
    deadline=None,
)
TestConvergence = ConvergenceMachine.TestCase
