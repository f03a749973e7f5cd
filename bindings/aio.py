"""crdtstore for asyncio services: the same store, without blocking the event loop.

Every call that may wait (a durable commit's fsync, opening, closing) runs on the node's
own single worker thread, so writes from one task keep their order and a slow disk never
stalls the loop. Change events reach the loop through ``call_soon_threadsafe`` and are
consumed as an async iterator::

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
from typing import Any, TypeVar

import crdtstore
from crdtstore.membership.view import Member
from crdtstore.storage.journal import Change

T = TypeVar("T")
_MISSING = object()


class AsyncNode:
    """An open node directory, driven from asyncio."""

    def __init__(self, node: crdtstore.Node, executor: ThreadPoolExecutor) -> None:
        self.node = node
        self._executor = executor

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

    async def close(self) -> None:
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
        return await self._run(self.node.members)

    async def changes(
        self, namespace: str | None = None, maxsize: int = 10_000
    ) -> AsyncIterator[Change]:
        """Every later change of ``namespace`` (None: all), local, remote or from other
        processes. A consumer that falls ``maxsize`` events behind loses the oldest
        (counted in ``node.stats["aio_changes_dropped"]``) rather than growing memory."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change] = asyncio.Queue(maxsize)

        def put(change: Change) -> None:
            if queue.full():
                queue.get_nowait()
                self.node.stats["aio_changes_dropped"] += 1
            queue.put_nowait(change)

        def from_watcher_thread(change: Change) -> None:
            loop.call_soon_threadsafe(put, change)

        handle = self.node.watch(namespace, from_watcher_thread)
        try:
            while True:
                yield await queue.get()
        finally:
            handle.cancel()


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
        await self._anode._run(self._view().__setitem__, key, value)

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
        await self._anode._run(self._view().add, element)

    async def discard(self, element: Any) -> None:
        await self._anode._run(self._view().discard, element)

    async def contains(self, element: Any) -> bool:
        return await self._anode._run(self._view().__contains__, element)

    async def elements(self) -> set[Any]:
        return await self._anode._run(lambda: set(self._view()))

    async def size(self) -> int:
        return await self._anode._run(lambda: len(self._view()))
