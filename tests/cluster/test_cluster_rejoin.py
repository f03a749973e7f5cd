"""A member that comes back, between real processes: after a graceful leave, after SIGKILL,
and after its record was pruned. Each time the writes of every side must reach every
other, and every node must list the member alive at its new incarnation."""

from __future__ import annotations

from typing import Any

from cluster_support import Cluster, ServeNode, same_state, wait_until

import crdtstore

FAST = {
    "heartbeat_interval_ms": 100,
    "suspect_after_ms": 600,
    "dead_after_ms": 1500,
    "status_interval_ms": 100,
}

LEAVER = """
import sys, crdtstore
from crdtstore.testing.localcluster import wait_until
data, bind, seed = sys.argv[1:4]
settings = dict(heartbeat_interval_ms=100, suspect_after_ms=600, dead_after_ms=1500)
node = crdtstore.open(data, node_id="b", bind=bind, seeds=[seed], **settings)
wait_until(lambda: {m.node_id for m in node.members() if m.status == "alive"} == {"a", "b", "c"},
           "b sees a and c alive")
node.lww_map("cfg")["first-life"] = "b"
node.leave()
print("LEFT", flush=True)
"""


def write(node: ServeNode, key: str) -> None:
    with crdtstore.open(node.data) as handle:
        handle.lww_map("cfg")[key] = node.name


def keys(node: ServeNode) -> set[Any]:
    return {e["key"] for e in node.dump("cfg")}


def holds_record(node: ServeNode, node_id: str) -> bool:
    # members() lists a member from its hello already; this is its replicated record.
    return node_id in {e["key"] for e in node.dump("__members")}


def everyone_lists(nodes: list[ServeNode], node_id: str, incarnation: int) -> bool:
    return all(n.member_status().get(node_id) == ("alive", incarnation) for n in nodes)


def assert_back_and_converged(nodes: list[ServeNode], b: ServeNode, incarnation: int) -> None:
    """b's write and one of every other node's reach every node, and every node lists b
    alive at ``incarnation`` (the others alive at 1)."""
    for node in nodes:
        write(node, "k" if node is b else f"j-{node.name}")
    everything = {"k", *(f"j-{n.name}" for n in nodes if n is not b)}
    wait_until(lambda: all(everything <= keys(n) for n in nodes), "every node holds every write")
    wait_until(lambda: same_state(nodes, ["cfg", "__members"]), "the nodes converge")
    wait_until(
        lambda: everyone_lists(nodes, "b", incarnation), f"b is alive at {incarnation} everywhere"
    )
    assert all(everyone_lists(nodes, n.name, 1) for n in nodes if n is not b)


def test_a_member_that_left_and_rejoins_is_replicated_again(
    cluster: Cluster, spawn: Any, lines: Any
) -> None:
    a = cluster.add("a", **FAST)
    c = cluster.add("c", **FAST)
    b = cluster.add("b", seeds=[a.bind], start=False, **FAST)
    leaver = spawn(LEAVER, str(b.data), b.bind, a.bind)
    lines(leaver).expect("LEFT", timeout=60)
    assert leaver.wait(timeout=30) == 0
    wait_until(
        lambda: all(n.member_status().get("b") == ("left", 1) for n in (a, c)),
        "a and c list b as left",
    )
    b.start()  # the same directory and address: incarnation 2
    assert_back_and_converged([a, b, c], b, 2)
    assert all("first-life" in keys(n) for n in (a, c))


def test_a_member_restarted_after_sigkill_is_replicated_again(cluster: Cluster) -> None:
    a = cluster.add("a", **FAST)
    b = cluster.add("b", **FAST)
    wait_until(lambda: everyone_lists([a, b], "b", 1), "a and b see each other")
    wait_until(lambda: holds_record(a, "b"), "a holds b's record")
    b.kill()
    wait_until(lambda: a.member_status().get("b", ("?", 0))[0] == "dead", "a holds b dead")
    b.start()
    assert_back_and_converged([a, b], b, 2)


def test_a_member_restarted_after_its_record_was_pruned_is_replicated_again(
    cluster: Cluster,
) -> None:
    a = cluster.add("a", prune_after_ms=1500, **FAST)
    b = cluster.add("b", prune_after_ms=1500, **FAST)
    wait_until(lambda: everyone_lists([a, b], "b", 1), "a and b see each other")
    wait_until(lambda: holds_record(a, "b"), "a holds b's record")
    b.kill()
    wait_until(lambda: "b" not in a.member_status(), "a pruned b")
    assert not holds_record(a, "b")
    b.start()
    assert_back_and_converged([a, b], b, 2)
