"""Two hosts (two nodes in separate processes on loopback), a tooz coordinator on each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tooz import coordination

from crdtstore.testing.localcluster import ServeNode, free_port, wait_until

MEMBER = Path(__file__).with_name("tooz_member.py")


def ask(proc: subprocess.Popen[str], command: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_joins_capabilities_partitions_and_leaves_cross_hosts(tmp_path: Path) -> None:
    bind_a, bind_b = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    url_a = f"crdt://{tmp_path / 'a'}?bind={bind_a}&timeout=5"
    url_b = f"crdt://{bind_a.removeprefix('tcp://')}{tmp_path / 'b'}?bind={bind_b}&timeout=5"
    coord = coordination.get_coordinator(url_a, b"alpha")
    coord.start(start_heart=True)
    proc = None
    try:
        coord.join_group_create(b"hosts", {"host": "alpha"})
        partitioner = coord.join_partitioned_group(b"workers")
        proc = subprocess.Popen(
            [sys.executable, str(MEMBER), url_b, "beta", "workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "JOINED"

        def members() -> set[bytes]:
            coord.run_watchers()
            return set(coord.get_members(b"workers").get())

        wait_until(lambda: members() == {b"alpha", b"beta"}, "alpha sees beta join")
        wait_until(lambda: len(coord.get_members(b"hosts").get()) == 2, "beta in hosts")
        caps = coord.get_member_capabilities(b"hosts", b"beta").get()
        assert caps == {"host": "beta"}

        def theirs() -> dict[str, Any] | None:
            answer = json.loads(ask(proc, "owners"))  # type: ignore[arg-type]
            return answer if answer["members"] == ["alpha", "beta"] else None

        remote = wait_until(theirs, "beta sees both members", 30, 0.2)
        coord.run_watchers()
        mine = {
            str(i): sorted(m.decode() for m in partitioner.members_for_object(i))
            for i in range(200)
        }
        assert mine == remote["owners"]
        assert {o[0] for o in mine.values()} == {"alpha", "beta"}  # both own something

        assert ask(proc, "leave") == "LEFT"
        wait_until(lambda: members() == {b"alpha"}, "alpha sees beta leave")
    finally:
        if proc is not None:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            proc.wait(timeout=30)
        coord.stop()


OBSERVER = """
import json, sys
from tooz import coordination
coord = coordination.get_coordinator(sys.argv[1], b"late-observer")
coord.start()
print(json.dumps(sorted(m.decode() for m in coord.get_members(sys.argv[2].encode()).get())))
coord.stop()
"""


def test_members_of_a_dead_host_expire_with_its_node_in_every_process(tmp_path: Path) -> None:
    fast = {
        "heartbeat_interval_ms": 100,
        "suspect_after_ms": 600,
        "dead_after_ms": 1500,
        "status_interval_ms": 100,
        "member_view_interval_ms": 200,
    }
    host_a = ServeNode(tmp_path, "a", [], fast).start()
    host_b = ServeNode(tmp_path, "b", [host_a.bind], fast).start()
    # A member timeout far longer than any wait below: only its node's death expires it.
    url_a, url_b = (f"crdt://{h.data}?timeout=600" for h in (host_a, host_b))
    beta = subprocess.Popen(
        [sys.executable, str(MEMBER), url_b, "beta", "workers"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    coord = coordination.get_coordinator(url_a, b"alpha")
    try:
        assert beta.stdout is not None and beta.stdout.readline().strip() == "JOINED"
        coord.start(start_heart=True)

        def workers() -> set[bytes]:
            try:
                return set(coord.get_members(b"workers").get())
            except coordination.GroupNotCreated:
                return set()

        wait_until(lambda: workers() == {b"beta"}, "alpha's process lists beta")
        # Host a holds b's member record (it may receive beta's groups before that record).
        wait_until(lambda: host_a.member_status().get("b", ("?",))[0] == "alive", "a knows b")
        # The role holder lists b from its hello at once; other processes list members
        # from the replicated records, so b's must be on a's disk before b dies.
        wait_until(
            lambda: any(e["key"] == "b" for e in host_a.dump("__members")), "a holds b's record"
        )
        host_b.kill()  # the host dies: its node and the member with it
        beta.kill()
        wait_until(lambda: workers() == set(), "alpha's process stops listing beta", 60)
        # A process that starts only now agrees at once (it never saw beta's counter move).
        late = subprocess.run(
            [sys.executable, "-c", OBSERVER, url_a, "workers"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert late.returncode == 0, late.stderr
        assert json.loads(late.stdout) == []
    finally:
        beta.kill()
        beta.wait()
        coord.stop()
        for host in (host_a, host_b):
            host.stop()
