"""The overlay mode between real processes: partial connectivity, relayed deltas, SWIM.

Every node is a ``crdtstore serve`` process with ``overlay = true``; more nodes than the
active view holds, so that most pairs are not connected and what one node writes reaches
most others only relayed by neighbours.
"""

from __future__ import annotations

from cluster_support import Cluster, ServeNode, same_state, wait_until

import crdtstore
from crdtstore.membership.overlay import OverlaySettings

FAST = {
    "overlay": True,
    "heartbeat_interval_ms": 200,
    "suspect_after_ms": 1_000,
    "dead_after_ms": 2_000,
    "status_interval_ms": 100,
}
COUNT = 9  # > active view + 1: not everyone can be everyone's neighbour


def seen_as(observers: list[ServeNode], node_id: str, status: str) -> bool:
    return all(o.member_status().get(node_id, ("?", 0))[0] == status for o in observers)


def overlay(node: ServeNode) -> dict[str, object]:
    status = node.status() or {}
    return status.get("overlay") or {}


def test_overlay_nodes_see_all_connect_to_few_and_relay_writes(cluster: Cluster) -> None:
    nodes = cluster.start(COUNT, **FAST)
    wait_until(lambda: cluster.all_members_alive(COUNT), f"every node sees {COUNT} alive")
    active = OverlaySettings().active_size
    wait_until(
        lambda: all(overlay(n).get("neighbours") for n in nodes), "every node has neighbours"
    )
    for node in nodes:
        neighbours = overlay(node)["neighbours"]
        assert isinstance(neighbours, list) and 1 <= len(neighbours) <= active, neighbours

    # Symmetric: a neighbour of mine counts me among its own (checked once views settle).
    def symmetric() -> bool:
        views = {n.name: set(overlay(n).get("neighbours") or []) for n in nodes}
        return all(a in views[b] for a, bs in views.items() for b in bs)

    wait_until(symmetric, "neighbour views are symmetric", 30)
    views = {n.name: set(overlay(n)["neighbours"]) for n in nodes}  # type: ignore[arg-type]
    far = [(a, b) for a in views for b in views if a != b and b not in views[a]]
    assert far, "with 9 nodes and views of 5, some pairs are not neighbours"

    # A write on one node reaches one that is not its neighbour, relayed.
    writer_name, reader_name = far[0]
    writer = next(n for n in nodes if n.name == writer_name)
    with crdtstore.open(writer.data) as handle:
        handle.lww_map("cfg")["k"] = "relayed"
    wait_until(lambda: same_state(nodes, ["cfg"]), "every replica holds the write", 30)
    reader = next(n for n in nodes if n.name == reader_name)
    # Someone other than the writer passed it on (the writer publishes its own).
    assert sum(n.counter("sync", "relay_batches_relayed") for n in nodes if n is not writer) > 0
    assert [e["key"] for e in reader.dump("cfg")] == ["k"]

    # Admission: honest nodes never refuse each other's name or life, and once the records
    # have spread every neighbour is a member link (trusted to relay any origin): a rule
    # that kept an honest neighbour a newcomer would leave its relays to repair.
    def all_member_links() -> bool:
        return all(
            set(overlay(n).get("neighbours") or []) <= set(overlay(n).get("member_links") or [])
            for n in nodes
        )

    wait_until(all_member_links, "every neighbour is a member link", 30)
    for node in nodes:
        refused = overlay(node).get("protocol") or {}
        assert isinstance(refused, dict)
        assert not {k: v for k, v in refused.items() if "identity" in k or "past_life" in k}


def test_overlay_detects_a_kill_and_takes_the_member_back_after_restart(
    cluster: Cluster,
) -> None:
    nodes = cluster.start(COUNT, **FAST)
    wait_until(lambda: cluster.all_members_alive(COUNT), f"every node sees {COUNT} alive")
    victim, observers = nodes[-1], nodes[:-1]
    old = observers[0].member_status()[victim.name][1]
    victim.kill()
    wait_until(lambda: seen_as(observers, victim.name, "dead"), "all see the victim dead", 60)
    victim.start()
    wait_until(lambda: seen_as(observers, victim.name, "alive"), "the victim is back", 60)
    assert all(o.member_status()[victim.name][1] > old for o in observers)
    with crdtstore.open(victim.data) as handle:
        handle.or_set("jobs").add("after-restart")
    wait_until(lambda: same_state(nodes, ["jobs"]), "the restarted node's write is everywhere", 30)


def test_overlay_topics_reach_every_holder_and_no_other_node(cluster: Cluster) -> None:
    # Half the nodes hold "a", half "b": a node relays only what it holds, so the holders
    # of a topic stay joined by their topic links, whatever the overlay looks like.
    nodes = [cluster.add(f"n{i + 1}", **FAST, topics=["a"] if i % 2 else ["b"]) for i in range(8)]
    wait_until(lambda: cluster.all_members_alive(8), "every node sees 8 alive")
    holders_a = [n for i, n in enumerate(nodes) if i % 2]
    holders_b = [n for i, n in enumerate(nodes) if not i % 2]
    with crdtstore.open(holders_a[0].data) as handle:
        handle.lww_map("a")["k"] = "for a"
    with crdtstore.open(holders_b[-1].data) as handle:
        handle.or_set("b").add("for b")
    wait_until(
        lambda: all(n.dump("a") for n in holders_a) and same_state(holders_a, ["a"]),
        "every holder of a has the write",
        30,
    )
    wait_until(
        lambda: all(n.dump("b") for n in holders_b) and same_state(holders_b, ["b"]),
        "every holder of b has the write",
        30,
    )
    assert not any(n.dump("a") for n in holders_b)
    assert not any(n.dump("b") for n in holders_a)
