"""Dropping a namespace across real ``crdtstore serve`` processes.

One node drops (``crdtstore drop``, a separate process on its directory) while the other
writes into the namespace (a writer process on its directory): both end with the same
entries, none of those the dropper had seen, and a restart of either brings none back.
A node that was down during the drop learns it from its peer when it returns.
"""

from __future__ import annotations

import subprocess

from cluster_support import BIN, Cluster, ServeNode, run_writer, same_state, wait_until

CONFIG = {"status_interval_ms": 100, "digest_interval_ms": 200, "repair_grace_ms": 300}
SEEN = 200
"""Entries both nodes hold before the drop."""
CONCURRENT = 3000
"""Writes of the other node, one commit each: enough that the drop lands among them."""


def keys(node: ServeNode) -> set[str]:
    return {e["key"] for e in node.dump("cfg")}


def crdtstore_drop(node: ServeNode) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "crdtstore"), "drop", "cfg", "--data", str(node.data)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def exchanged_digests(node: ServeNode, peer: ServeNode, rounds: int) -> bool:
    """Whether ``node``'s running process has received ``rounds`` digests since it started
    and sees ``peer`` alive: anti-entropy has run, so anything it would bring is here."""
    status = node.status()
    return (
        status is not None
        and status["pid"] == node.pid
        and status["sync"].get("digests_received", 0) >= rounds
        and node.member_status().get(peer.name, ("",))[0] == "alive"
    )


def restart(node: ServeNode, peer: ServeNode) -> None:
    assert node.stop() == 0
    node.start()
    wait_until(lambda: exchanged_digests(node, peer, 3), f"{node.name} synced after restart")
    wait_until(lambda: exchanged_digests(peer, node, 3), f"{peer.name} synced")


def test_a_drop_concurrent_with_writes_converges_and_stays_dropped(cluster: Cluster) -> None:
    n1, n2 = cluster.start(2, **CONFIG)
    seed = run_writer(n1, "bulk", "cfg", "old", str(SEEN))
    assert seed.wait(timeout=60) == 0, seed.stderr.read() if seed.stderr else ""
    wait_until(lambda: len(keys(n2)) == SEEN, "n2 holds n1's entries")

    writer = run_writer(n2, "put", "cfg", "new", str(CONCURRENT))
    assert writer.stdout is not None
    for _ in range(20):  # the drop comes once the writer is under way
        assert writer.stdout.readline().startswith("ACK ")
    dropped = crdtstore_drop(n1)
    assert (dropped.returncode, dropped.stdout.strip()) == (0, "dropped 'cfg'"), dropped.stderr
    assert writer.poll() is None, "the writer finished before the drop: nothing concurrent"
    writer.stdout.read()
    assert writer.wait(timeout=120) == 0

    wait_until(lambda: same_state([n1, n2], ["cfg"]), "both nodes hold the same entries")
    survivors = keys(n1)
    assert not {k for k in survivors if k.startswith("old")}
    assert survivors <= {f"new{i}" for i in range(CONCURRENT)}
    # Writes after the drop reached the writer's node are not touched by it.
    late = run_writer(n2, "put", "cfg", "late", "5")
    assert late.wait(timeout=60) == 0
    wait_until(lambda: same_state([n1, n2], ["cfg"]), "both hold the late writes")
    after = keys(n1)
    assert after == survivors | {f"late{i}" for i in range(5)}

    for node, peer in ((n1, n2), (n2, n1)):
        restart(node, peer)
        assert keys(n1) == keys(n2) == after, f"after {node.name} restarted"


def test_a_node_down_during_the_drop_learns_it_when_it_returns(cluster: Cluster) -> None:
    n1, n2 = cluster.start(2, **CONFIG)
    seed = run_writer(n1, "bulk", "cfg", "old", str(SEEN))
    assert seed.wait(timeout=60) == 0
    wait_until(lambda: len(keys(n2)) == SEEN, "n2 holds n1's entries")
    assert n2.stop() == 0

    assert crdtstore_drop(n1).returncode == 0
    assert keys(n1) == set()
    n2.start()
    wait_until(lambda: keys(n2) == set(), "the returning node applied the drop")
    wait_until(lambda: n2.counter("storage", "drops_applied") == 1, "n2 counted the drop")
    restart(n2, n1)
    assert keys(n1) == keys(n2) == set()
