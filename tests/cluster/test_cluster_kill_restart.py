"""A node killed and restarted while its cluster forms: no other node may die of it.

Issue 18: a survivor aborted inside libzmq (``Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)``) in about half of such runs. The cause (see
``transport.iothread``) was two connections of one node to a seed under one routing id:
its member connection and its seed connection, still retrying because the seed came up
after it. The seed's ROUTER stalled the older one; killing the node then aborted the seed.

So each cycle forms a fresh cluster in that order, writes through the first node, kills it
once it has closed its seed connections (a collision has happened by then, and the stalled
connection lived on at the seed), writes through its directory and another's, restarts it,
and checks that no node exited and that every write reached every node.
"""

from __future__ import annotations

from cluster_support import Cluster, ServeNode, wait_until

import crdtstore

CYCLES = 8
"""Before the fix 7 of 8 cycles ended with a dead node (the issue's own runs: 3 of 6);
8 cycles would miss even a 50% event once in 256 runs."""

CONFIG = {
    # A node closes its seed connections at its next Hello round once a member connection
    # is up. A longer round keeps both open past the seed connection's reconnect back-off
    # (as a slow or loaded start does), which is when the two collided at the seed.
    "hello_interval_ms": 2000,
    # Quicker status files and repair, so a cycle takes seconds.
    "status_interval_ms": 100,
    "digest_interval_ms": 200,
    "repair_grace_ms": 300,
}


def running(nodes: list[ServeNode]) -> bool:
    """True; fails the test at once, with the log's tail, if any node has exited."""
    for node in nodes:
        if not node.alive():
            assert node.proc is not None
            raise AssertionError(
                f"{node.name} exited with {node.proc.returncode}: {node.log.read_text()[-2000:]}"
            )
    return True


def seed_connections_closed(node: ServeNode) -> int:
    """Counted by the replicator in the full mode, by the overlay's thread in the other."""
    return node.counter("replicator", "seed_connections_closed") + node.counter(
        "liveness", "seed_connections_closed"
    )


def holds_everywhere(nodes: list[ServeNode], keys: set[str]) -> bool:
    for node in nodes:
        with crdtstore.open(node.data) as handle:
            if set(handle.lww_map("cfg")) != keys:
                return False
    return True


def put(node: ServeNode, key: str) -> None:
    """A write through ``node``'s directory by this process: local, replicated by the
    directory's role holder whenever one runs."""
    with crdtstore.open(node.data) as handle:
        handle.lww_map("cfg")[key] = key


def kill_and_restart_while_forming(cluster: Cluster, prefix: str) -> None:
    nodes = [cluster.add(f"{prefix}n{i}", seeds=[], start=False, **CONFIG) for i in (1, 2, 3)]
    for node in nodes:
        node.seeds = [other.bind for other in nodes if other is not node]
    for node in nodes:  # in this order, so the first node's seeds come up after it
        node.start()
    first, second, _ = nodes

    put(first, "formed")
    wait_until(lambda: running(nodes) and holds_everywhere(nodes, {"formed"}), "formed")
    wait_until(
        lambda: running(nodes) and seed_connections_closed(first) > 0,
        f"{first.name} closed its seed connections",
    )
    first.kill()
    put(first, "while-down")
    put(second, "elsewhere")
    first.start()
    wait_until(
        lambda: running(nodes) and holds_everywhere(nodes, {"formed", "while-down", "elsewhere"}),
        f"{prefix}: every write reached every node",
    )
    for node in nodes:
        assert node.stop() == 0, (node.name, node.log.read_text()[-2000:])


def test_no_node_dies_when_a_peer_is_killed_and_restarted(cluster: Cluster) -> None:
    for cycle in range(CYCLES):
        kill_and_restart_while_forming(cluster, f"c{cycle}")
