"""The background flush of a directory opened with ``durability="async"``.

Invariant: with async durability a commit is on disk at the latest ``flush_interval_ms``
after it returned (or when the replica closes), as long as the process lives. The thread
is owned by the replica that starts it, which stops it (and waits for it) before closing
the environment. A failed flush is counted and logged, and the next one is tried.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)


class Flusher:
    """Calls ``sync()`` every ``interval`` seconds until stopped."""

    def __init__(
        self, sync: Callable[[], None], interval: float, stats: Counter[str], path: Path
    ) -> None:
        self._sync = sync
        self._interval = interval
        self._stats = stats
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"crdtstore-flusher-{path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sync()
            except lmdb.Error:
                self._stats["flush_errors"] += 1
                log.exception("%s: background flush failed (counted)", self._path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
