"""Failure detection between real processes: suspect, dead, back alive; partitions; load."""

from __future__ import annotations

from pathlib import Path

from cluster_support import Cluster, ServeNode, run_writer, same_state, wait_until

import crdtstore
from crdtstore.testing.faults import FaultSpec

FAST = {
    "heartbeat_interval_ms": 100,
    "suspect_after_ms": 600,
    "dead_after_ms": 1500,
    "status_interval_ms": 100,
}


def seen_as(observers: list[ServeNode], node_id: str, status: str) -> bool:
    return all(o.member_status().get(node_id, ("?", 0))[0] == status for o in observers)


def test_a_killed_member_is_suspected_then_dead_and_returns_with_a_higher_incarnation(
    cluster: Cluster,
) -> None:
    nodes = cluster.start(5, **FAST)
    wait_until(lambda: cluster.all_members_alive(5), "every node sees 5 alive members")
    victim, observers = nodes[4], nodes[:4]
    [(_, old_incarnation)] = [v for k, v in observers[0].member_status().items() if k == "n5"]
    victim.kill()

    history: dict[str, list[str]] = {o.name: [] for o in observers}

    def everyone_says_dead() -> bool:
        for o in observers:
            status = o.member_status().get("n5", ("?", 0))[0]
            if not history[o.name] or history[o.name][-1] != status:
                history[o.name].append(status)
        return all(h[-1] == "dead" for h in history.values())

    wait_until(everyone_says_dead, "all four report n5 dead", 30, every=0.02)
    for name, statuses in history.items():
        # Suspicion comes first: nobody jumps from alive straight to dead.
        assert "suspect" in statuses and statuses.index("suspect") < statuses.index("dead"), (
            name,
            statuses,
        )

    victim.start()
    wait_until(lambda: seen_as(observers, "n5", "alive"), "n5 is alive again everywhere", 30)
    for o in observers:
        _, incarnation = o.member_status()["n5"]
        assert incarnation > old_incarnation, (o.name, incarnation, old_incarnation)


def test_no_false_suspicion_under_sustained_write_load(cluster: Cluster) -> None:
    nodes = cluster.start(3, **FAST)
    wait_until(lambda: cluster.all_members_alive(3), "every node sees 3 alive members")
    writers = [run_writer(n, "put", "load", f"{n.name}-", "3000") for n in nodes]
    writers += [run_writer(n, "add", "jobs", f"{n.name}-", "3000") for n in nodes]
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    wait_until(lambda: same_state(nodes, ["load", "jobs"]), "replicas converge after the load")
    for n in nodes:
        # Every suspicion a node raised or learned (the replicator acts on both), and the
        # ones its protocol raised itself.
        assert n.counter("replicator", "members_became_suspect") == 0, n.name
        assert n.counter("replicator", "members_became_dead") == 0, n.name
        assert n.counter("liveness", "suspicions_raised") == 0, n.name


def partition(files: dict[str, Path], sides: list[list[ServeNode]]) -> None:
    for side, other in ((sides[0], sides[1]), (sides[1], sides[0])):
        for node in side:
            files[node.name].write_text("".join(f"{o.name}\n" for o in other))


def test_partition_both_sides_serve_then_heal_converges(cluster: Cluster, tmp_path: Path) -> None:
    files = {f"n{i}": tmp_path / f"partition-n{i}" for i in range(1, 5)}
    nodes = [
        cluster.add(name, faults=FaultSpec(partition_file=str(path)), **FAST)
        for name, path in files.items()
    ]
    wait_until(lambda: cluster.all_members_alive(4), "every node sees 4 alive members")
    left, right = nodes[:2], nodes[2:]
    partition(files, [left, right])

    def side_sees_other(side: list[ServeNode], other: list[ServeNode]) -> bool:
        return all(
            o.name in s.member_status() and s.member_status()[o.name][0] in ("suspect", "dead")
            for s in side
            for o in other
        )

    wait_until(lambda: side_sees_other(left, right), "the left side suspects the right", 30)
    wait_until(lambda: side_sees_other(right, left), "the right side suspects the left", 30)
    # Both sides keep taking writes and serving reads.
    for node in nodes:
        with crdtstore.open(node.data) as h:
            h.lww_map("cfg")[f"during-{node.name}"] = node.name
            h.or_set("seen").add(node.name)
            assert h.lww_map("cfg")[f"during-{node.name}"] == node.name
    wait_until(lambda: same_state(left, ["cfg", "seen"]), "the left side agrees")
    wait_until(lambda: same_state(right, ["cfg", "seen"]), "the right side agrees")
    assert {e["key"] for e in left[0].dump("seen")} == {"n1", "n2"}

    for path in files.values():
        path.write_text("")
    wait_until(lambda: cluster.all_members_alive(4), "after heal every node sees 4 alive", 60)
    wait_until(lambda: same_state(nodes, ["cfg", "seen", "__members"]), "data converges", 60)
    assert {e["key"] for e in nodes[0].dump("seen")} == {"n1", "n2", "n3", "n4"}


def test_a_member_gone_for_good_is_pruned_and_may_still_come_back(cluster: Cluster) -> None:
    nodes = cluster.start(3, prune_after_ms=1500, **FAST)
    wait_until(lambda: cluster.all_members_alive(3), "every node sees 3 alive members")
    nodes[2].kill()
    wait_until(
        lambda: all("n3" not in n.member_status() for n in nodes[:2]),
        "n1 and n2 pruned n3's record",
        30,
    )
    assert all("n3" not in {e["key"] for e in n.dump("__members")} for n in nodes[:2])
    nodes[2].start()
    wait_until(lambda: cluster.all_members_alive(3), "n3 rejoined: 3 alive everywhere", 30)
