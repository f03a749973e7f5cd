"""How the sync engine's parts report what they refuse: counted always, logged sparingly.

Invariant: a rejection never raises out of the engine. Each one adds to the engine's
``stats`` under its reason, and is logged at most once per reason per
``log_interval_ms``, so a peer that keeps sending the same bad frame cannot flood the
log, while the count still shows every occurrence.

A local storage failure (:class:`~crdtstore.errors.StorageError`: the map or the disk
is full, an I/O error) is not a rejection: the input was not at fault and is not
refused, it could not be stored here, and repair fetches it again once it can be. It is
counted under :data:`LOCAL_STORAGE_FAILURES` and logged as an error naming the cause
(:meth:`Rejections.local_failure`), never as invalid input.
"""

from __future__ import annotations

import logging
from collections import Counter

LOCAL_STORAGE_FAILURES = "local_storage_failures"

log = logging.getLogger("crdtstore.sync.engine")
"""The protocol's one logger, whichever part of the engine speaks: operators filter on
its name, which every line a node logs carries, and it predates the parts."""


class Rejections:
    """Counts a rejection in ``stats``; logs it unless its reason was logged lately."""

    def __init__(
        self,
        node_id: str,
        stats: Counter[str],
        log_interval_ms: int,
        logger: logging.Logger = log,
        label: str = "sync",
    ) -> None:
        """``logger`` and ``label``: whose refusals these are (the membership protocol
        reports its own through the same rule, under its own logger)."""
        self._node_id = node_id
        self._stats = stats
        self._interval = log_interval_ms
        self._log = logger
        self._label = label
        self._last_logged: dict[str, int] = {}

    def __call__(self, reason: str, now_ms: int, detail: str) -> None:
        self._stats[reason] += 1
        last = self._last_logged.get(reason)
        if last is None or now_ms - last >= self._interval:
            self._last_logged[reason] = now_ms
            self._log.warning(
                "%s %s: %s (%s; %d so far)",
                self._label,
                self._node_id,
                reason,
                detail,
                self._stats[reason],
            )

    def local_failure(self, now_ms: int, what: str, exc: Exception) -> None:
        """``what`` (a batch, ranges, a log trim) could not be stored here: ``exc``."""
        stats, reason = self._stats, LOCAL_STORAGE_FAILURES
        stats[reason] += 1
        last = self._last_logged.get(reason)
        if last is None or now_ms - last >= self._interval:
            self._last_logged[reason] = now_ms
            self._log.error(
                "%s %s: local storage failure: %s not stored: %s (not the sender's fault: "
                "repair fetches it again; %d so far)",
                self._label,
                self._node_id,
                what,
                exc,
                stats[reason],
            )
