"""Group commit: local mutations that arrive while a commit is in flight share the next one.

Theory of operation. Each durable commit costs an fsync, which dwarfs the mutation itself;
with one transaction per write, concurrent writers only queue for LMDB's writer lock and
buy nothing. Here a writer hands its mutation (a function of a
:class:`~crdtstore.storage.local.LocalWrite`) to the queue of its replica. If no commit
is in flight it becomes the leader: it begins a write transaction, takes every mutation
queued by then (its own included), applies them in arrival order, commits (one fsync,
with ``durability="sync"``), and hands each writer its own result or error. Writers that
arrive meanwhile wait, and the first of them in line leads the next group. A writer alone
leads a group of one at once: nothing waits for company.

Invariants:

- A mutation's outcome is set only once the commit that holds it returned: a caller that
  got a result has its write on disk (with sync durability); one that got an error has
  nothing of its mutation written.
- A mutation that raises leaves the group's other mutations as if it had never run: a
  :class:`~crdtstore.errors.Error` from a ``LocalWrite`` op that recorded no op changed
  nothing (each op validates before it writes); anything else rolls the transaction back
  to the mutation's start (:meth:`LocalWrite.rollback`). Only its own caller sees the
  error.
- If the transaction itself fails (an LMDB error, the commit), nothing of the group is
  written and every caller whose mutation had not failed alone gets that error.
- A group commits like one ``transaction()``: per namespace touched, one run of seqs and
  ONE delta batch, one journal row. Replication sees a batch as it sees a transaction's;
  publication and causal delivery are unchanged.
- Groups commit one at a time per process (one leader); ``transaction()`` bypasses the
  queue and stays a commit of its own (LMDB's writer lock orders it with the groups).
- ``after`` runs once per group, in the leader's thread, after every writer of the group
  was woken.

Threads wait in :meth:`GroupCommit.run`; an event loop uses :meth:`submit` (no wait) and
has a worker thread call :meth:`lead`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from crdtstore.errors import Error, StorageError
from crdtstore.storage.local import Committed, LocalWrite

T = TypeVar("T")


class _Request:
    """One queued mutation (``fn`` None: a :meth:`GroupCommit.lead` call's place in
    line) and its outcome. ``wake`` is the lock its waiting thread blocks on; ``future``
    carries the outcome of a :meth:`GroupCommit.submit`."""

    __slots__ = ("done", "error", "fn", "future", "result", "wake")

    def __init__(
        self, fn: Callable[[LocalWrite], Any] | None, future: Future[Any] | None = None
    ) -> None:
        self.fn = fn
        self.future = future
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wake: Any = None

    def settle(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        if self.future is not None:
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """The commit queue of one replica in this process.

    Each waiting thread blocks on a lock of its own and is woken once: when its mutation
    is committed, or when it is its turn to lead (the leader hands over to the first
    waiting writer in line). A shared condition would wake every waiter at every commit,
    and with dozens of writers on two cores those wake-ups cost more than the commit.
    """

    def __init__(
        self,
        begin: Callable[[], LocalWrite],
        stats: Counter[str],
        after: Callable[[Committed], None] | None = None,
    ) -> None:
        self._begin = begin
        self._stats = stats
        self.after = after
        """Called with each group's :class:`Committed` (the node's commit hooks)."""
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._leading = False

    def run(self, fn: Callable[[LocalWrite], T]) -> T:
        """``fn(write)`` committed durably, maybe with other writers' mutations; its result
        or its error. Blocks the calling thread (which may lead the commit)."""
        req = _Request(fn)
        self._wait_or_lead(req)
        result: T = req.outcome()
        return result

    def submit(self, fn: Callable[[LocalWrite], T]) -> Future[T]:
        """Queue ``fn`` without waiting: its future completes once it is committed. The
        caller must then call :meth:`lead` (from a thread that may block) for it to be."""
        future: Future[T] = Future()
        with self._lock:
            self._queue.append(_Request(fn, future))
        return future

    def lead(self) -> None:
        """Return once everything queued before the call is committed, leading the commit
        if no other thread does."""
        self._wait_or_lead(_Request(None))

    def _wait_or_lead(self, req: _Request) -> None:
        with self._lock:
            if req.fn is None and not self._queue:
                return  # what the caller queued was taken by a leader, and is settled
            self._queue.append(req)
            if self._leading:
                req.wake = wake = threading.Lock()
                wake.acquire()
            else:
                self._leading = True
                wake = None
        if wake is not None:
            wake.acquire()  # released once: committed, or handed the lead
            if req.done:
                return
        group: list[_Request] = []
        committed = None
        try:
            committed = self._commit(group)
        finally:
            self._hand_over(group, req)
        if committed is not None and self.after is not None:
            self.after(committed)

    def _take(self, group: list[_Request]) -> None:
        """Move every queued request into ``group`` (the leader's)."""
        with self._lock:
            group.extend(self._queue)
            self._queue.clear()

    def _hand_over(self, group: list[_Request], me: _Request) -> None:
        """Mark ``group`` done, wake its waiting writers and the next leader (the first
        waiting thread in line), or give the lead up if no thread waits."""
        with self._lock:
            for req in group:
                req.done = True
            nxt = next((r for r in self._queue if r.wake is not None), None)
            if nxt is None:
                self._leading = False
        for req in group:
            if req.wake is not None and req is not me:
                req.wake.release()
        if nxt is not None:
            nxt.wake.release()

    def _commit(self, group: list[_Request]) -> Committed | None:
        """Begin the transaction, take every request queued by then into ``group``, apply
        and commit them; settle every request. The group's :class:`Committed`, or None if
        the transaction failed. (Taking the queue once the writer lock is ours lets the
        writers that queued while another transaction or process held it join.)"""
        results: list[tuple[_Request, Any, BaseException | None]] = []
        try:
            w = self._begin()
        except BaseException as exc:
            self._take(group)
            _fail(group, exc)
            if not isinstance(exc, Exception):
                raise
            return None
        self._take(group)
        try:
            for req in group:
                if req.fn is None:
                    results.append((req, None, None))
                    continue
                mark = w.savepoint()
                try:
                    results.append((req, req.fn(w), None))
                except Exception as exc:
                    if not w.active:
                        raise  # the transaction is broken: the whole group fails
                    if not (isinstance(exc, Error) and w.savepoint() == mark):
                        w.rollback(mark)  # it may have written before it raised
                    results.append((req, None, exc))
            committed = w.commit()
        except Exception as exc:
            w.abort()
            # Nothing is written: every request that had not failed alone gets the error
            # (the leader's own included: the leader raises it as its own outcome).
            _fail([req for req, _, error in results if error is None], exc)
            _fail(group[len(results) :], exc)
            return None
        except BaseException as exc:  # KeyboardInterrupt and such, in the leader thread
            w.abort()
            _fail(group, exc)
            raise
        self._stats["group_commits"] += 1  # before any writer returns and reads them
        self._stats["group_commit_writes"] += sum(req.fn is not None for req in group)
        for req, result, error in results:
            req.settle(result, error)
        return committed


def _fail(requests: list[_Request], exc: BaseException) -> None:
    """Settle every request with ``exc`` (as a StorageError unless it is an Error)."""
    for req in requests:
        if req.fn is None:
            req.settle(None, None)
        elif isinstance(exc, Error):
            req.settle(None, exc)
        else:
            err = StorageError(f"the group commit failed; nothing was written: {exc!r}")
            err.__cause__ = exc
            req.settle(None, err)
