"""Member records: this node's own, and the replicated records of the others.

Every member's addresses, topics, key and incarnation are the replicated ``__members``
namespace, which every node holds and repairs like any other. :class:`MemberRecords` reads
it (again only when the directory committed since), tells the membership protocol of each
life it has not told yet, and prunes a member dead or gone longer than
``prune_after_ms``. A hello carries its sender's record too: kept as *introduced* while
the replicated record is older or absent, so a member that restarts (or rejoins after a
leave) is known at its new life from its first hello, and a member whose record this node
refuses (stamped by a clock too far ahead) is still listed.

Invariants: this node's own record is written to the replica before it is held
(:class:`OwnRecord`), and its incarnation never goes down: an older life that wrote a
higher one is outranked at the next read. The records and the introduced ones are changed
on the replicator's thread only, under ``lock``, which ``members()`` reads them under from
other threads.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crdtstore.membership import MemberRecord, MemberStatus
from crdtstore.membership.observed import observed_members
from crdtstore.membership.view import Member, parse_records

if TYPE_CHECKING:
    from crdtstore.network.clock_watch import ClockView
    from crdtstore.overlay_liveness import OverlayLiveness


class OwnRecord:
    """This node's member record, as last written (None before the node starts)."""

    def __init__(self, write: Callable[[MemberRecord], None]) -> None:
        self._write = write
        self.record: MemberRecord | None = None

    def set(self, record: MemberRecord) -> None:
        self.record = record
        self._write(record)

    def change(self, **changes: Any) -> None:
        """Write the record with ``changes`` (a new incarnation, a leave)."""
        assert self.record is not None  # callers check: no change before the start
        self.set(dataclasses.replace(self.record, **changes))


class MemberRecords:
    """The replicated member records as this node last read them, the records hellos
    introduced, and what the membership protocol was told of each."""

    def __init__(
        self,
        *,
        node_id: str,
        replica: Any,
        read_records: Callable[[], dict[str, Any]],
        delete_record: Callable[[str], None],
        own: OwnRecord,
        liveness: OverlayLiveness,
        prune_after_ms: int,
        stats: Counter[str],
    ) -> None:
        """``replica``: its ``last_commit()`` tells whether the records can have changed."""
        self.node_id = node_id
        self._replica = replica
        self._read = read_records
        self._delete = delete_record
        self._own = own
        self._liveness = liveness
        self._prune_after_ms = prune_after_ms
        self._stats = stats
        self.lock = threading.Lock()
        self._records: dict[str, MemberRecord] = {}
        self._read_at: int | None = None  # the directory's last commit then
        # Records hellos brought, of lives newer than the replicated record (or with none).
        self._introduced: dict[str, MemberRecord] = {}
        # The life (incarnation, left) of each record told the protocol.
        self._learned: dict[str, tuple[int, bool]] = {}

    def get(self, node_id: str) -> MemberRecord | None:
        """``node_id``'s replicated record, as last read."""
        return self._records.get(node_id)

    def recorded(self, node_id: str) -> bool:
        """Whether ``node_id`` has a replicated record (as last read)."""
        return node_id in self._records

    def best(self, node_id: str) -> MemberRecord | None:
        """The replicated record, else the one a hello introduced."""
        return self._records.get(node_id) or self._introduced.get(node_id)

    def names(self, node_id: str) -> bool:
        """Whether ``node_id`` is a member's, recorded or introduced."""
        return node_id in self._records or node_id in self._introduced

    def load(self) -> dict[str, MemberRecord]:
        """The replicated member records; this node's own, if an older life of it wrote a
        higher incarnation (clock of restarts), is raised above."""
        commit = self._replica.last_commit()
        if commit == self._read_at:
            return self._records  # nothing was written since they were read
        records, rejected = parse_records(self._read())
        self._stats["rejected_member_record"] += rejected
        with self.lock:
            self._records = records
        self._read_at = commit
        own = records.get(self.node_id)
        mine = self._own.record
        if own is not None and mine is not None and own.incarnation > mine.incarnation:
            self._own.change(incarnation=self._liveness.raise_incarnation(own.incarnation + 1))
        return records

    def introduce(self, record: MemberRecord) -> None:
        """Keep the record a hello brought while the replicated one is older, or absent
        (it may never be applied here: stamped by a clock too far ahead)."""
        held = self._records.get(record.node_id)
        known = self._introduced.get(record.node_id)
        if (held is None or held.incarnation < record.incarnation) and (
            known is None or known.incarnation <= record.incarnation
        ):
            with self.lock:
                self._introduced[record.node_id] = record

    def refresh(self, now: int) -> dict[str, MemberRecord]:
        """Tell the protocol of members (it connects to its neighbours itself); a member
        dead or gone longer than ``prune_after_ms`` loses its record. The records read."""
        overlay = self._liveness
        records = self.load()
        for node_id, record in records.items():
            if node_id == self.node_id:
                continue
            # A leave keeps its incarnation: told too, as gossip of it may have been lost.
            life = (record.incarnation, record.left)
            if life != self._learned.get(node_id):
                self._learned[node_id] = life
                overlay.learn(record, now)
            status = overlay.status(node_id)
            if status in (MemberStatus.DEAD, MemberStatus.LEFT) or record.left:
                since = overlay.last_heard_ms(node_id) or record.started_at_ms
                if now - since > self._prune_after_ms:
                    self._delete(node_id)
                    self._learned.pop(node_id, None)
                    self._stats["members_pruned"] += 1
        return records

    def members(self, clocks: ClockView, now: int) -> list[Member]:
        """Every member as this node shows it (``node.members()``); from any thread."""
        with self.lock:
            records = dict(self._records)
            introduced = dict(self._introduced)
        judgement, offsets, _ = clocks
        observations = self._liveness.observations()
        for node_id, record in introduced.items():
            # Shown once that life is heard (by the protocol), as a record is once read.
            held = records.get(node_id)
            seen = observations.get(node_id)
            heard = 0 if seen is None else seen.incarnation
            if (
                held is None or held.incarnation < record.incarnation
            ) and heard >= record.incarnation:
                records[node_id] = record
        for node_id, contact in self._liveness.contacts().items():
            seen = observations.get(node_id)
            if seen is not None and node_id not in records:
                # Known to the overlay only: a non-neighbour (no hello) whose record has
                # not arrived, or is refused here (stamped by a clock too far ahead),
                # listed with its status and clock as a neighbour is from its hello; a
                # member killed before its record spread is seen dead. Its topics are not
                # known here (None). The protocol prunes it as this class prunes
                # records (prune_after_ms).
                records[node_id] = MemberRecord(
                    node_id=node_id,
                    router=contact.router,
                    pub=contact.pub,
                    topics=None,
                    public_key=contact.public_key,
                    incarnation=contact.incarnation,
                    started_at_ms=seen.since_ms,
                )
        own = self._own.record
        if own is not None:
            records[self.node_id] = own
        rows = observed_members(self.node_id, records, observations, now, stale=False)
        return [
            dataclasses.replace(
                m,
                clock_offset_ms=0 if m.is_self else offsets.get(m.node_id),
                clock_off=m.node_id in judgement.off,
            )
            for m in rows
        ]
