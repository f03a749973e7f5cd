"""Failure detection with a suspicion stage (SWIM, with Lifeguard's local health).

A member is *alive* while heard from (any heartbeat) within the suspicion timeout; then
*suspect*; then *dead* once suspected for the dead timeout without being heard at a
newer incarnation. A dead member stays dead at its incarnation: only a heartbeat with a
higher incarnation (a restart, or the member refuting what it learned was said of it)
brings it back. That is what keeps a member that was merely paused from flapping: it
comes back deliberately, with a new incarnation, not by accident.

Lifeguard's point: a detector that is itself overloaded (its own ticks arrive late)
misreads its own slowness as everyone else's death. So each late tick raises a local
health score that stretches every timeout, and on-time ticks lower it again: the rule
of :mod:`crdtstore.membership.health`, which the overlay's protocol uses too.

No clock is read here: every input carries ``now_ms``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from crdtstore.membership.health import LocalHealth


class MemberStatus(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    UNKNOWN = "unknown"
    """Never a detector's verdict: what a process without the network role reports while
    the directory's copy of the detector's view is stale (``membership.observed``)."""


@dataclass(frozen=True, slots=True)
class StatusChange:
    node_id: str
    old: MemberStatus | None
    new: MemberStatus
    incarnation: int


@dataclass(slots=True)
class _Peer:
    incarnation: int
    status: MemberStatus
    last_heard_ms: int
    suspect_since_ms: int = 0
    since_ms: int = 0


@dataclass(slots=True)
class FailureDetector:
    suspect_after_ms: int = 3000
    dead_after_ms: int = 6000
    tick_interval_ms: int = 500
    max_local_health: int = 8
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _health: LocalHealth = field(init=False)

    def __post_init__(self) -> None:
        self._health = LocalHealth(
            self.max_local_health, self.tick_interval_ms, hold_ms=self.suspect_after_ms
        )

    @property
    def local_health(self) -> int:
        return self._health.level

    def status(self, node_id: str) -> MemberStatus | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.status

    def last_heard_ms(self, node_id: str) -> int | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.last_heard_ms

    def since_ms(self, node_id: str) -> int | None:
        """When ``node_id`` took its current status."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.since_ms

    def incarnation(self, node_id: str) -> int | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.incarnation

    def known(self) -> list[str]:
        return list(self._peers)

    def forget(self, node_id: str) -> None:
        self._peers.pop(node_id, None)

    def add(
        self, node_id: str, incarnation: int, now_ms: int, left: bool = False
    ) -> list[StatusChange]:
        """A member learned from the replicated member set (not yet heard directly)."""
        peer = self._peers.get(node_id)
        if peer is not None and incarnation < peer.incarnation:
            # A record of a past life: the member was heard since at a newer one, and
            # whatever that record says (left, its addresses) is over.
            return []
        if left:
            return self._set(node_id, incarnation, MemberStatus.LEFT, now_ms)
        if peer is None:
            # Give a member we only read about the full timeout to speak up.
            return self._set(node_id, incarnation, MemberStatus.ALIVE, now_ms)
        if incarnation > peer.incarnation:
            return self._set(node_id, incarnation, MemberStatus.ALIVE, now_ms)
        return []

    def heard(self, node_id: str, incarnation: int, now_ms: int) -> list[StatusChange]:
        """A heartbeat (or any authenticated message) from ``node_id``."""
        peer = self._peers.get(node_id)
        if peer is None or incarnation > peer.incarnation:
            return self._set(node_id, incarnation, MemberStatus.ALIVE, now_ms)
        if incarnation < peer.incarnation:
            return []  # a stale message from an earlier life
        if peer.status in (MemberStatus.DEAD, MemberStatus.LEFT):
            return []  # dead at this incarnation: only a higher one revives it
        peer.last_heard_ms = now_ms
        if peer.status is MemberStatus.SUSPECT:
            return self._set(node_id, incarnation, MemberStatus.ALIVE, now_ms)
        return []

    def tick(self, now_ms: int, io_stall_ms: int = 0) -> list[StatusChange]:
        """Judge every peer's silence at ``now_ms``. ``io_stall_ms``: how long this node's
        own I/O was held up since the previous tick (heartbeats sent meanwhile are still
        on their way in), which local health takes into account."""
        # The first tick has no earlier one to measure from: the transport's reading then
        # covers its start-up, and this detector has never counted it.
        self._health.tick(now_ms, None, io_stall_ms if self._health.ticked else 0)
        suspect_after = self._health.stretch(self.suspect_after_ms)
        dead_after = self._health.stretch(self.dead_after_ms)
        changes: list[StatusChange] = []
        for node_id, peer in list(self._peers.items()):
            silent = now_ms - peer.last_heard_ms
            if peer.status is MemberStatus.ALIVE and silent > suspect_after:
                changes += self._set(node_id, peer.incarnation, MemberStatus.SUSPECT, now_ms)
            elif (
                peer.status is MemberStatus.SUSPECT and now_ms - peer.suspect_since_ms > dead_after
            ):
                changes += self._set(node_id, peer.incarnation, MemberStatus.DEAD, now_ms)
        return changes

    def suspected(self) -> dict[str, int]:
        """Members this node suspects or holds dead, with the incarnation it holds for them."""
        return {
            n: p.incarnation
            for n, p in self._peers.items()
            if p.status in (MemberStatus.SUSPECT, MemberStatus.DEAD)
        }

    def refuted(self, now_ms: int) -> None:
        """This node learned that a peer suspects it. Lifeguard takes that as evidence of
        its own slowness too (its heartbeats reach others late, so theirs may reach it
        late): local health rises, and on-time ticks do not lower it again for one
        suspicion timeout."""
        self._health.raise_level(now_ms)

    def _set(
        self, node_id: str, incarnation: int, status: MemberStatus, now_ms: int
    ) -> list[StatusChange]:
        peer = self._peers.get(node_id)
        old = None if peer is None else peer.status
        if peer is None:
            peer = self._peers[node_id] = _Peer(incarnation, status, now_ms)
        if old is not status:
            peer.since_ms = now_ms
        peer.incarnation = incarnation
        if status is MemberStatus.ALIVE:
            peer.last_heard_ms = now_ms
        if status is MemberStatus.SUSPECT:
            peer.suspect_since_ms = now_ms
        peer.status = status
        if old is status:
            return []
        return [StatusChange(node_id, old, status, incarnation)]
