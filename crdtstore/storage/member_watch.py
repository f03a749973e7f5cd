"""``Node.watch_members`` in every process: following the directory's member view.

One thread per node, started by its first watch and stopped by ``close()``, polls the view
(:mod:`crdtstore.storage.member_view`) every interval and reports, in order:

- the status changes its writer (the role holder's failure detector) logged, so a
  suspicion cleared between two polls is still reported;
- while the view is fresh, any member whose row differs from what was last reported (a
  watcher that fell behind the kept log, or a new role holder, catches up from the rows);
- when the view goes stale, every member not ``left`` once as ``unknown`` (nobody on this
  host watches it any more), and each as the holder sees it once a holder writes again.

The role holder's process watches the same way, so every process reports the same
changes. Callbacks run on this thread; an exception in one is logged and counted and
does not stop delivery.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

from crdtstore.errors import Error
from crdtstore.membership import MemberStatus, StatusChange
from crdtstore.membership.observed import Observation, ViewStamp, staleness
from crdtstore.storage.member_view import LoggedChange, MemberViewStore

log = logging.getLogger(__name__)

Callback = Callable[[StatusChange], None]


class MemberWatchHandle:
    """Returned by ``Node.watch_members``; ``cancel()`` stops delivery (idempotent)."""

    def __init__(self, watcher: MemberWatcher, sub_id: int) -> None:
        self._watcher = watcher
        self._id = sub_id

    def cancel(self) -> None:
        self._watcher.unsubscribe(self._id)


class MemberWatcher:
    def __init__(
        self,
        directory: str,
        stats: Counter[str],
        interval_s: float,
        clock: Callable[[], int],
        holder_running: Callable[[int], bool],
    ) -> None:
        self._directory = directory
        self._stats = stats
        self._interval = interval_s
        self._clock = clock
        self._holder_running = holder_running
        self._store: MemberViewStore | None = None
        self._known: dict[str, tuple[MemberStatus, int]] = {}
        self._seq = 0
        self._subs: dict[int, Callback] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: Callback) -> MemberWatchHandle:
        with self._lock:
            sub_id = next(self._ids)
            self._subs[sub_id] = callback
            if self._thread is None:
                # What the view says now is the baseline: only later changes are reported.
                self.poll(self._clock())
                self._thread = threading.Thread(
                    target=self._run, name="crdtstore-member-watch", daemon=True
                )
                self._thread.start()
        return MemberWatchHandle(self, sub_id)

    def unsubscribe(self, sub_id: int) -> None:
        with self._lock:
            self._subs.pop(sub_id, None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._store is not None:
            self._store.close()
            self._store = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                changes = self.poll(self._clock())
            except Error as exc:
                self._stats["member_watch_errors"] += 1
                log.warning("member watch: %s (counted; retrying)", exc)
                continue
            with self._lock:
                callbacks = list(self._subs.values())
            for change in changes:
                for callback in callbacks:
                    try:
                        callback(change)
                    except Exception:  # a user's callback must not stop delivery
                        self._stats["member_watch_errors"] += 1
                        log.exception("member watcher %r failed (counted)", callback)

    def poll(self, now: int) -> list[StatusChange]:
        """The changes since the last poll (the first one's are what the view holds:
        ``subscribe`` takes them as its baseline, and reports none of them)."""
        store = self._open()
        stamp: ViewStamp | None = None
        rows: dict[str, Observation] = {}
        logged: list[LoggedChange] = []
        if store is not None:
            self._seq, logged = store.changes_after(self._seq)
            stamp, rows = store.read()
        stale = staleness(stamp, now, self._holder_running) is not None
        if stale and store is not None and store.replaced():
            self._store = None  # a holder replaced a damaged file: open the new one next time
            store.close()
        out: list[StatusChange] = []
        for c in logged:
            self._report(out, c.node_id, c.new, c.incarnation)
        if stale:
            for node_id, (status, incarnation) in list(self._known.items()):
                if status is not MemberStatus.LEFT:
                    self._report(out, node_id, MemberStatus.UNKNOWN, incarnation)
        else:
            for node_id, seen in rows.items():
                self._report(out, node_id, seen.status, seen.incarnation)
        return out

    def _report(
        self, out: list[StatusChange], node_id: str, new: MemberStatus, incarnation: int
    ) -> None:
        known = self._known.get(node_id)
        old = None if known is None else known[0]
        if old is not new:
            out.append(StatusChange(node_id, old, new, incarnation))
        self._known[node_id] = (new, incarnation)

    def _open(self) -> MemberViewStore | None:
        if self._store is None:
            self._store = MemberViewStore.open_existing(self._directory, self._stats)
            if self._store is not None:
                # Logged before this handle existed: the rows already say it.
                self._seq = max(self._seq, self._store.last_seq())
        return self._store


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
