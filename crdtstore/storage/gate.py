"""A shared/exclusive gate between a process's LMDB transactions and map resizing.

LMDB's ``mdb_env_set_mapsize`` must run while this process has no transaction open (py-lmdb
invalidates every open one). Every transaction of an :class:`~.environment.Environment` is
therefore begun and finished inside ``enter``/``exit`` and a resize runs inside
``exclusive``. A waiting resize blocks new shared entries, so a stream of readers cannot
starve it. The gate is not reentrant: code holding it shared must not enter it again from
the same thread (reads inside a write transaction use that transaction instead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Gate:
    __slots__ = ("_active", "_cond", "_exclusive", "_lock")

    def __init__(self) -> None:
        # Readers take the bare lock (a C call): Condition.__enter__ is Python-level, and
        # every get enters the gate.
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

    def read_one(
        self,
        begin: Callable[[], Any],
        failed: Callable[[Exception, bytes], Any],
        key: bytes,
    ) -> Any:
        """``begin().get(key)`` in a transaction of its own (aborted after), inside the
        shared section; if that raises, ``failed(error, key)`` answers instead, called
        outside it (it may resize). The hot path of a read: the section's entry and exit
        are :meth:`enter` and :meth:`exit` inline (C calls, no frame of their own)."""
        lock = self._lock
        lock.acquire()
        if self._exclusive:  # a resize is waiting or running: wait for it
            lock.release()
            self.enter()
        else:
            self._active += 1
            lock.release()
        try:
            txn = begin()
            try:
                return txn.get(key)
            finally:
                txn.abort()
        except Exception as exc:
            error = exc
        finally:
            lock.acquire()
            self._active -= 1
            if not self._active and self._exclusive:
                self._cond.notify_all()
            lock.release()
        return failed(error, key)

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
