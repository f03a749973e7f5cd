"""Asking a running node for its status over its ROUTER: ``crdtstore members --connect``
and ``crdt-inspect status --connect``, plain and with CURVE; hostile queries refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import zmq
from cli_support import run

from crdtstore.status_query import STATUS_REQUEST, QueryError, ask_status
from crdtstore.testing.localcluster import BIN, ServeNode, wait_until

FAST = {"heartbeat_interval_ms": 100, "status_interval_ms": 100}


def test_members_and_inspect_status_over_the_network(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    n1 = ServeNode(tmp_path, "n1", [], FAST)
    nodes.append(n1.start())
    n2 = ServeNode(tmp_path, "n2", [n1.bind], FAST)
    nodes.append(n2.start())

    def remote() -> dict[str, str]:
        done = run("members", "--connect", n1.bind, "--json")
        assert done.returncode == 0, done.stderr
        return {m["node_id"]: m["status"] for m in json.loads(done.stdout)["members"]}

    wait_until(lambda: remote() == {"n1": "alive", "n2": "alive"}, "n1 answers with both")
    table = run("members", "--connect", n1.bind)
    assert table.returncode == 0 and table.stdout.split()[:5] == [
        "NODE",
        "STATUS",
        "INC",
        "ROUTER",
        "LAST",
    ]
    inspected = subprocess.run(
        [str(BIN / "crdt-inspect"), "--json", "status", "--connect", n2.bind],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspected.returncode == 0, inspected.stderr
    status = json.loads(inspected.stdout)
    assert status["node_id"] == "n2" and status["pid"] == n2.pid and status["stale"] is False
    assert set(status) >= {"members", "peer_lag", "sync", "transport", "replicator"}
    wait_until(lambda: n1.counter("replicator", "status_queries") >= 2, "n1 counts its answers")


def test_no_node_there_is_exit_3_with_one_line(tmp_path: Path) -> None:
    from crdtstore.testing.localcluster import free_port

    done = run("members", "--connect", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert done.returncode == 3 and "no answer from" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_hostile_queries_are_refused_and_counted_and_the_node_keeps_answering(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    n1 = ServeNode(tmp_path, "n1", [], FAST)
    nodes.append(n1.start())
    n2 = ServeNode(tmp_path, "n2", [n1.bind], FAST)
    nodes.append(n2.start())
    wait_until(lambda: len(ask_status(n1.bind)["members"]) == 2, "n1 knows n2")
    ctx = zmq.Context()
    try:
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.setsockopt(zmq.ROUTING_ID, b"prober")
        bad.connect(n1.bind)
        for body in (b"Q", b"Q\x01", b"Q\x02status", b"Q\x01status\x00", b"Q\x01STATUS"):
            bad.send(body)
        # A client borrowing a member's id would have the answer sent to that member.
        impostor = ctx.socket(zmq.DEALER)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.setsockopt(zmq.ROUTING_ID, b"n2")
        impostor.connect(n1.bind)
        impostor.send(STATUS_REQUEST)
        wait_until(
            lambda: n1.counter("replicator", "rejected_query") >= 6, "every bad query is counted"
        )
        assert not bad.poll(0) and not impostor.poll(0)
    finally:
        ctx.destroy(linger=0)
    assert ask_status(n1.bind)["node_id"] == "n1"  # still answering


def test_status_over_curve_needs_an_allowed_client_key(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    secrets, allowed = tmp_path / "secrets", tmp_path / "allowed"
    allowed.mkdir()
    for name in ("n1", "ops", "stranger"):
        assert run("keygen", str(secrets), name).returncode == 0
    for name in ("n1", "ops"):
        shutil.copy(secrets / f"{name}.key", allowed)
    curve = {"secret_key": str(secrets / "n1.key_secret"), "keys_dir": str(allowed)}
    n1 = ServeNode(tmp_path, "n1", [], {**FAST, **curve})
    nodes.append(n1.start())
    server = str(secrets / "n1.key")
    ok = run(
        "members", "--connect", n1.bind, "--json",
        "--secret-key", str(secrets / "ops.key_secret"), "--server-key", server,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert [m["node_id"] for m in json.loads(ok.stdout)["members"]] == ["n1"]
    refused = run(
        "members", "--connect", n1.bind, "--timeout", "1",
        "--secret-key", str(secrets / "stranger.key_secret"), "--server-key", server,
    )  # fmt: skip
    assert refused.returncode == 3 and "no answer" in refused.stderr
    try:
        ask_status(n1.bind, 1.0)  # plain text to a CURVE server: no answer either
        raise AssertionError("a plain client was answered")
    except QueryError:
        pass
