"""Delivering journaled changes to watchers: one thread per node, owned by the node.

The thread follows the change journal (:mod:`crdtstore.storage.journal`), so it delivers
the changes of every process sharing the directory, local and remote ones alike, in
commit order. It polls the journal every ``interval`` seconds for other processes'
commits and is woken at once by this process's commits. Callbacks run on this thread; an
exception in one is logged and counted, never lost silently, and does not stop delivery.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from crdtstore.errors import Error
from crdtstore.storage.journal import Change

if TYPE_CHECKING:
    from crdtstore.storage.replica import LMDBReplica

log = logging.getLogger(__name__)

READ_ROWS = 256


class WatchHandle:
    """Returned by ``Node.watch``; ``cancel()`` stops delivery (idempotent)."""

    def __init__(self, watcher: JournalWatcher, sub_id: int) -> None:
        self._watcher = watcher
        self._id = sub_id

    def cancel(self) -> None:
        self._watcher.unsubscribe(self._id)


class ChangeFeed:
    """An iterator of changes; ``get(timeout)`` to poll. Ends when closed or the node closes."""

    _END = object()

    def __init__(self, watcher: JournalWatcher, namespace: str | None, maxsize: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._stats = watcher.stats
        self._closed = False
        self._handle = watcher.subscribe(namespace, self._put)
        watcher.feeds.add(self)

    def _put(self, change: Change) -> None:
        try:
            self._queue.put_nowait(change)
        except queue.Full:
            self._stats["feed_overflow"] += 1  # a consumer this far behind loses changes

    def get(self, timeout: float | None = None) -> Change | None:
        """The next change, or None after ``timeout`` seconds or once the feed ended."""
        if self._closed and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._END:
            self._closed = True
            return None
        assert isinstance(item, Change)
        return item

    def __iter__(self) -> Iterator[Change]:
        while True:
            change = self.get()
            if change is None:
                return
            yield change

    def close(self) -> None:
        self._handle.cancel()
        if not self._closed:
            self._closed = True
            # If full, the reader sees _closed once it has drained the queue.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(self._END)

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JournalWatcher:
    def __init__(self, replica: LMDBReplica, interval: float, stats: Counter[str]) -> None:
        self._replica = replica
        self._interval = interval
        self.stats = stats
        self._subs: dict[int, tuple[str | None, Callable[[Change], None]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pos = 0
        self.feeds: set[ChangeFeed] = set()

    def subscribe(self, namespace: str | None, deliver: Callable[[Change], None]) -> WatchHandle:
        with self._lock:
            if self._stop.is_set():
                raise Error("the node is closed")
            if self._thread is None:
                self._pos = self._replica.journal_last()
                self._thread = threading.Thread(
                    target=self._run, name=f"crdtstore-watch-{self._replica.node_id}", daemon=True
                )
                self._thread.start()
                self._wake.set()  # a commit's wake() before the thread existed went nowhere
            sub_id = next(self._ids)
            self._subs[sub_id] = (namespace, deliver)
        return WatchHandle(self, sub_id)

    def unsubscribe(self, sub_id: int) -> None:
        with self._lock:
            self._subs.pop(sub_id, None)

    def wake(self) -> None:
        # Every commit calls it: with nothing subscribed there is no thread to wake.
        if self._thread is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for feed in list(self.feeds):
            feed.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._poll()
            except Error:
                self.stats["watch_errors"] += 1
                log.exception("watcher of %s: reading the journal failed", self._replica.path)

    def _poll(self) -> None:
        while not self._stop.is_set():
            first, rows = self._replica.journal_after(self._pos, READ_ROWS)
            if not rows:
                return
            if rows[0][0] > self._pos + 1 and first > self._pos + 1:
                self.stats["journal_overrun"] += 1
                log.warning(
                    "watcher of %s fell behind the journal; changes were skipped",
                    self._replica.path,
                )
            for seq, changes in rows:
                with self._lock:
                    subs = list(self._subs.values())
                for change in changes:
                    for namespace, deliver in subs:
                        if namespace is None or namespace == change.namespace:
                            try:
                                deliver(change)
                            except Exception:  # a user callback; count it and go on
                                self.stats["watch_callback_errors"] += 1
                                log.exception("watch callback failed on %r", change)
                self._pos = seq
