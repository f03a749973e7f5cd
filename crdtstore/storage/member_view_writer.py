"""The thread that writes the role holder's member view into the directory.

The overlay's thread decides who is alive; processes without the network role read what
it decided from the directory (:class:`~crdtstore.storage.member_view.MemberViewStore`).
The view is written at once on every status change and at least every
``member_view_interval_ms`` otherwise, by a thread of its own: a write to a file may wait
(the kernel throttles a process that dirties pages while the disk is busy with another's
fsyncs), and a probe's answer must not.

Invariants: one write at a time, in order (``_lock``); each write is the whole view as
of one snapshot, with the status changes not logged yet, in the order they were made; a
failed write is counted and logged once, and detection goes on (readers elsewhere see
the view go stale); the last write, at close, says the holder stopped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable

from crdtstore.errors import Error
from crdtstore.membership import StatusChange
from crdtstore.membership.observed import Observation, ViewStamp
from crdtstore.storage.member_view import MemberViewStore

# The overlay's voice, as before this module was split out of it: log filters name it.
log = logging.getLogger("crdtstore.overlay_liveness")

Snapshot = Callable[[], tuple[dict[str, Observation], list[StatusChange]]]
"""The observations now, and the status changes made since the last snapshot."""


class MemberViewWriter:
    """Writes one holder's view: ``start`` its thread, ``changed()`` on a status change."""

    def __init__(
        self,
        *,
        node_id: str,
        view: MemberViewStore | None,
        interval_ms: int,
        snapshot: Snapshot,
        clock: Callable[[], int],
        stats: Counter[str],
    ) -> None:
        """``view`` None: nothing is written (a node with no directory view)."""
        self.node_id = node_id
        self._view = view
        self._interval = interval_ms
        self._snapshot = snapshot
        self._clock = clock
        self._stats = stats
        self.router: str | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._due = threading.Event()  # a status change waits to be written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-member-view-{self.node_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, then write the view once more, saying the holder stopped."""
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._write(self._clock(), stopped=True)

    def changed(self) -> None:
        """A status change was made: write the view at once."""
        self._due.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait_ms = max(0, self._next - self._clock())
            self._due.wait(timeout=wait_ms / 1000)
            if self._stop.is_set():
                return
            try:
                self.write_if_due(self._clock())
            except Exception:  # a bug here must not end the view's updates
                self._stats["liveness_errors"] += 1
                log.exception("overlay: member view error (counted, continuing)")

    def write_if_due(self, now: int) -> None:
        """Write the view if a status change waits, or an interval passed since the last
        write (what the thread does each time it wakes)."""
        if self._due.is_set() or now >= self._next:
            self._due.clear()
            self._next = now + self._interval
            self._write(now)

    def _write(self, now: int, stopped: bool = False) -> None:
        """Write the whole view, and log the changes not logged yet in the order the
        protocol made them."""
        if self._view is None:
            return
        with self._lock:
            observations, changes = self._snapshot()
            stamp = ViewStamp(os.getpid(), self.node_id, self.router, now, self._interval, stopped)
            logged = [(c.node_id, c.old, c.new, c.incarnation) for c in changes]
            try:
                self._view.write(stamp, observations, logged)
            except Error as exc:
                # Readers elsewhere see the view go stale; detection here goes on.
                self._stats["member_view_write_errors"] += 1
                if self._stats["member_view_write_errors"] == 1:
                    log.error("%s (counted; failure detection continues)", exc)
                return
            self._stats["member_view_writes"] += 1
