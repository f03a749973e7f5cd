"""Anti-entropy of the member table between neighbours.

Design choices, each made after a simulated run showed the problem:
- Anti-entropy compares table digests, then per-bucket hashes, then ships only the
  entries of the buckets that differ: a difference that is only an update in flight
  costs a kilobyte or two at 1,000 members, not the whole table (60 kB) each way.
- A new link is synchronised by the side that asked for it only, one exchange at a
  time per node: a joiner takes the table from its first neighbour, and its next ones
  find it equal, instead of five whole tables arriving at once in both directions.
- Entries learned from a table exchange are flooded on only when they change what this
  node knew of a member (a refutation, a death); members it had never heard of are not
  news to its neighbours, who hold the same table. Otherwise every joiner re-flooded
  the whole table it had just been given.

Invariants: an exchange costs one digest until the tables differ; the side that starts
it picks the granularity, the other folds to it (:mod:`crdtstore.membership.table`);
a reply is never answered again, so an exchange ends after at most four messages; at
most one exchange with a new neighbour is started per ``table_exchange_ms``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from crdtstore.membership.commands import Command, Send
from crdtstore.membership.protocol_settings import ProtocolSettings
from crdtstore.membership.table import MemberTable, granularity_for
from crdtstore.membership.wire import TableBuckets, TableDigest, TableSync, Update

Absorb = Callable[[tuple[Update, ...], int, str], list[Command]]
"""Take a table exchange's entries from a sender (passing on only what is news)."""


class TableExchange:
    def __init__(
        self,
        table: MemberTable,
        settings: ProtocolSettings,
        stats: Counter[str],
        absorb: Absorb,
        now_ms: int,
    ) -> None:
        self._table = table
        self._settings = settings
        self._stats = stats
        self._absorb = absorb
        self._queue: dict[str, None] = {}
        """New neighbours this node asked for, whose tables it has yet to compare."""
        self._free_at = now_ms

    def digest(self) -> TableDigest:
        return TableDigest(self._table.digest, len(self._table))

    def due(self) -> int | None:
        """When the next exchange with a new neighbour may start (None: none queued)."""
        return self._free_at if self._queue else None

    def start(self, node_id: str, now_ms: int) -> None:
        """Compare tables with ``node_id``, a new neighbour this node asked for."""
        self._queue[node_id] = None
        # Due now at the earliest: a deadline long past would read as a tick that ran
        # late (see crdtstore.membership.health).
        self._free_at = max(self._free_at, now_ms)

    def on_message(
        self, sender: str, msg: TableDigest | TableBuckets | TableSync, now_ms: int
    ) -> list[Command]:
        """Digest -> bucket hashes -> entries of the differing buckets -> what differs
        back: each step only when the previous one found a difference."""
        table = self._table
        if isinstance(msg, TableDigest):
            if msg.digest == table.digest:
                return []
            granularity = granularity_for(max(msg.count, len(table)))
            return [Send(sender, TableBuckets(table.folded(granularity)))]
        if isinstance(msg, TableBuckets):
            granularity = len(msg.hashes)
            buckets = table.differing(granularity, msg.hashes)
            if not buckets:
                return []
            entries = table.in_buckets(granularity, buckets)
            return [Send(sender, TableSync(entries, False, granularity, buckets))]
        self._stats["table_entries_received"] += 1
        out = self._absorb(msg.entries, now_ms, sender)
        if msg.reply:
            return out
        theirs = {u.node_id: (u.status, u.incarnation) for u in msg.entries}
        mine = table.in_buckets(msg.granularity, msg.buckets)
        differ = tuple(u for u in mine if theirs.get(u.node_id) != (u.status, u.incarnation))
        if differ:
            out.append(Send(sender, TableSync(differ, True, msg.granularity, msg.buckets)))
        return out

    def next(self, now_ms: int) -> list[Command]:
        """Start the exchange with the next new neighbour queued."""
        # Sent even if the link is gone by now: a joiner evicted by its contact at once
        # (a full view) otherwise never got the table, and stayed with the few members
        # it met in an overlay component of its own.
        node_id = next(iter(self._queue))
        del self._queue[node_id]
        entry = self._table.get(node_id)
        if entry is None:
            return []
        self._free_at = now_ms + self._settings.table_exchange_ms
        return [Send(entry.contact, self.digest())]
