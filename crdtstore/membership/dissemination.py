"""Dissemination of membership updates: the flood to neighbours and the piggyback.

A change to the member table reaches the others two ways:
- flooded: queued for every neighbour but the one it came from, and sent at most
  ``gossip_interval_ms`` later, all of a neighbour's queued updates in one
  :class:`~crdtstore.membership.wire.Gossip` (a burst costs a few frames per neighbour,
  not one per update);
- piggybacked: a change to a known member (suspicion, death, leave, refutation,
  restart) also rides on the next ``retransmit_mult * ceil(log2(N + 1))`` probes and
  acks (:mod:`crdtstore.membership.retransmit`), which only repair losses of the flood.
  A member's first appearance (a join) is flooded once and left to anti-entropy if a
  copy is lost: no timer waits on a join, and piggybacking every join of a 1,000-node
  start kept every ping carrying joins for a minute after.

Invariants: a neighbour's queue holds one update per member (the latest queued); a
queue for a node that is no longer a neighbour is dropped unsent at the flush (the
table exchange with new neighbours covers it); ``due`` is set while anything is queued.
"""

from __future__ import annotations

import math

from crdtstore.membership.commands import Command, Send
from crdtstore.membership.overlay import Overlay
from crdtstore.membership.protocol_settings import ProtocolSettings
from crdtstore.membership.retransmit import RetransmitQueue
from crdtstore.membership.table import MemberTable
from crdtstore.membership.wire import MAX_UPDATES, Gossip, Update


class Dissemination:
    def __init__(self, overlay: Overlay, table: MemberTable, settings: ProtocolSettings) -> None:
        self._overlay = overlay
        self._table = table
        self._settings = settings
        self._retransmit = RetransmitQueue()
        self._out: dict[str, dict[str, Update]] = {}
        self.due: int | None = None
        """When the queued updates leave (None: nothing queued)."""

    def pending(self) -> int:
        """Updates still to be flooded or piggybacked (0 once this node has gone quiet)."""
        return len(self._retransmit) + sum(len(u) for u in self._out.values())

    def flood(self, update: Update, now_ms: int, source: str | None) -> None:
        """Queue ``update`` for every neighbour but ``source`` (it came from there)."""
        for neighbour in self._overlay.active:
            if neighbour != source:
                self._out.setdefault(neighbour, {})[update.node_id] = update
        if self._out and self.due is None:
            self.due = now_ms + self._settings.gossip_interval_ms

    def retransmit(self, update: Update) -> None:
        """Piggyback ``update`` on the next probes and acks (it changes a known member)."""
        self._retransmit.put(update, self._retransmits())

    def discard(self, node_id: str) -> None:
        self._retransmit.discard(node_id)

    def flush(self) -> list[Command]:
        out: list[Command] = []
        for neighbour, updates in self._out.items():
            contact = self._overlay.active.get(neighbour)
            if contact is None:
                continue  # no longer a neighbour: the table exchange with new ones covers it
            batch = list(updates.values())
            for i in range(0, len(batch), MAX_UPDATES):
                out.append(Send(contact, Gossip(tuple(batch[i : i + MAX_UPDATES]))))
        self._out.clear()
        self.due = None
        return out

    def piggyback(self, k: int | None = None) -> tuple[Update, ...]:
        return self._retransmit.take(self._settings.max_piggyback if k is None else k)

    def _retransmits(self) -> int:
        members = len(self._table)
        return self._settings.retransmit_mult * max(1, math.ceil(math.log2(members + 1)))
