"""A ``crdtstore serve`` node that cannot store what its peer sends (its map full at
``max_map_size``): it says so under its own counter, not as invalid input, keeps its
status file fresh, and ``crdt-inspect status`` shows it live and failing to store."""

from __future__ import annotations

import subprocess

from cluster_support import BIN, Cluster, wait_until

import crdtstore

FULL_AT = 4 * 1024 * 1024
"""The receiver's map, fixed: room for what a node writes at start, not for the data."""


def test_a_full_node_counts_local_storage_failures_and_keeps_its_status_fresh(
    cluster: Cluster,
) -> None:
    config = {"status_interval_ms": 100, "digest_interval_ms": 200, "repair_grace_ms": 300}
    n1 = cluster.add("n1", **config)
    n2 = cluster.add("n2", map_size=FULL_AT, max_map_size=FULL_AT, **config)
    wait_until(lambda: cluster.all_members_alive(2), "both nodes see each other")
    with crdtstore.open(n1.data) as node, node.transaction():
        cfg = node.lww_map("cfg")
        for i in range(6000):  # about 6 MB: more than the receiver's whole map
            cfg[f"k{i}"] = "v" * 1000

    wait_until(lambda: n2.counter("sync", "local_storage_failures") > 0, "n2 counts its failure")
    status = n2.status()
    assert status is not None and status["pid"] == n2.pid
    assert not {k: v for k, v in status["sync"].items() if k.startswith("rejected") and v}
    written = status["written_at_ms"]
    wait_until(
        lambda: (n2.status() or {}).get("written_at_ms", 0) >= written + 1000,
        "n2 keeps writing its status while it cannot store data",
    )
    assert n2.alive()
    done = subprocess.run(
        [str(BIN / "crdt-inspect"), str(n2.data), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "live" in done.stdout and "STALE" not in done.stdout
    assert "local storage failures" in done.stdout
    assert "max_map_size" in n2.log.read_text()  # the log names the cause
