"""The graceful leave: this node's record says it left, and peers confirm they have it.

The record is written as left, published like any write, and the node waits (bounded)
until its peers' digests show it, so the leave is not lost with frames still queued when
the node closes. Peers confirm through their digests (one digest interval, plus repair if
the publication was lost); peers that never confirm still see this node go dead, and get
the record by anti-entropy if it ever returns.

Invariants: the membership protocol is told before the record is written that a claim of
this node's leave is its own, not one to refute; the wait never exceeds ``timeout_s``;
the neighbours are told last, before the transport closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from crdtstore.membership import MEMBERS_NAMESPACE, MemberStatus
from crdtstore.network.records import OwnRecord
from crdtstore.sync.engine import SyncEngine

if TYPE_CHECKING:
    from crdtstore.overlay_liveness import OverlayLiveness


class Leave:
    """One node's leave: ``run`` on the closing thread, ``check`` on the replicator's."""

    def __init__(
        self,
        *,
        node_id: str,
        own: OwnRecord,
        engine: SyncEngine,
        liveness: OverlayLiveness,
        publish_soon: Callable[[], None],
        timeout_s: float,
    ) -> None:
        """``publish_soon()`` wakes the replicator to publish the record's write."""
        self.node_id = node_id
        self._own = own
        self._engine = engine
        self._liveness = liveness
        self._publish_soon = publish_soon
        self._timeout_s = timeout_s
        self._leaving = threading.Event()
        self._confirmed = threading.Event()

    def run(self) -> None:
        """Write the record as left, wait for peers to confirm it, tell the neighbours."""
        self._liveness.prepare_leave()
        self._own.change(left=True)
        self._leaving.set()
        self._publish_soon()
        self._confirmed.wait(timeout=self._timeout_s)
        self._liveness.leave()

    def check(self) -> None:
        """On the replicator's thread, after each turn: confirm the leave once it reached
        the peers (the engine's state is that thread's)."""
        if self._leaving.is_set() and self._reached_peers():
            self._confirmed.set()

    def _reached_peers(self) -> bool:
        """Whether this node's record as left is known to a peer that will pass it on:
        every sync peer's digest shows it, and there is such a peer unless no other
        member is alive. With no sync peer yet (a leave right after joining), "every
        peer" held at once, the node closed, and its leave was lost with the frames
        still queued: the others saw it dead, never left (seen: 1 leave in 6)."""
        if not self._engine.peers_caught_up(MEMBERS_NAMESPACE):
            return False
        if self._engine.peers:
            return True
        live = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
        known = self._liveness.known()
        return not any(self._liveness.status(n) in live for n in known if n != self.node_id)
