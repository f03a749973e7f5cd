"""The member table: every member's status and incarnation, with SWIM's precedence.

Invariants:
- ``digest`` is the XOR of every entry's hash and ``bucket_hashes[b]`` the XOR of the
  hashes of the entries in fine bucket ``b``, kept up to date on every change (O(1)), so
  comparing two tables costs one integer until they differ, and finding where they
  differ costs one hash per bucket, never a pass over N members.
- A member's bucket depends on its node id alone (not its status), so both sides of an
  exchange put it in the same bucket. Coarser bucketings (``granularity`` a power of two
  up to :data:`FINE_BUCKETS`) are XOR-folds of the fine one: the side that starts an
  exchange picks a granularity for its table's size and the other folds to it.
- ``suspects`` and ``dead`` index the entries at those statuses, and ``_ids`` is a list
  beside the dict (swap-remove), so the periodic tasks (dead timers, reconnects, random
  live members for the overlay) cost O(1) or O(suspects), never O(N) per tick: a
  1,000-node cluster was spending most of its time in such scans.
- Indexes are dicts, not sets: their order is insertion order, so a run replays from
  its seed whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from crdtstore.membership.wire import MAX_BUCKETS, Contact, Status, Update

FINE_BUCKETS = MAX_BUCKETS
ENTRIES_PER_BUCKET = 16
"""Aim of an exchange's granularity: a transient difference (one update still in flight)
then costs the bucket hashes and about this many entries, not the whole table."""


def supersedes(new: Status, new_inc: int, old: Status, old_inc: int) -> bool:
    """SWIM's precedence: does an update (new, new_inc) override (old, old_inc)?

    It is the lexicographic order of (incarnation, status) with alive < suspect < dead
    < left: a total order, so every table that has seen the same updates, in any order,
    holds the same entry (the property membership agreement rests on)."""
    return new_inc > old_inc or (new_inc == old_inc and new > old)


def entry_hash(node_id: str, status: Status, incarnation: int) -> int:
    h = hashlib.blake2b(f"{node_id}\x00{int(status)}\x00{incarnation}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def fine_bucket(node_id: str) -> int:
    return hashlib.blake2b(node_id.encode(), digest_size=1).digest()[0] % FINE_BUCKETS


def granularity_for(count: int) -> int:
    """The power of two of buckets an exchange over ``count`` entries uses."""
    g = 1
    while g < FINE_BUCKETS and g * ENTRIES_PER_BUCKET < count:
        g *= 2
    return g


@dataclass(slots=True)
class Entry:
    update: Update
    """The update this entry holds (kept, not rebuilt: a table exchange sends them)."""
    since_ms: int
    bucket: int
    hash: int

    @property
    def contact(self) -> Contact:
        return self.update.contact

    @property
    def status(self) -> Status:
        return self.update.status


class MemberTable:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self.digest = 0
        self.bucket_hashes = [0] * FINE_BUCKETS
        self.suspects: dict[str, None] = {}
        self.dead: dict[str, None] = {}

    # -- mapping ---------------------------------------------------------------------------

    def get(self, node_id: str) -> Entry | None:
        return self._entries.get(node_id)

    def __getitem__(self, node_id: str) -> Entry:
        return self._entries[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, Entry]]:
        return iter(self._entries.items())

    def values(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    # -- changes ---------------------------------------------------------------------------

    def set(self, update: Update, now_ms: int) -> None:
        contact, status = update.contact, update.status
        node_id = contact.node_id
        old = self._entries.get(node_id)
        if old is None:
            bucket = fine_bucket(node_id)
            self._pos[node_id] = len(self._ids)
            self._ids.append(node_id)
        else:
            bucket = old.bucket
            self._unhash(old)
        h = entry_hash(node_id, status, contact.incarnation)
        self._entries[node_id] = Entry(update, now_ms, bucket, h)
        self.digest ^= h
        self.bucket_hashes[bucket] ^= h
        for index, wanted in ((self.suspects, Status.SUSPECT), (self.dead, Status.DEAD)):
            if status is wanted:
                index[node_id] = None
            else:
                index.pop(node_id, None)

    def remove(self, node_id: str) -> Entry | None:
        entry = self._entries.pop(node_id, None)
        if entry is None:
            return None
        self._unhash(entry)
        self.suspects.pop(node_id, None)
        self.dead.pop(node_id, None)
        pos = self._pos.pop(node_id)
        last = self._ids.pop()
        if last != node_id:
            self._ids[pos] = last
            self._pos[last] = pos
        return entry

    def _unhash(self, entry: Entry) -> None:
        self.digest ^= entry.hash
        self.bucket_hashes[entry.bucket] ^= entry.hash

    # -- exchanges -------------------------------------------------------------------------

    def folded(self, granularity: int) -> tuple[int, ...]:
        out = [0] * granularity
        mask = granularity - 1
        for b, h in enumerate(self.bucket_hashes):
            out[b & mask] ^= h
        return tuple(out)

    def differing(self, granularity: int, theirs: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(b for b, h in enumerate(self.folded(granularity)) if h != theirs[b])

    def in_buckets(self, granularity: int, buckets: tuple[int, ...]) -> tuple[Update, ...]:
        """Entries in the given coarse buckets (all of them when ``granularity`` is 0)."""
        if granularity == 0:
            return tuple(e.update for e in self._entries.values())
        mask = granularity - 1
        wanted = set(buckets)
        return tuple(e.update for e in self._entries.values() if e.bucket & mask in wanted)

    # -- sampling --------------------------------------------------------------------------

    def random_with(
        self, rng: random.Random, status: Status, exclude: str, tries: int = 8
    ) -> Contact | None:
        """A random member at ``status`` other than ``exclude``, in O(tries): live
        members are the vast majority, so a few draws find one (None if unlucky)."""
        ids = self._ids
        if not ids:
            return None
        for _ in range(tries):
            update = self._entries[ids[int(rng.random() * len(ids))]].update
            if update.status is status and update.contact.node_id != exclude:
                return update.contact
        return None
