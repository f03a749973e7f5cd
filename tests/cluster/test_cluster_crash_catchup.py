"""A node SIGKILLed while writers on every node write keys they share, and restarted
before it is declared dead (so its peers' logs still hold its gap), catches up.

It once never did: repair replies joined runs of logged batches whose contexts named each
other's dots, and the restarted node held them all, waiting, with nothing logged.
"""

from __future__ import annotations

import time

from cluster_support import Cluster, run_writer, same_state, wait_until

import crdtstore

WRITES = 600
DOWN_S = 3.0
"""How long the node stays down: a fault's length, well inside suspect + dead (8 s)."""


def test_restarted_node_catches_up_with_writers_sharing_keys(cluster: Cluster) -> None:
    nodes = cluster.start(3)
    wait_until(lambda: cluster.all_members_alive(3), "all three see each other")
    # Every node holds "cfg" and has said so in a digest, so peers keep their logs of it
    # for the victim (a peer whose digests lack a namespace would bootstrap it by ranges).
    for node in nodes:
        with crdtstore.open(node.data) as handle:
            handle.lww_map("cfg")[f"hello-{node.name}"] = 1
    wait_until(lambda: same_state(nodes, ["cfg"]), "the first writes replicated")
    heard = [node.counter("sync", "digests_received") for node in nodes]
    wait_until(
        lambda: all(
            n.counter("sync", "digests_received") >= h + 4
            for n, h in zip(nodes, heard, strict=True)
        ),
        "two digest rounds from each peer since",
    )
    writers = [run_writer(node, "shared", "cfg", f"{node.name}-", str(WRITES)) for node in nodes]
    victim = nodes[2]
    for w in writers:  # every writer under way, so their turns interleave
        assert w.stdout is not None
        for _ in range(20):
            assert w.stdout.readline().startswith("ACK"), w.stderr.read() if w.stderr else ""
    victim.kill()
    time.sleep(DOWN_S)  # the fault's duration, not a wait for a condition
    assert not victim.alive()
    victim.start()
    for w in writers:  # the victim's writer went on locally: its directory stays open
        w.wait(timeout=120)
        assert w.returncode == 0, w.stderr.read() if w.stderr else ""
    wait_until(lambda: same_state(nodes, ["cfg"]), "every replica holds every write", 60)
    assert len(nodes[0].dump("cfg")) == 3 * WRITES + 5 + 3
    # Caught up by repair from the peers' logs, not by a range session or the safety net.
    sync = victim.status()["sync"]  # type: ignore[index]
    assert sync.get("log_gaps", 0) == 0, sync
    assert sync.get("stuck_fallbacks", 0) == 0, sync
    assert all(node.alive() for node in nodes)
