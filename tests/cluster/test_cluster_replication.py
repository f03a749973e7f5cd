"""Replication between real ``crdtstore serve`` processes: convergence, crash, loss, bootstrap."""

from __future__ import annotations

import subprocess

from cluster_support import Cluster, run_writer, same_state, wait_until

import crdtstore
from crdtstore.testing.faults import FaultSpec


def acked(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -9), err
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("ACK ")]


def live_keys(entries: list[dict[str, object]]) -> set[object]:
    return {e["key"] for e in entries}


def test_concurrent_writers_on_four_nodes_converge(cluster: Cluster) -> None:
    nodes = cluster.start(4)
    wait_until(lambda: cluster.all_members_alive(4), "every node sees 4 alive members")
    writers = []
    for i, node in enumerate(nodes):
        writers.append(run_writer(node, "put", "config", f"w{i}-", "150"))
        writers.append(run_writer(node, "churn", "hosts", f"h{i}-", "90"))
    # Every node also writes the same keys, so LWW has real conflicts to settle.
    for node in nodes:
        with crdtstore.open(node.data) as handle:
            m = handle.lww_map("config")
            for k in range(20):
                m[f"shared{k}"] = node.name
    acks = [acked(w) for w in writers]

    wait_until(lambda: same_state(nodes, ["config", "hosts"]), "all replicas are equal", 90)

    config = nodes[0].dump("config")
    hosts = live_keys(nodes[0].dump("hosts"))
    expected_config = {k for a in acks[0::2] for k in a} | {f"shared{k}" for k in range(20)}
    assert live_keys(config) == expected_config
    added = {k[1:] for a in acks[1::2] for k in a if k.startswith("+")}
    removed = {k[1:] for a in acks[1::2] for k in a if k.startswith("-")}
    assert removed and hosts == added - removed
    # Each shared key holds one writer's value on every node: the (HLC, node id) winner.
    winners = {e["key"]: e["value"] for e in config if str(e["key"]).startswith("shared")}
    assert set(winners.values()) <= {n.name for n in nodes}


def test_sigkill_mid_write_loses_no_acknowledged_write(cluster: Cluster) -> None:
    nodes = cluster.start(3)
    wait_until(lambda: cluster.all_members_alive(3), "every node sees 3 alive members")
    victim = nodes[2]
    writer = run_writer(victim, "put", "orders", "v-", "100000")
    assert writer.stdout is not None
    # Kill the daemon and its writer while writes are in flight.
    early = [writer.stdout.readline().split()[1] for _ in range(200)]
    victim.kill()
    writer.kill()
    acked_on_victim = early + acked(writer)
    others = [run_writer(n, "put", "orders", f"{n.name}-", "300") for n in nodes[:2]]
    acked_elsewhere = [k for w in others for k in acked(w)]
    wait_until(lambda: same_state(nodes[:2], ["orders"]), "the survivors agree", 60)

    victim.start()
    wait_until(lambda: same_state(nodes, ["orders"]), "the restarted node converges", 90)
    keys = live_keys(nodes[0].dump("orders"))
    lost = [k for k in acked_on_victim + acked_elsewhere if k not in keys]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    # Killed mid-run, not done: whether an ACK followed the 200th before the kill is a
    # race (the test once asserted one did, and failed when the kill came first).
    assert writer.returncode == -9 and len(acked_on_victim) >= 200


def test_forced_publish_loss_is_repaired_by_anti_entropy(cluster: Cluster) -> None:
    # Every node drops 30% of its own PUB frames (deltas, digests, heartbeats).
    lossy = FaultSpec(drop_publish_fraction=0.3)
    nodes = cluster.start(3, faults=lossy, suspect_after_ms=5000, dead_after_ms=15000)
    wait_until(lambda: cluster.all_members_alive(3), "every node sees 3 alive members")
    writers = [run_writer(n, "add", "jobs", f"{n.name}-", "400") for n in nodes]
    acks = [k for w in writers for k in acked(w)]
    wait_until(lambda: same_state(nodes, ["jobs"]), "lossy replicas converge", 90)
    assert live_keys(nodes[0].dump("jobs")) == set(acks)
    dropped = sum(n.counter("transport", "publish_dropped") for n in nodes)
    repaired = sum(
        n.counter("sync", "repairs_served") + n.counter("sync", "ranges_shipped") for n in nodes
    )
    assert dropped > 0 and repaired > 0


def test_empty_node_bootstraps_from_a_cluster_of_100k_entries(cluster: Cluster) -> None:
    seed = cluster.add("n1")
    second = cluster.add("n2")
    loader = run_writer(seed, "bulk", "inventory", "item-", "100000")
    assert acked(loader) == ["100000"]
    wait_until(lambda: same_state([seed, second], ["inventory"]), "n2 holds the 100k", 120)

    newcomer = cluster.add("n3")
    wait_until(
        lambda: newcomer.namespaces().get("inventory", {}).get("entries") == 100_000,
        "the new node holds 100,000 entries",
        180,
        every=0.5,
    )
    wait_until(lambda: same_state([seed, newcomer], ["inventory"]), "n3 equals n1", 60)
