"""Network faults a test injects into one node, through the transport's fault seam.

A node gets faults only when a test builds it with some (``crdtstore.open(...,
faults=...)``, or ``python -m crdtstore.testing.serve`` for a node in its own process);
nothing in ``NodeSettings`` or the TOML file names them, so a production node cannot run
with one by mistake.

- *Loss*: a fraction of the node's own PUB frames (deltas, digests, have notices) is lost,
  chosen by a seeded rng so that a lossy run reproduces.
- *Partition*: a file of node ids, one a line; while a peer is listed, every frame to or
  from it is dropped. Tests rewrite the file to cut and heal a running cluster of
  processes; an absent file cuts nobody.

Rule (``transport.faults``): the transport calls these on its I/O thread once a frame, so
the file is read at most once per ``PARTITION_POLL_MS`` and the answer cached between.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from transport import FrameKind

log = logging.getLogger(__name__)

PARTITION_POLL_MS = 100
"""How often the partition file is read again: a cut takes effect within this."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Which faults one node runs with; ``build`` makes the object the transport calls."""

    partition_file: str | None = None
    """Path of the partition file (see the module docstring); None: never partitioned."""

    drop_publish_fraction: float = 0.0
    """Fraction of outgoing PUB frames lost, in [0, 1]."""

    drop_seed: int = 0
    """Seed of the rng that picks the lost frames."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_publish_fraction <= 1.0:
            raise ValueError(
                f"drop_publish_fraction={self.drop_publish_fraction!r} must be in [0, 1]"
            )
        if self.partition_file is not None and not self.partition_file:
            raise ValueError("partition_file must be a non-empty path or None")

    def args(self) -> list[str]:
        """The flags of ``python -m crdtstore.testing.serve`` that install these faults."""
        flags = [
            "--drop-publish-fraction",
            repr(self.drop_publish_fraction),
            "--drop-seed",
            str(self.drop_seed),
        ]
        if self.partition_file is not None:
            flags += ["--partition-file", self.partition_file]
        return flags

    def build(self, now_ms: Callable[[], float] | None = None) -> InjectedFaults:
        return InjectedFaults(self, now_ms or _monotonic_ms)


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


class InjectedFaults:
    """A :class:`transport.TransportFaults` made from a :class:`FaultSpec`."""

    def __init__(self, spec: FaultSpec, now_ms: Callable[[], float]) -> None:
        self.spec = spec
        self._rng = random.Random(spec.drop_seed)
        self._now_ms = now_ms
        self._blocked: frozenset[bytes] = frozenset()
        self._next_poll_ms = float("-inf")

    def drop_outgoing(self, kind: FrameKind) -> bool:
        fraction = self.spec.drop_publish_fraction
        return kind == "publish" and fraction > 0.0 and self._rng.random() < fraction

    def blocked_peers(self) -> frozenset[bytes]:
        path = self.spec.partition_file
        if path is None:
            return self._blocked
        now = self._now_ms()
        if now >= self._next_poll_ms:
            self._next_poll_ms = now + PARTITION_POLL_MS
            blocked = frozenset(line.strip().encode() for line in _lines(path) if line.strip())
            if blocked != self._blocked:
                log.warning(
                    "test partition: dropping all traffic with %s",
                    sorted(p.decode() for p in blocked) or "-",
                )
            self._blocked = blocked
        return self._blocked


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readlines()
    except FileNotFoundError:
        return []
