"""``crdtstore members [--watch]`` and ``crdtstore leave`` against real serve processes."""

from __future__ import annotations

import signal
from pathlib import Path

from cli_support import Lines, run, run_json, spawn

from crdtstore.testing.localcluster import ServeNode, wait_until

FAST = {
    "heartbeat_interval_ms": 100,
    "suspect_after_ms": 600,
    "dead_after_ms": 1500,
    "status_interval_ms": 100,
    "member_view_interval_ms": 100,
}


def statuses(data: Path) -> dict[str, str]:
    return {m["node_id"]: m["status"] for m in run_json("members", "--data", str(data))["members"]}


def test_members_lists_live_status_and_leave_makes_the_node_leave_and_stop(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    n1 = ServeNode(tmp_path, "n1", [], FAST)
    nodes.append(n1.start())
    n2 = ServeNode(tmp_path, "n2", [n1.bind], FAST)
    nodes.append(n2.start())
    wait_until(lambda: statuses(n1.data) == {"n1": "alive", "n2": "alive"}, "n1 sees both alive")
    table = run("members", "--data", str(n1.data))
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == [
        "NODE",
        "STATUS",
        "INC",
        "ROUTER",
        "LAST",
        "HEARD",
    ]
    assert any(line.split()[:3] == ["n2", "alive", "1"] for line in table.stdout.splitlines())

    watcher = spawn("members", "--data", str(n1.data), "--watch")
    try:
        lines = Lines(watcher)
        first = {lines.next_json("snapshot")["node_id"] for _ in range(2)}
        assert first == {"n1", "n2"}
        left = run("leave", "--data", str(n2.data))
        assert left.returncode == 0, left.stderr
        assert f"pid {n2.pid} left" in left.stdout
        assert n2.proc is not None and n2.proc.wait(timeout=30) == 0
        assert "SIGUSR1: leaving the cluster" in n2.log.read_text()
        change = lines.next_json("n2's leave is streamed")
        assert change == {
            "event": "change",
            "node_id": "n2",
            "old": "alive",
            "new": "left",
            "incarnation": 1,
        }
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert statuses(n1.data)["n2"] == "left"


def test_leave_without_a_serving_process_exits_3(tmp_path: Path, store: Path) -> None:
    done = run("leave", "--data", str(store))
    assert done.returncode == 3 and "no process serves" in done.stderr
