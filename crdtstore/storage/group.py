"""Group commit: local mutations that arrive while a commit is in flight share the next one.

Theory of operation. Each durable commit costs an fsync, which dwarfs the mutation itself;
with one transaction per write, concurrent writers only queue for LMDB's writer lock and
buy nothing. Here a writer hands its mutation (a function of a
:class:`~crdtstore.storage.local.LocalWrite`) to the queue of its replica. If no commit
is in flight it becomes the leader: it begins a write transaction, takes every mutation
queued by then (its own included), applies them in arrival order (taking in those that
arrive meanwhile, up to :data:`MAX_GROUP`) and commits. It then
hands the lead to the first writer waiting in line, waits for its commit to be on disk
(:meth:`Environment.make_durable`: the meta page's flush, which the next group's commit
may do for it), and hands each writer of its group its own result or error. A writer
alone leads a group of one at once: nothing waits for company.

Invariants:

- A mutation's outcome is set only once the commit that holds it is on disk (with sync
  durability): a caller that got a result has its write there; one that got an error
  has nothing of its mutation written (or, if only the flush failed, is told so).
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
- ``after`` runs once per group that committed, in the leader's thread, after every
  writer of the group was woken: also when only the flush failed (the commit is visible
  to every reader of the directory, so its watchers must hear of it).
- :meth:`GroupCommit.settle` returns only once every request queued before it is
  settled, including those another thread's group took and has not settled yet (a group
  is in flight from its take until its writers are woken): whoever closes the replica
  after it closes nothing under a commit.

Threads wait in :meth:`GroupCommit.run`; an event loop uses :meth:`submit` (no wait) and
has a worker thread call :meth:`lead`, and :meth:`settle` before it closes.
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


MAX_GROUP = 1024
"""Requests a leader takes in after it began (arrivals while it applies the group join
until the group is this large): bounds how long the group's first writer waits."""


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


class _Flight:
    """A group between its take and its writers' wake-up; ``landed`` is set then."""

    __slots__ = ("landed", "requests")

    def __init__(self) -> None:
        self.requests: list[_Request] = []
        self.landed = threading.Event()


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
        durable: Callable[[int], None],
        stats: Counter[str],
        after: Callable[[Committed], None] | None = None,
    ) -> None:
        self._begin = begin
        self._durable = durable
        self._stats = stats
        self.after = after
        """Called with each group's :class:`Committed` (the node's commit hooks)."""
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._leading = False
        self._flights: list[_Flight] = []  # groups taken, their writers not woken yet
        self._settling = 0  # settle() calls under way (tests read it)

    def run(self, fn: Callable[[LocalWrite], T]) -> T:
        """``fn(write)`` committed durably, maybe with other writers' mutations; its result
        or its error. Blocks the calling thread (which may lead the commit)."""
        req = _Request(fn)
        with self._lock:
            wake = self._enqueue(req)
        self._wait_or_lead(req, wake)
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
        """Lead the commit of what is queued unless another thread does: return once the
        group that holds what was queued before the call is settled, or at once if a
        group in flight took all of it (:meth:`settle` waits for that one too). An event
        loop's commit threads call it after each write: one that finds the queue taken
        is free at once to lead the next group."""
        place = _Request(None)
        with self._lock:
            if not self._queue:
                return
            wake = self._enqueue(place)
        self._wait_or_lead(place, wake)

    def settle(self) -> None:
        """Return once everything queued before the call is settled, leading the commit
        if no other thread does. What was queued is in the queue still (the call's place
        in line joins its group) or in a group taken already, in flight: those are waited
        for too, every one (a group taken earlier may land after a later one, whose flush
        covered both). Whoever closes the replica after it closes nothing under a commit."""
        place = _Request(None)
        with self._lock:
            flights = [f.landed for f in self._flights]
            queued = bool(self._queue)
            wake = self._enqueue(place) if queued else None
            self._settling += 1
        try:
            if queued:
                self._wait_or_lead(place, wake)
            for landed in flights:
                landed.wait()
        finally:
            with self._lock:
                self._settling -= 1

    def _enqueue(self, req: _Request) -> Any:
        """Queue ``req`` (the caller holds ``_lock``); the lock its thread waits on, or
        None if it leads now."""
        self._queue.append(req)
        if self._leading:
            req.wake = wake = threading.Lock()
            wake.acquire()
            return wake
        self._leading = True
        return None

    def _wait_or_lead(self, req: _Request, wake: Any) -> None:
        if wake is not None:
            wake.acquire()  # released once: settled, or handed the lead
            if req.done:
                return
        flight = _Flight()
        try:
            self._lead(req, flight)
        finally:
            with self._lock:
                if flight in self._flights:
                    self._flights.remove(flight)
            flight.landed.set()

    def _lead(self, req: _Request, flight: _Flight) -> None:
        group = flight.requests
        try:
            committed, results = self._commit(flight)
        finally:
            self._pass_lead()
        interrupted: BaseException | None = None
        error: Exception | None = None
        if committed is not None:
            # The next group applies and commits while this one's meta page is flushed.
            try:
                self._durable(committed.ticket)
            except BaseException as exc:
                results = [(r, None, _as_error(exc) if r.fn else None) for r, _, _ in results]
                if isinstance(exc, Exception):
                    error = exc
                else:
                    interrupted = exc
        for r, result, err in results:
            r.settle(result, err)
        with self._lock:
            for r in group:
                r.done = True
        for r in group:
            if r.wake is not None and r is not req:
                r.wake.release()
        if interrupted is not None:
            raise interrupted
        # Committed, even if its flush failed: every reader sees the group's changes, so
        # its watchers and hooks hear of them (each writer was told of the failure).
        if committed is not None and self.after is not None:
            self.after(committed)
        if error is not None:
            self._stats["group_flush_errors"] += 1

    def _take(self, flight: _Flight) -> None:
        """Move every queued request into ``flight`` (the leader's group), in flight from
        now until its writers are woken."""
        with self._lock:
            if not flight.requests:
                self._flights.append(flight)
            flight.requests.extend(self._queue)
            self._queue.clear()

    def _pass_lead(self) -> None:
        """Hand the lead to the first waiting thread in line, or give it up if none waits."""
        with self._lock:
            nxt = next((r for r in self._queue if r.wake is not None), None)
            if nxt is None:
                self._leading = False
        if nxt is not None:
            nxt.wake.release()

    def _commit(
        self, flight: _Flight
    ) -> tuple[Committed | None, list[tuple[_Request, Any, BaseException | None]]]:
        """Begin the transaction, take every request queued by then into ``group``, apply
        and commit them (not yet flushed). The group's :class:`Committed` (None if the
        transaction failed) and each request's outcome. (Taking the queue once the writer
        lock is ours lets the writers that queued while another transaction or process
        held it join.)"""
        group = flight.requests
        results: list[tuple[_Request, Any, BaseException | None]] = []
        with self._lock:
            if all(r.fn is None for r in self._queue):  # places in line of lead() or settle()
                self._flights.append(flight)
                group.extend(self._queue)
                self._queue.clear()
                return None, [(r, None, None) for r in group]
        try:
            w = self._begin()
        except BaseException as exc:
            self._take(flight)
            if not isinstance(exc, Exception):
                _settle_all(group, exc)
                raise
            err = _as_error(exc)
            return None, [(r, None, err if r.fn else None) for r in group]
        self._take(flight)
        try:
            while len(results) < len(group):
                req = group[len(results)]
                if len(results) + 1 == len(group) and len(group) < MAX_GROUP:
                    self._take(flight)  # late arrivals join: no waiting, one flush fewer
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
            committed = w.commit(durable=False)
        except Exception as exc:
            w.abort()
            # Nothing is written: every request that had not failed alone gets the error
            # (the leader's own included: the leader raises it as its own outcome).
            err = _as_error(exc)
            failed = [(r, None, error or (err if r.fn else None)) for r, _, error in results]
            return None, failed + [(r, None, err if r.fn else None) for r in group[len(results) :]]
        except BaseException as exc:  # KeyboardInterrupt and such, in the leader thread
            w.abort()
            _settle_all(group, exc)
            raise
        self._stats["group_commits"] += 1  # before any writer returns and reads them
        self._stats["group_commit_writes"] += sum(req.fn is not None for req in group)
        return committed, results


def _as_error(exc: BaseException) -> Error:
    if isinstance(exc, Error):
        return exc
    err = StorageError(f"the group commit failed; nothing was written: {exc!r}")
    err.__cause__ = exc
    return err


def _settle_all(group: list[_Request], exc: BaseException) -> None:
    """Settle and wake every request of a group whose leader is interrupted."""
    for req in group:
        req.settle(None, _as_error(exc) if req.fn is not None else None)
        req.done = True
        if req.wake is not None and req.wake.locked():
            req.wake.release()
