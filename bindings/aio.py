"""crdtstore for asyncio services: the same store, without blocking the event loop.

Every call that may wait (a durable commit's fsync, opening, closing) runs on the node's
own single worker thread, so writes from one task keep their order and a slow disk never
stalls the loop. Single writes are queued for the node's group commit from the loop, in
the order they are made, and committed by two threads of their own (one commits while
the other waits for its commit's flush): the writes of every task that arrive while a
commit is in flight share the next one, as concurrent threads' writes do. Change events
reach the loop through ``call_soon_threadsafe`` and are consumed as an async iterator::

    async with await AsyncNode.open("data/n1") as node:
        config = node.lww_map("config")
        await config.set("region", "eu-west")
        print(await config.get("region"))
        async for change in node.changes("config"):
            ...

``node.batch(fn)`` runs ``fn(sync_node)`` inside one ``transaction()`` on the worker thread:
many mutations, one commit (transactions belong to a thread, so they cannot span awaits).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Generic, TypeVar

import crdtstore
from crdtstore.membership import StatusChange
from crdtstore.membership.observed import MemberView
from crdtstore.membership.view import Member
from crdtstore.storage.journal import Change
from crdtstore.storage.local import LocalWrite
from crdtstore.storage.member_watch import MemberWatchHandle

T = TypeVar("T")
COMMIT_THREADS = 2
"""Threads that lead the group commits of an AsyncNode's writes: while one waits for its
group's flush, the other commits the next group."""
E = TypeVar("E")
_MISSING = object()


class AsyncNode:
    """An open node directory, driven from asyncio."""

    def __init__(self, node: crdtstore.Node, executor: ThreadPoolExecutor) -> None:
        self.node = node
        self._executor = executor
        self._leaders = ThreadPoolExecutor(
            max_workers=COMMIT_THREADS, thread_name_prefix="crdtstore-aio-commit"
        )

    @classmethod
    async def open(cls, path: str, **options: Any) -> AsyncNode:
        """Open like :func:`crdtstore.open` (same arguments), off the event loop."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtstore-aio")
        loop = asyncio.get_running_loop()
        try:
            node = await loop.run_in_executor(executor, partial(crdtstore.open, path, **options))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(node, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write(self, fn: Callable[[LocalWrite], T]) -> T:
        """``fn`` committed through the node's group commit: queued here, without
        blocking the loop; a commit thread leads the commit unless another thread of the
        process already does."""
        done = self.node._submit(fn)
        leading = asyncio.get_running_loop().run_in_executor(self._leaders, self.node._lead_writes)
        # Not awaited: the write is settled by whichever leader commits it, and this
        # call's turn may come a group later. (It raises only what interrupts a thread.)
        leading.add_done_callback(_consume)
        return await asyncio.wrap_future(done)

    async def close(self) -> None:
        await self._run(self._leaders.shutdown)
        # A plain thread's group may have taken some of the writes queued so far and be
        # committing them still: closing the node under it would fail them.
        await self._run(self.node._settle_writes)
        await self._run(self.node.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def lww_map(self, name: str) -> AsyncLWWMap:
        return AsyncLWWMap(self, name)

    def or_set(self, name: str) -> AsyncORSet:
        return AsyncORSet(self, name)

    async def batch(self, fn: Callable[[crdtstore.Node], T]) -> T:
        """Run ``fn(node)`` in one transaction (one commit) on the worker thread."""

        def run() -> T:
            with self.node.transaction():
                return fn(self.node)

        return await self._run(run)

    async def members(self) -> list[Member]:
        """As ``Node.members``: the role holder's failure detector's verdicts, in any
        process sharing the directory (``unknown`` while its view is stale)."""
        return await self._run(self.node.members)

    async def member_view(self) -> MemberView:
        return await self._run(self.node.member_view)

    async def watch_members(self, maxsize: int = 10_000) -> MemberChanges:
        """Subscribe to every member status change from now on (see
        ``Node.watch_members``), in any process sharing the directory::

            async with await node.watch_members() as changes:
                async for change in changes:
                    ...

        A consumer ``maxsize`` changes behind loses the oldest (counted in
        ``node.stats["aio_member_changes_dropped"]``)."""
        queue = _LoopQueue[StatusChange](self.node, maxsize, "aio_member_changes_dropped")
        handle = await self._run(self.node.watch_members, queue.put_threadsafe)
        return MemberChanges(queue, handle)

    async def changes(
        self, namespace: str | None = None, maxsize: int = 10_000
    ) -> AsyncIterator[Change]:
        """Every later change of ``namespace`` (None: all), local, remote or from other
        processes. A consumer that falls ``maxsize`` events behind loses the oldest
        (counted in ``node.stats["aio_changes_dropped"]``) rather than growing memory."""
        queue = _LoopQueue[Change](self.node, maxsize, "aio_changes_dropped")
        handle = self.node.watch(namespace, queue.put_threadsafe)
        try:
            while True:
                yield await queue.get()
        finally:
            handle.cancel()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class MemberChanges:
    """The member status changes after ``AsyncNode.watch_members()`` returned, as an async
    iterator; ``cancel()`` (or leaving ``async with``) stops them."""

    def __init__(self, queue: _LoopQueue[StatusChange], handle: MemberWatchHandle) -> None:
        self._queue = queue
        self._handle = handle

    def __aiter__(self) -> MemberChanges:
        return self

    async def __anext__(self) -> StatusChange:
        return await self._queue.get()

    def cancel(self) -> None:
        self._handle.cancel()

    async def __aenter__(self) -> MemberChanges:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class _LoopQueue(Generic[E]):
    """Events from a node's thread to the running loop, at most ``maxsize`` waiting: when
    full, the oldest is dropped and counted in ``node.stats[counter]``."""

    def __init__(self, node: crdtstore.Node, maxsize: int, counter: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[E] = asyncio.Queue(maxsize)
        self._node = node
        self._counter = counter

    def put_threadsafe(self, event: E) -> None:
        self._loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: E) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._node.stats[self._counter] += 1
        self._queue.put_nowait(event)

    async def get(self) -> E:
        return await self._queue.get()


class AsyncLWWMap:
    """The LWW-map ``name``: awaitable reads and writes."""

    def __init__(self, anode: AsyncNode, name: str) -> None:
        self._anode = anode
        self.name = name

    def _view(self) -> crdtstore.LWWMapView:
        return self._anode.node.lww_map(self.name)

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._anode._run(lambda: self._view().get(key, default))

    async def set(self, key: Any, value: Any) -> None:
        name = self._view().name  # checks the namespace, as the view does
        await self._anode._write(lambda w: w.put(name, key, value))

    async def delete(self, key: Any) -> bool:
        """Remove ``key``; False if it was absent."""
        return await self._anode._run(lambda: self._view().pop(key, _MISSING) is not _MISSING)

    async def contains(self, key: Any) -> bool:
        return await self._anode._run(self._view().__contains__, key)

    async def items(self) -> list[tuple[Any, Any]]:
        return await self._anode._run(lambda: list(self._view().items()))

    async def size(self) -> int:
        return await self._anode._run(lambda: len(self._view()))


class AsyncORSet:
    """The OR-Set ``name``: awaitable reads and writes."""

    def __init__(self, anode: AsyncNode, name: str) -> None:
        self._anode = anode
        self.name = name

    def _view(self) -> crdtstore.ORSetView:
        return self._anode.node.or_set(self.name)

    async def add(self, element: Any) -> None:
        name = self._view().name  # checks the namespace, as the view does
        await self._anode._write(lambda w: w.add(name, element))

    async def discard(self, element: Any) -> None:
        name = self._view().name
        await self._anode._write(lambda w: w.remove(name, element))

    async def contains(self, element: Any) -> bool:
        return await self._anode._run(self._view().__contains__, element)

    async def elements(self) -> set[Any]:
        return await self._anode._run(lambda: set(self._view()))

    async def size(self) -> int:
        return await self._anode._run(lambda: len(self._view()))
