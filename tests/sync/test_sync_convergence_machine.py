"""Convergence of five replicas over a faulty network, against a sequential specification.

Hypothesis drives random OR-Set and LWW-map writes on random nodes, turns of several
writers on the same keys (each write observing the others' latest), partitions and heals,
crash-restarts, graceful leaves and rejoins, drop/duplicate/reorder toggles and the
passage of time. It runs twice over memory replicas: with a tiny log bound, so gaps are
often repaired by range reconciliation, and with the production settings (long logs,
coalesced publishes and repair replies), so a restarted node's gap is repaired from its
peers' logs. A third run, with a smaller example budget, has the tiny log bound over
LMDB replicas in a temporary directory: the replica production runs, under the same
schedules.

The specification is computed from the operation history with explicit causality: each op
records the dot it consumed and its replica's context when it ran. A write's dot survives
unless another op on the same key ran with that dot in its context (it replaced or removed
what it observed); the LWW value is the greatest (timestamp, writer) among surviving puts.
Equality with it proves no lost add, no resurrected remove and no lost last write.

Liveness, not only eventual equality: after the heal every replica must converge within
:func:`liveness_bound_ms` of simulated time, derived from the settings (the stuck-replica
bound, a range session's retries, a few digest rounds). A replica that stays diverged, as
a restarted node once did when repair replies waited on each other, fails the bound.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtstore.crdt import CausalContext, Dot, LWWMap, ORSet
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.lmdb_replica import lmdb_replicas
from crdtstore.testing.simulator import Faults, ReplicaFactory, Simulator, memory_replicas

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
    max_wait_ms=2000,
    stuck_after_ms=2000,
)
PRODUCTION = SyncSettings()


def liveness_bound_ms(cfg: SyncSettings) -> int:
    """How long after a heal every replica must have converged: a stuck namespace is
    noticed within ``stuck_after_ms`` plus a digest round, and its range session takes
    at most its retries' timeouts; twice that, for a session that was cut by the heal
    itself, plus a few digest rounds for the last digests and repairs to cross."""
    session = (cfg.range_session_retries + 1) * cfg.range_session_timeout_ms
    return 2 * (cfg.stuck_after_ms + cfg.digest_interval_ms + session) + (
        5 * cfg.digest_interval_ms + cfg.repair_grace_ms + cfg.repair_timeout_ms
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
    cfg = FAST

    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulator(NODES, seed=0, settings=self.cfg, replicas=self.replicas())
        self.ops: list[Op] = []
        self.issued: dict[tuple[str, Dot], Any] = {}

    def replicas(self) -> ReplicaFactory:
        return memory_replicas

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

    @rule(
        writers=st.lists(st.sampled_from(NODES), min_size=2, max_size=3, unique=True),
        keys=st.lists(KEYS, min_size=1, max_size=2, unique=True),
        turns=st.integers(2, 12),
        gap_ms=st.integers(5, 60),
    )
    def turns(self, writers: list[str], keys: list[int], turns: int, gap_ms: int) -> None:
        """Writers take turns putting the same keys, each turn seeing the last ones: every
        origin's batches then depend on the others', the pattern repair must not tangle."""
        for i in range(turns):
            node = writers[i % len(writers)]
            for key in keys:
                self.put(node, key, i % 4)
            self.sim.run(gap_ms)

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
        if not self.sim.nodes[node].up and not self.sim.nodes[node].left:
            self.sim.restart(node)

    @precondition(lambda self: sum(not n.up for n in self.sim.nodes.values()) < 2)
    @rule(node=st.sampled_from(NODES))
    def leave(self, node: str) -> None:
        if self.sim.nodes[node].up:
            self.sim.leave(node)

    @rule(node=st.sampled_from(NODES))
    def rejoin(self, node: str) -> None:
        if self.sim.nodes[node].left:
            self.sim.rejoin(node)

    @invariant()
    def replicas_hold_only_issued_writes(self) -> None:
        for ns in self.sim.namespaces():
            for node, value in self.sim.values(ns).items():
                for key, entry in value.entries.items():
                    for dot, payload in entry.items():
                        assert self.issued.get((ns, dot), "missing") == payload, (node, key, dot)
                        assert dot in value.context, (node, dot)

    def teardown(self) -> None:
        bound = liveness_bound_ms(self.cfg)
        assert self.sim.run_until_quiescent(bound), f"not converged {bound} ms after heal"
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


class ProductionConvergenceMachine(ConvergenceMachine):
    cfg = PRODUCTION


class LMDBConvergenceMachine(ConvergenceMachine):
    """The tiny log bound over LMDB replicas, one directory per node, removed after."""

    def replicas(self) -> ReplicaFactory:
        self.root = Path(tempfile.mkdtemp(prefix="crdt-sim-"))
        factory, self.opened = lmdb_replicas(self.root, self.cfg)
        return factory

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            for replica in self.opened:
                replica.close()
            shutil.rmtree(self.root, ignore_errors=True)


ConvergenceMachine.TestCase.settings = settings(
    settings.default,
    max_examples=settings.default.max_examples,
    stateful_step_count=50,
    deadline=None,
)
ProductionConvergenceMachine.TestCase.settings = settings(
    settings.default,
    max_examples=max(10, settings.default.max_examples // 2),
    stateful_step_count=50,
    deadline=None,
)
LMDBConvergenceMachine.TestCase.settings = settings(
    settings.default,
    max_examples=max(3, settings.default.max_examples // 20),
    stateful_step_count=50,
    deadline=None,
)
TestConvergence = ConvergenceMachine.TestCase
TestConvergenceProductionSettings = ProductionConvergenceMachine.TestCase
TestConvergenceOverLMDB = LMDBConvergenceMachine.TestCase
