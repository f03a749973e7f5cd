"""A node whose clock is off, between real processes: it is listed with its offset, told,
and every node can name it. Its clock is shifted through the node's clock parameter
(``skewed_serve.py``), as ``faketime`` would shift it.

A node's clock is read from hellos (neighbours only) and from probes and acks (any member
probed): the cluster that names the bad clock is made larger than the active view, so
that some pairs of nodes are not neighbours and what they know of each other's clocks
comes from probes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from cluster_support import BIN, Cluster, ServeNode, inspect_json, wait_until

import crdtstore
from crdtstore.membership.overlay import OverlaySettings

SKEWED_SERVE = Path(__file__).with_name("skewed_serve.py")
AHEAD_MS = 3_600_000
"""An hour: far beyond max_clock_drift_ms (a minute), and far beyond any test's length,
so that what a peer defers stays deferred while the test looks."""
LIMIT_MS = 60_000
FAST = {"heartbeat_interval_ms": 100, "status_interval_ms": 100}


class SkewedNode(ServeNode):
    """A ``crdtstore serve`` process whose clock reads ``offset_ms`` off the system's."""

    def __init__(self, root: Path, name: str, seeds: list[str], offset_ms: int) -> None:
        super().__init__(root, name, seeds, dict(FAST))
        self.offset_ms = offset_ms

    def command(self) -> list[str]:
        python, *rest = super().command()
        assert rest[:3] == ["-m", "crdtstore.cli", "serve"]
        return [python, str(SKEWED_SERVE), str(self.offset_ms), *rest[2:]]

    def clock(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


def add_skewed(cluster: Cluster, name: str, seed: ServeNode) -> SkewedNode:
    node = SkewedNode(cluster.root, name, [seed.bind], AHEAD_MS)
    cluster.nodes.append(node)
    node.start()
    return node


def members(node: ServeNode) -> dict[str, dict[str, Any]]:
    return {m["node_id"]: m for m in (node.status() or {}).get("members", [])}


def clock(node: ServeNode) -> dict[str, Any]:
    return dict((node.status() or {}).get("clock", {}))


def near(offset: int | None, expected: int) -> bool:
    # An estimate is the offset less a message's delay (ms here); half the limit is the
    # margin the judgement itself allows.
    return offset is not None and abs(offset - expected) < LIMIT_MS // 2


def inspect_text(node: ServeNode) -> str:
    out = subprocess.run(
        [str(BIN / "crdt-inspect"), str(node.data), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_node_whose_clock_runs_ahead_is_listed_told_and_shown(
    cluster: Cluster,
) -> None:
    a = cluster.add("a", **FAST)
    b = add_skewed(cluster, "b", a)

    # a lists b, whose member record it refuses (stamped an hour ahead), with its offset.
    def a_lists_b() -> bool:
        seen = members(a).get("b")
        return (
            seen is not None
            and seen["status"] == "alive"
            and near(seen["clock_offset_ms"], AHEAD_MS)
        )

    wait_until(a_lists_b, "a lists b alive, an hour ahead")
    assert members(a)["b"]["clock_off"] and members(a)["a"]["clock_off"]  # two: can't tell
    wait_until(lambda: a.counter("sync", "rejected_clock_drift") > 0, "a refuses b's stamps")
    assert "b" not in {e["key"] for e in a.dump("__members")}

    # b, which finds nothing wrong in what it receives, is told, and says so.
    wait_until(lambda: near(clock(b).get("told", {}).get("a"), AHEAD_MS), "a told b")
    assert near(members(b)["a"]["clock_offset_ms"], -AHEAD_MS)
    wait_until(
        lambda: "ERROR crdtstore.replicator: clock: this node's clock is" in b.log.read_text(),
        "b logs its clock at error level",
    )
    line = next(ln for ln in b.log.read_text().splitlines() if "clock: this node's" in ln)
    assert "ahead of member a's" in line and "a defers this node's writes" in line

    # The operator sees it from either node.
    status = inspect_json(a.data, "status")
    assert near(status["clock"]["beyond_limit"]["b"], AHEAD_MS)
    text = inspect_text(b)
    assert "a says this node's clock is" in text and "cannot tell" in text.replace("\n", " ")

    # What each side does with the other's writes: b applies a's (stamped in its past);
    # a defers b's LWW writes, stamped an hour ahead (they stay on b and in its log, for
    # repair), and applies what carries no stamp, an OR-Set add made after them.
    with crdtstore.open(b.data, clock=b.clock) as handle:
        handle.lww_map("cfg")["k"] = "b"
        handle.or_set("seen").add("b")
    with crdtstore.open(a.data) as handle:
        handle.lww_map("cfg")["j"] = "a"
    wait_until(lambda: {e["key"] for e in b.dump("cfg")} == {"j", "k"}, "b holds j and k")
    wait_until(lambda: [e["key"] for e in a.dump("seen")] == ["b"], "a holds b's add")
    assert {e["key"] for e in a.dump("cfg")} == {"j"}


def test_every_node_names_the_clock_that_is_off(cluster: Cluster) -> None:
    a = cluster.add("a", **FAST)
    b = add_skewed(cluster, "b", a)
    c = cluster.add("c", seeds=[a.bind], **FAST)
    nodes = [a, b, c]
    # More nodes than an active view plus one: some pairs cannot all be neighbours.
    for name in "defg"[: OverlaySettings().active_size + 2 - len(nodes)]:
        nodes.append(cluster.add(name, seeds=[a.bind], **FAST))

    def everyone_names_b() -> bool:
        return all(clock(n).get("off") == ["b"] and len(members(n)) == len(nodes) for n in nodes)

    wait_until(everyone_names_b, "every node finds b's clock off, and only b's", 60)
    views = {
        n.name: set((n.status() or {}).get("overlay", {}).get("neighbours", [])) for n in nodes
    }
    assert any(m not in views[n] for n in views for m in views if m != n), views
    for node in nodes:
        seen = members(node)
        assert [m for m, row in seen.items() if row["clock_off"]] == ["b"], node.name
        assert all(row["status"] == "alive" for row in seen.values()), node.name
    assert near(clock(b)["skew_ms"], AHEAD_MS) and near(clock(a)["skew_ms"], 0)
    assert "clock OFF" in inspect_text(c) and "): b" in inspect_text(c)
    wait_until(
        lambda: "the one off is b" in b.log.read_text(), "b's own log names b as the one off"
    )
