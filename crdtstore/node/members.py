"""``node.members()`` and ``node.watch_members()`` in a process without the network role.

Such a process has no failure detector of its own: it reads the one of the process holding
the directory's role, which keeps its view in the directory
(:mod:`crdtstore.storage.member_view`). Invariants:

- No member but this node is ever claimed alive from a stale view (no holder, or one that
  stopped writing): each reads ``unknown``, and the view says why it is stale.
- The view file and the member-watch thread are opened by first use, at most one of each
  per node, and both are closed by :meth:`DirectoryMembers.close`; the watch thread is
  stopped outside the lock, since a callback of its may be reading ``members()``.
- A holder that replaced a damaged view file is followed: the old file is closed and the
  new one read from the next call on.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from crdtstore.membership import StatusChange
from crdtstore.membership.observed import (
    MemberView,
    Observation,
    ViewStamp,
    observed_members,
    staleness,
)
from crdtstore.membership.view import Member, parse_records
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.storage.member_watch import MemberWatcher, MemberWatchHandle, pid_running


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DirectoryMembers:
    """The directory's member view, read as the role holder's detector left it."""

    def __init__(self, path: str, stats: Counter[str], poll_interval_s: float) -> None:
        self._path = path
        self._stats = stats
        self._poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._view: MemberViewStore | None = None
        self._watcher: MemberWatcher | None = None

    def view(
        self,
        node_id: str,
        topics: tuple[str, ...] | None,
        read_records: Callable[[], dict[str, Any]],
        now: int,
    ) -> MemberView:
        """Every member with the status the holder's detector gave it (``unknown`` when
        its view is stale); ``node_id`` included, as a cluster of one if never networked."""
        stamp, observations, stale = self._read(now)
        records, rejected = parse_records(read_records())
        self._stats["rejected_member_record"] += rejected
        observed_at = None if stamp is None else stamp.written_at_ms
        members = observed_members(node_id, records, observations, observed_at, stale is not None)
        if not any(m.is_self for m in members):
            # Never networked: the node is a cluster of one, with no addresses yet.
            me = Member(node_id, "alive", 0, "", "", topics, None, 0, None, True)
            members = sorted([*members, me], key=lambda m: m.node_id)
        return MemberView(
            members,
            stale,
            None if stamp is None else stamp.pid,
            None if stamp is None else stamp.router,
            observed_at,
        )

    def _read(self, now: int) -> tuple[ViewStamp | None, dict[str, Observation], str | None]:
        """The directory's member view: stamp, rows, and why it is stale (or None)."""
        with self._lock:
            if self._view is None:
                self._view = MemberViewStore.open_existing(self._path, self._stats)
            view = self._view
            if view is None:
                return None, {}, staleness(None, now, pid_running)
            stamp, observations = view.read()
            stale = staleness(stamp, now, pid_running)
            if stale is not None and view.replaced():
                # A new holder replaced a damaged file: read the new one from now on.
                view.close()
                self._view = None
            return stamp, observations, stale

    def watch(self, callback: Callable[[StatusChange], None]) -> MemberWatchHandle:
        """Subscribe ``callback`` to the member-watch thread (started by the first call)."""
        with self._lock:
            if self._watcher is None:
                self._watcher = MemberWatcher(
                    self._path, self._stats, self._poll_interval_s, wall_ms, pid_running
                )
            watcher = self._watcher
        return watcher.subscribe(callback)

    def close(self) -> None:
        """Stop the watch thread and close the view file. Idempotent."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
            view, self._view = self._view, None
        if watcher is not None:  # outside the lock: a callback may read members()
            watcher.stop()
        if view is not None:
            view.close()
