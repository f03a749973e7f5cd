"""A shared/exclusive gate between a process's LMDB transactions and map resizing.

LMDB's ``mdb_env_set_mapsize`` must run while this process has no transaction open (py-lmdb
invalidates every open one). Every transaction of an :class:`LMDBReplica` is therefore
begun and finished inside ``shared`` and a resize runs inside ``exclusive``. A waiting
resize blocks new shared entries, so a stream of readers cannot starve it. The gate is
not reentrant: code holding it shared must not enter it again from the same thread
(reads inside a write transaction use that transaction instead).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    __slots__ = ("_active", "_cond", "_exclusive", "_lock")

    def __init__(self) -> None:
        # Readers take the bare lock (a C call): Condition.__enter__ is Python-level and
        # would double the cost of every get.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._exclusive = False

    def enter(self) -> None:
        with self._lock:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def exit(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._exclusive:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
