"""The membership protocol on the deterministic network simulator (``crdtstore.testing``).

Every scenario is seeded and runs in simulated time, so a failure replays exactly and no
assertion depends on the machine's speed. Bounds are derived from the protocol's
settings (what the protocol promises), not tuned to what one run happened to show.
Frames are decoded with the real codec (the simulator's default).
"""

from __future__ import annotations

import pytest
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.protocol import ProtocolSettings
from crdtstore.testing.netsim import NetSim, SimNode

SETTINGS = ProtocolSettings()
DISSEMINATION_MS = 1_000
"""Allowance for a verdict to cross the overlay (a few hops of at most 10 ms plus the
gossip batching interval each, with room for a lost frame)."""
DETECTION_BOUND_MS = (
    SETTINGS.suspect_after_ms + SETTINGS.dead_after_ms + 2 * SETTINGS.probe_interval_ms
)
"""Silence before suspicion, suspicion before death, each checked once a probe period."""


def node_ids(n: int) -> list[str]:
    return [f"n{i:02d}" for i in range(n)]


def start_cluster(
    n: int, seed: int, loss: float = 0.0, slow: int = 0, stagger_ms: float = 50.0
) -> NetSim:
    """``n`` nodes started one after another, each with an earlier node as its seed."""
    sim = NetSim(seed, loss=loss)
    ids = node_ids(n)
    for i, node_id in enumerate(ids):
        sim.run_until(i * stagger_ms)
        seeds = [ids[sim.rng.randrange(i)]] if i else []
        sim.add_node(node_id, seeds=seeds, slow=i >= n - slow)
    settled = sim.run_until_true(lambda: everyone_alive(sim), sim.now + 30_000)
    assert settled is not None, "the cluster did not form within 30 s"
    return sim


def everyone_alive(sim: NetSim) -> bool:
    live = sim.live()
    want = {n.node_id for n in live}
    for node in live:
        members = node.protocol.members()
        if any(members.get(m, (None,))[0] is not MemberStatus.ALIVE for m in want):
            return False
    return True


def views_bounded_and_symmetric(sim: NetSim) -> bool:
    size = SETTINGS.overlay.active_size
    for node in sim.live():
        active = node.protocol.overlay.active
        if not 1 <= len(active) <= size:
            return False
        for other in active:
            if node.node_id not in sim.nodes[other].protocol.overlay.active:
                return False
    return True


def all_see(sim: NetSim, subject: str, status: MemberStatus, min_incarnation: int = 0) -> bool:
    return sim.share_seeing(subject, status, min_incarnation) == 1.0


def agreement(sim: NetSim) -> tuple[bool, str]:
    """Do all live nodes hold the same (status, incarnation) for the same members, with
    every live node alive at its own incarnation and every stopped one dead or left?"""
    live = sim.live()
    if not live:
        return True, ""
    views = {
        n.node_id: {m: (s, inc) for m, (s, inc, _) in n.protocol.members().items()} for n in live
    }
    first_id, first = next(iter(views.items()))
    for node_id, view in views.items():
        if view != first:
            diff = {
                m: (first.get(m), view.get(m))
                for m in first.keys() | view.keys()
                if first.get(m) != view.get(m)
            }
            return False, f"{first_id} and {node_id} differ: {diff}"
    for node_id, node in sim.nodes.items():
        held = first.get(node_id)
        if node.up and held != (MemberStatus.ALIVE, node.protocol.incarnation):
            return False, f"live {node_id} held as {held}"
        if (
            not node.up
            and held is not None
            and held[0] not in (MemberStatus.DEAD, MemberStatus.LEFT)
        ):
            return False, f"stopped {node_id} held as {held}"
    return True, ""


def suspicions(sim: NetSim, after_ms: float = 0.0) -> list[str]:
    return [
        f"{o.observer} suspected {o.change.node_id} at {o.at_ms:.0f}"
        for o in sim.observations
        if o.change.new is MemberStatus.SUSPECT and o.at_ms >= after_ms
    ]


# -- scenarios -----------------------------------------------------------------------------


def test_cluster_forms_with_bounded_symmetric_views_in_one_component() -> None:
    sim = start_cluster(32, seed=1)
    assert sim.run_until_true(lambda: views_bounded_and_symmetric(sim), sim.now + 20_000)
    assert len(sim.components()) == 1
    assert not suspicions(sim)


def test_crash_is_seen_dead_by_every_survivor_within_the_bound() -> None:
    sim = start_cluster(32, seed=2)
    sim.run_until(sim.now + 5_000)
    crashed_at = sim.now
    sim.crash("n05")
    bound = DETECTION_BOUND_MS + DISSEMINATION_MS
    done = sim.run_until_true(
        lambda: all_see(sim, "n05", MemberStatus.DEAD), crashed_at + 3 * bound
    )
    assert done is not None, "not every survivor saw the crash"
    assert all(n.protocol.local_health == 0 for n in sim.live())  # nothing was stretched
    assert done - crashed_at <= bound
    first = sim.first_time("n05", MemberStatus.DEAD, 0.0, after_ms=crashed_at)
    assert first is not None
    # Not before the protocol's own timers allow: silence (from the last ack, at most a
    # probe period before the crash) then the whole suspicion.
    earliest = SETTINGS.suspect_after_ms - SETTINGS.probe_interval_ms + SETTINGS.dead_after_ms
    assert first - crashed_at >= earliest
    assert not [s for s in suspicions(sim) if "suspected n05" not in s]


def test_a_survivor_whose_neighbours_all_crash_sees_them_dead_within_the_bound() -> None:
    """Two of three nodes killed: the survivor hears no one, yet it runs on time, so its
    own health stays good and their detection is not stretched."""
    sim = start_cluster(3, seed=4)
    sim.run_until(sim.now + 5_000)
    crashed_at = sim.now
    for victim in ("n01", "n02"):
        sim.crash(victim)
    bound = DETECTION_BOUND_MS + DISSEMINATION_MS
    done = sim.run_until_true(
        lambda: all(all_see(sim, v, MemberStatus.DEAD) for v in ("n01", "n02")),
        crashed_at + 10 * bound,
    )
    assert done is not None and done - crashed_at <= bound
    assert sim.nodes["n00"].protocol.local_health == 0


def test_leave_is_known_by_all_quickly_and_never_as_a_failure() -> None:
    sim = start_cluster(32, seed=3)
    left_at = sim.now
    sim.leave("n07")
    done = sim.run_until_true(lambda: all_see(sim, "n07", MemberStatus.LEFT), left_at + 5_000, 10)
    assert done is not None and done - left_at <= DISSEMINATION_MS
    sim.run_until(sim.now + DETECTION_BOUND_MS)
    assert all_see(sim, "n07", MemberStatus.LEFT)
    assert not suspicions(sim)


def test_paused_node_is_suspected_then_refutes_with_a_higher_incarnation() -> None:
    sim = start_cluster(24, seed=4)
    paused_at = sim.now
    sim.pause("n09")
    # Long enough to be suspected, shorter than the suspicion's dead timeout.
    sim.run_until(paused_at + SETTINGS.suspect_after_ms + 2 * SETTINGS.probe_interval_ms + 500)
    assert any("suspected n09" in s for s in suspicions(sim, paused_at))
    sim.resume("n09")
    done = sim.run_until_true(
        lambda: all_see(sim, "n09", MemberStatus.ALIVE, 2), sim.now + 5_000, 50
    )
    assert done is not None, "the refutation did not reach everyone"
    assert sim.nodes["n09"].protocol.incarnation >= 2
    assert [r for r in sim.refutations if r[1] == "n09"]
    assert sim.first_time("n09", MemberStatus.DEAD, 0.0) is None  # never declared dead


def test_restarted_node_is_alive_again_everywhere() -> None:
    sim = start_cluster(24, seed=5)
    sim.crash("n04")
    assert sim.run_until_true(lambda: all_see(sim, "n04", MemberStatus.DEAD), sim.now + 30_000)
    sim.add_node("n04", seeds=["n11"], incarnation=2)
    done = sim.run_until_true(
        lambda: all_see(sim, "n04", MemberStatus.ALIVE, 2), sim.now + 5_000, 50
    )
    assert done is not None
    assert sim.run_until_true(
        lambda: everyone_alive(sim) and len(sim.components()) == 1, sim.now + 60_000
    )


def test_partition_halves_see_each_other_dead_then_all_alive_and_connected_after_heal() -> None:
    sim = start_cluster(24, seed=6)
    ids = node_ids(24)
    left, right = ids[:12], ids[12:]
    sim.partition(left, right)

    def halves_apart() -> bool:
        return all(
            sim.nodes[a].protocol.status(b) is MemberStatus.DEAD
            for side, other in ((left, right), (right, left))
            for a in side
            for b in other
        )

    assert sim.run_until_true(halves_apart, sim.now + 120_000, 500), (
        "a half never saw the other dead"
    )
    sim.heal()
    healed = sim.run_until_true(
        lambda: everyone_alive(sim) and len(sim.components()) == 1, sim.now + 120_000, 500
    )
    assert healed is not None, f"after heal: {len(sim.components())} components"
    assert agreement(sim)[0]


def test_member_with_no_neighbour_across_a_partition_is_still_seen_dead_there() -> None:
    """Neighbours alone would never probe ``x`` from the other side: every one of them
    is on its side. The random probes find it."""
    sim = start_cluster(24, seed=12)
    x = "n10"
    side = {x, *sim.nodes[x].protocol.overlay.active}
    other = [n for n in node_ids(24) if n not in side]
    sim.partition(sorted(side), other)
    seen = sim.run_until_true(
        lambda: all(sim.nodes[o].protocol.status(x) is MemberStatus.DEAD for o in other),
        sim.now + 60_000,
        500,
    )
    assert seen is not None


def test_loss_and_slow_nodes_cause_no_false_suspicion_over_a_long_idle_run() -> None:
    sim = start_cluster(40, seed=7, loss=0.01, slow=4)
    sim.run_until(sim.now + 180_000)
    assert everyone_alive(sim)
    assert not suspicions(sim)
    assert not sim.refutations


def test_one_sided_link_is_repaired() -> None:
    sim = start_cluster(16, seed=8)
    a = sim.nodes["n03"]
    b_id = next(iter(a.protocol.overlay.active))
    b = sim.nodes[b_id]
    # b forgets the link without telling a (as a lost Disconnect would leave it).
    b.protocol.overlay.active.pop("n03")
    assert not views_bounded_and_symmetric(sim)
    assert sim.run_until_true(lambda: views_bounded_and_symmetric(sim), sim.now + 10_000, 50)
    assert a.protocol.stats.get("one_sided_links", 0) >= 1


def test_a_run_replays_from_its_seed() -> None:
    def trace(seed: int) -> list[tuple[float, str, str, str]]:
        sim = start_cluster(12, seed=seed, loss=0.05)
        sim.crash("n03")
        sim.run_until(sim.now + 15_000)
        return [
            (o.at_ms, o.observer, o.change.node_id, o.change.new.value) for o in sim.observations
        ]

    assert trace(9) == trace(9)
    assert trace(9) != trace(10)


# -- state machine -------------------------------------------------------------------------


class MembershipMachine(RuleBasedStateMachine):
    """Crashes, restarts, leaves, rejoins, partitions and lossy stretches on 3-8 nodes.
    After any history, healing and settling must bring membership agreement (every live
    node holds the same status and incarnation for every member, the truth about who
    runs) and one connected overlay."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = NetSim(0)
        self.ids: list[str] = []

    @initialize(n=st.integers(3, 8), seed=st.integers(0, 2**32 - 1))
    def start(self, n: int, seed: int) -> None:
        self.sim = start_cluster(n, seed, stagger_ms=20)
        self.ids = node_ids(n)

    def _live(self) -> list[str]:
        return [n for n in self.ids if self.sim.nodes[n].up]

    def _stopped(self) -> list[str]:
        return [n for n in self.ids if not self.sim.nodes[n].up]

    @precondition(lambda self: len(self._live()) > 1)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.sim.crash(data.draw(st.sampled_from(self._live())))

    @precondition(lambda self: len(self._live()) > 1)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        self.sim.leave(data.draw(st.sampled_from(self._live())))

    @precondition(lambda self: bool(self._stopped()))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        """A crashed or departed node comes back under its id, one incarnation up
        (what its record would hold); every other node is a seed."""
        node_id = data.draw(st.sampled_from(self._stopped()))
        old: SimNode = self.sim.nodes[node_id]
        seeds = [n for n in self.ids if n != node_id]
        self.sim.add_node(node_id, seeds=seeds, incarnation=old.protocol.incarnation + 1)

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        side = data.draw(st.sets(st.sampled_from(self.ids), min_size=1, max_size=len(self.ids) - 1))
        self.sim.partition(sorted(side), [n for n in self.ids if n not in side])

    @rule()
    def heal(self) -> None:
        self.sim.heal()

    @rule(ms=st.integers(100, 20_000), lossy=st.booleans())
    def advance(self, ms: int, lossy: bool) -> None:
        self.sim.loss = 0.05 if lossy else 0.0
        self.sim.run_until(self.sim.now + ms)

    @rule()
    def heal_and_settle(self) -> None:
        self.sim.heal()
        self.sim.loss = 0.0
        sim = self.sim
        settled = sim.run_until_true(
            lambda: agreement(sim)[0] and len(sim.components()) == 1, sim.now + 180_000, 500
        )
        assert settled is not None, (agreement(sim)[1], sim.components())

    def teardown(self) -> None:
        if self.ids:
            self.heal_and_settle()


TestMembershipMachine = MembershipMachine.TestCase
TestMembershipMachine.settings = hyp_settings(
    max_examples=60, stateful_step_count=15, deadline=None, derandomize=True
)


@pytest.mark.parametrize("n", [3, 5])
def test_machine_history_that_partitions_crashes_and_restarts(n: int) -> None:
    """One history the machine may draw, written out, so a regression shows by name."""
    state = MembershipMachine()
    state.start(n, seed=11)
    ids = state.ids
    state.sim.partition(ids[:1], ids[1:])
    state.sim.run_until(state.sim.now + 12_000)
    state.sim.crash(ids[1])
    state.sim.leave(ids[2])
    state.sim.run_until(state.sim.now + 3_000)
    state.sim.add_node(
        ids[1], seeds=ids, incarnation=state.sim.nodes[ids[1]].protocol.incarnation + 1
    )
    state.heal_and_settle()
