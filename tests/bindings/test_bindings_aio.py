"""The asyncio API over a real LMDB directory: reads, writes, batches, change events."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

import crdtstore
from bindings.aio import AsyncNode
from crdtstore.testing.localcluster import ServeNode


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_reads_writes_and_batches(tmp_path: Path) -> None:
    async def main() -> None:
        async with await AsyncNode.open(str(tmp_path / "n")) as node:
            cfg = node.lww_map("cfg")
            await cfg.set("a", 1)
            assert await cfg.get("a") == 1 and await cfg.contains("a")
            assert await cfg.get("missing", "dflt") == "dflt"
            assert await cfg.delete("a") is True and await cfg.delete("a") is False
            hosts = node.or_set("hosts")
            await hosts.add("h1")
            await hosts.add("h2")
            await hosts.discard("h1")
            assert await hosts.elements() == {"h2"}

            def fill(n: crdtstore.Node) -> int:
                m = n.lww_map("bulk")
                for i in range(100):
                    m[i] = i * i
                return len(m)

            assert await node.batch(fill) == 100
            assert await node.lww_map("bulk").size() == 100
            with pytest.raises(crdtstore.InvalidValue):
                await cfg.set("bad", object())
            assert await cfg.items() == []

    run(main())
    with crdtstore.open(tmp_path / "n") as node:  # it all reached the disk
        assert set(node.or_set("hosts")) == {"h2"} and len(node.lww_map("bulk")) == 100


def test_durable_writes_do_not_block_the_event_loop(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async with await AsyncNode.open(str(tmp_path / "n")) as node:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            before = ticks
            m = node.lww_map("m")
            for i in range(50):  # each one fsyncs (durability "sync")
                await m.set(i, i)
            during = ticks - before
            stop.set()
            await task
            return during, await m.size()

    during, size = run(main())
    assert size == 50
    # Had set() run its fsync on the loop, the ticker could not have run between writes.
    assert during >= 50


def test_concurrent_task_writes_share_a_group_commit(tmp_path: Path) -> None:
    """Eight tasks write while another thread's transaction holds the writer lock: their
    writes queue for the node's group commit and land in one commit after it."""

    async def main() -> None:
        async with await AsyncNode.open(str(tmp_path / "n"), node_id="a") as anode:
            node, m, s = anode.node, anode.lww_map("m"), anode.or_set("s")
            await m.set("warm", 0)
            await s.add("warm")  # the views' namespaces exist before the lock is taken
            await s.discard("warm")
            before = dict(node.stats)
            entered, leave = threading.Event(), threading.Event()

            def hold() -> None:
                with node.transaction():
                    node.lww_map("m")["tx"] = 1
                    entered.set()
                    leave.wait(60)

            holder = threading.Thread(target=hold)
            holder.start()
            entered.wait(60)
            writes = [
                asyncio.ensure_future(m.set(f"k{i}", i) if i % 2 else s.add(f"e{i}"))
                for i in range(8)
            ]
            for _ in range(3000):  # bounded poll: eight writes and the worker's turn queued
                if len(node.replica.group._queue) >= 9:
                    break
                await asyncio.sleep(0.01)
            leave.set()
            await asyncio.gather(*writes)
            holder.join()
            assert node.stats["group_commits"] - before["group_commits"] == 1
            assert node.stats["group_commit_writes"] - before["group_commit_writes"] == 8
            assert await m.size() == 6 and await s.elements() == {"e0", "e2", "e4", "e6"}
            with pytest.raises(crdtstore.InvalidValue):
                await m.set("bad", object())

    run(main())


def test_changes_from_another_process_arrive_as_an_async_iterator(tmp_path: Path) -> None:
    data = tmp_path / "n"
    crdtstore.open(data).close()

    async def main() -> list[tuple[str, object]]:
        async with await AsyncNode.open(str(data), watch_poll_interval_ms=5) as node:
            seen: list[tuple[str, object]] = []
            feed = node.changes("cfg")
            waiter = asyncio.ensure_future(feed.__anext__())
            await asyncio.sleep(0)  # the watch is registered once the generator starts
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import crdtstore, sys\n"
                "with crdtstore.open(sys.argv[1]) as n:\n"
                "    n.lww_map('cfg')['k1'] = 'v1'\n"
                "    n.lww_map('cfg')['k2'] = 'v2'\n",
                str(data),
            )
            assert await writer.wait() == 0
            first = await waiter
            seen.append((first.key, first.new))
            async for change in feed:
                seen.append((change.key, change.new))
                if len(seen) == 2:
                    break
            return seen

    assert run(main()) == [("k1", "v1"), ("k2", "v2")]


def test_members_and_their_changes_beside_a_serving_node(tmp_path: Path) -> None:
    fast = {
        "heartbeat_interval_ms": 100,
        "suspect_after_ms": 600,
        "dead_after_ms": 1500,
        "member_view_interval_ms": 200,
    }
    n1 = ServeNode(tmp_path, "n1", [], fast).start()
    n2 = ServeNode(tmp_path, "n2", [n1.bind], fast).start()

    async def main() -> None:
        # This process does not hold n1's network role: n1's serve process does.
        async with await AsyncNode.open(str(n1.data)) as node:

            async def n2_status() -> str:
                return {m.node_id: m.status for m in await node.members()}.get("n2", "?")

            while await n2_status() != "alive":
                await asyncio.sleep(0.05)  # polling members(), bounded by run()'s timeout
            seen = []
            async with await node.watch_members() as changes:
                n2.kill()
                async for change in changes:
                    seen.append((change.node_id, change.new.value))
                    if change.new.value == "dead":
                        break
            assert seen == [("n2", "suspect"), ("n2", "dead")]
            assert await n2_status() == "dead"
            assert (await node.member_view()).stale is None

    try:
        run(main())
    finally:
        n1.stop()
        n2.stop()
