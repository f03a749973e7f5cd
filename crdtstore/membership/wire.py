"""The overlay's and the failure detector's messages, and their wire form.

They share the sync engine's envelope (``[version, kind, *fields]``, strict decoding,
registered kinds) and travel on the membership channel, node to node. Every count is
bounded: a list longer than its limit is refused whole, so a hostile peer cannot make a
node allocate more than a few hundred kilobytes for one message.

Clock readings. A ping carries its sender's clock, and an ack the probed member's
(:mod:`crdtstore.membership.clocks` estimates offsets from them, for every member a node
probes or is probed by, neighbour or not). Both are fields appended to the forms of the
nodes before them, which read a message by exact count and refuse the longer form: a
peer not yet known to read them is sent both forms, the longer first, as hellos are
(:mod:`crdtstore.membership.versions`); see the protocol's notes.

A :class:`Contact` is how a node reaches another before (or without) its replicated
record: its addresses, key and the incarnation the contact was taken at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.codec import MAX_SEQ, expect, expect_int, expect_list, expect_replica
from crdtstore.errors import DecodeError
from crdtstore.sync.messages import register

MAX_ADDRESS_LEN = 512
MAX_KEY_LEN = 64
MAX_CONTACTS = 64
"""Contacts in one shuffle, join or forward-join: views are far smaller than this."""
MAX_UPDATES = 256
"""Status updates piggybacked on one message."""
MAX_TABLE = 100_000
"""Entries of one member-table exchange (a whole cluster's statuses)."""
MAX_TTL = 32
MAX_CLOCK_MS = MAX_SEQ
"""Bound of a clock reading (as a hello's): any reading minus another fits an offset."""
MAX_BUCKETS = 256
"""Buckets of one table comparison (a power of two): see :mod:`crdtstore.membership.table`."""


class Status(enum.IntEnum):
    """What a member table says of a member. At one incarnation a later entry in this
    order overrides an earlier one (SWIM's rule), and a higher incarnation overrides all
    but ``LEFT`` and ``DEAD`` of a higher-or-equal one."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


def _address(obj: Any, what: str) -> str:
    addr: str = expect(obj, str, what)
    if not addr or len(addr) > MAX_ADDRESS_LEN:
        raise DecodeError(f"{what}: length outside [1, {MAX_ADDRESS_LEN}]")
    return addr


@dataclass(frozen=True, slots=True)
class Contact:
    node_id: str
    router: str
    pub: str
    public_key: str | None
    incarnation: int

    def to_wire(self) -> list[Any]:
        return [self.node_id, self.router, self.pub, self.public_key, self.incarnation]

    @classmethod
    def from_wire(cls, obj: Any) -> Contact:
        node_id, router, pub, key, incarnation = expect_list(obj, "contact", 5)
        if key is not None:
            key = expect(key, str, "public key")
            if len(key) > MAX_KEY_LEN:
                raise DecodeError("contact: public key too long")
        return cls(
            expect_replica(node_id, "contact node id"),
            _address(router, "contact router"),
            _address(pub, "contact pub"),
            key,
            expect_int(incarnation, "contact incarnation"),
        )


def _clock(obj: Any, what: str) -> int:
    """A clock reading: milliseconds since the epoch, as the sender's clock has it."""
    return expect_int(obj, what, 0, MAX_CLOCK_MS)


def _contacts(obj: Any, what: str, limit: int = MAX_CONTACTS) -> tuple[Contact, ...]:
    items = expect_list(obj, what)
    if len(items) > limit:
        raise DecodeError(f"{what}: {len(items)} contacts (limit {limit})")
    return tuple(Contact.from_wire(c) for c in items)


@dataclass(frozen=True, slots=True)
class Update:
    """``contact``'s member is ``status`` at ``contact.incarnation``."""

    contact: Contact
    status: Status

    @property
    def node_id(self) -> str:
        return self.contact.node_id

    @property
    def incarnation(self) -> int:
        return self.contact.incarnation

    def to_wire(self) -> list[Any]:
        return [int(self.status), *self.contact.to_wire()]

    @classmethod
    def from_wire(cls, obj: Any) -> Update:
        items = expect_list(obj, "update", 6)
        status = expect_int(items[0], "update status", 0, len(Status) - 1)
        return cls(Contact.from_wire(items[1:]), Status(status))


def _updates(obj: Any, what: str, limit: int = MAX_UPDATES) -> tuple[Update, ...]:
    items = expect_list(obj, what)
    if len(items) > limit:
        raise DecodeError(f"{what}: {len(items)} updates (limit {limit})")
    return tuple(Update.from_wire(u) for u in items)


# -- HyParView -------------------------------------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class Join:
    """To a contact (a seed): take me into your active view and walk my contact."""

    KIND: ClassVar[str] = "ov_join"
    joiner: Contact
    versions: tuple[int, ...] = (2,)

    def to_wire(self) -> list[Any]:
        return [self.joiner.to_wire(), list(self.versions)]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Join:
        joiner, versions = expect_list(fields, "join", 2)
        return cls(Contact.from_wire(joiner), _versions(versions))


def _versions(obj: Any) -> tuple[int, ...]:
    items = expect_list(obj, "versions")
    if not 1 <= len(items) <= 16:
        raise DecodeError("versions: between 1 and 16 expected")
    return tuple(expect_int(v, "version", 1, 1 << 16) for v in items)


@register
@dataclass(frozen=True, slots=True)
class ForwardJoin:
    KIND: ClassVar[str] = "ov_fwd_join"
    joiner: Contact
    ttl: int

    def to_wire(self) -> list[Any]:
        return [self.joiner.to_wire(), self.ttl]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> ForwardJoin:
        joiner, ttl = expect_list(fields, "forward join", 2)
        return cls(Contact.from_wire(joiner), expect_int(ttl, "ttl", 0, MAX_TTL))


@register
@dataclass(frozen=True, slots=True)
class Neighbor:
    """Ask to become a symmetric neighbour. ``high``: the sender has no neighbour left
    and must be taken (the receiver evicts one if full)."""

    KIND: ClassVar[str] = "ov_neighbor"
    sender: Contact
    high: bool

    def to_wire(self) -> list[Any]:
        return [self.sender.to_wire(), self.high]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Neighbor:
        sender, high = expect_list(fields, "neighbor", 2)
        return cls(Contact.from_wire(sender), expect(high, bool, "priority"))


@register
@dataclass(frozen=True, slots=True)
class NeighborReply:
    KIND: ClassVar[str] = "ov_neighbor_reply"
    sender: Contact
    accepted: bool

    def to_wire(self) -> list[Any]:
        return [self.sender.to_wire(), self.accepted]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> NeighborReply:
        sender, accepted = expect_list(fields, "neighbor reply", 2)
        return cls(Contact.from_wire(sender), expect(accepted, bool, "accepted"))


@register
@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender drops the receiver from its active view (keeps it as passive)."""

    KIND: ClassVar[str] = "ov_disconnect"
    sender: str

    def to_wire(self) -> list[Any]:
        return [self.sender]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Disconnect:
        (sender,) = expect_list(fields, "disconnect", 1)
        return cls(expect_replica(sender, "disconnect sender"))


@register
@dataclass(frozen=True, slots=True)
class Shuffle:
    KIND: ClassVar[str] = "ov_shuffle"
    origin: Contact
    ttl: int
    sample: tuple[Contact, ...]

    def to_wire(self) -> list[Any]:
        return [self.origin.to_wire(), self.ttl, [c.to_wire() for c in self.sample]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Shuffle:
        origin, ttl, sample = expect_list(fields, "shuffle", 3)
        return cls(
            Contact.from_wire(origin),
            expect_int(ttl, "ttl", 0, MAX_TTL),
            _contacts(sample, "shuffle sample"),
        )


@register
@dataclass(frozen=True, slots=True)
class ShuffleReply:
    KIND: ClassVar[str] = "ov_shuffle_reply"
    sample: tuple[Contact, ...]

    def to_wire(self) -> list[Any]:
        return [[c.to_wire() for c in self.sample]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> ShuffleReply:
        (sample,) = expect_list(fields, "shuffle reply", 1)
        return cls(_contacts(sample, "shuffle reply sample"))


# -- failure detection and dissemination ----------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class Ping:
    """A probe. Updates ride along (SWIM's piggybacking).

    ``clock_ms``: the sender's clock when it sent the ping (see "Clock readings" in the
    module's notes); None writes the two-field form of nodes that predate it."""

    KIND: ClassVar[str] = "sw_ping"
    seq: int
    updates: tuple[Update, ...] = ()
    clock_ms: int | None = None

    def to_wire(self) -> list[Any]:
        head = [self.seq, [u.to_wire() for u in self.updates]]
        return head if self.clock_ms is None else [*head, self.clock_ms]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Ping:
        items = expect_list(fields, "ping")
        if len(items) not in (2, 3):
            raise DecodeError(f"ping: expected 2 or 3 items, got {len(items)}")
        return cls(
            expect_int(items[0], "ping seq"),
            _updates(items[1], "ping updates"),
            _clock(items[2], "ping clock reading") if len(items) == 3 else None,
        )


@register
@dataclass(frozen=True, slots=True)
class Ack:
    """``neighbour``: whether the acker holds the prober in its active view. A probe
    between neighbours answered with False shows a one-sided link (a lost reply or
    disconnect); the prober then asks to be taken back or drops the link, so links
    stay symmetric and every member stays watched.

    ``clock_ms``: the probed member's clock when it acked, passed on unchanged by an
    intermediary of an indirect probe (the reading is the target's, never the relayer's);
    None writes the four-field form of nodes that predate it."""

    KIND: ClassVar[str] = "sw_ack"
    seq: int
    incarnation: int
    updates: tuple[Update, ...] = ()
    neighbour: bool = True
    clock_ms: int | None = None

    def to_wire(self) -> list[Any]:
        head = [self.seq, self.incarnation, [u.to_wire() for u in self.updates], self.neighbour]
        return head if self.clock_ms is None else [*head, self.clock_ms]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Ack:
        items = expect_list(fields, "ack")
        if len(items) not in (4, 5):
            raise DecodeError(f"ack: expected 4 or 5 items, got {len(items)}")
        seq, incarnation, updates, neighbour = items[:4]
        return cls(
            expect_int(seq, "ack seq"),
            expect_int(incarnation, "ack incarnation"),
            _updates(updates, "ack updates"),
            expect(neighbour, bool, "ack neighbour"),
            _clock(items[4], "ack clock reading") if len(items) == 5 else None,
        )


@register
@dataclass(frozen=True, slots=True)
class PingReq:
    """Probe ``target`` for me and ack my ``seq`` if it answers (SWIM's indirect probe)."""

    KIND: ClassVar[str] = "sw_ping_req"
    seq: int
    target: Contact

    def to_wire(self) -> list[Any]:
        return [self.seq, self.target.to_wire()]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> PingReq:
        seq, target = expect_list(fields, "ping req", 2)
        return cls(expect_int(seq, "ping req seq"), Contact.from_wire(target))


@register
@dataclass(frozen=True, slots=True)
class Gossip:
    """Status updates sent at once to every neighbour by whoever learns them first."""

    KIND: ClassVar[str] = "sw_gossip"
    updates: tuple[Update, ...]

    def to_wire(self) -> list[Any]:
        return [[u.to_wire() for u in self.updates]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Gossip:
        (updates,) = expect_list(fields, "gossip", 1)
        return cls(_updates(updates, "gossip updates"))


def _granularity(obj: Any) -> int:
    g = expect_int(obj, "granularity", 0, MAX_BUCKETS)
    if g & (g - 1):
        raise DecodeError(f"granularity: {g} is not a power of two")
    return g


@register
@dataclass(frozen=True, slots=True)
class TableSync:
    """Member table entries (push-pull). ``granularity`` 0: the whole table; otherwise
    the entries in ``buckets`` of that many (the buckets a :class:`TableBuckets`
    comparison found different), so a transient difference ships a few entries, not
    N. ``reply``: the answer to one (not answered again)."""

    KIND: ClassVar[str] = "sw_table"
    entries: tuple[Update, ...]
    reply: bool
    granularity: int = 0
    buckets: tuple[int, ...] = ()

    def to_wire(self) -> list[Any]:
        return [
            [u.to_wire() for u in self.entries],
            self.reply,
            self.granularity,
            list(self.buckets),
        ]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> TableSync:
        entries, reply, granularity, buckets = expect_list(fields, "table sync", 4)
        g = _granularity(granularity)
        items = expect_list(buckets, "table sync buckets")
        if len(items) > g:
            raise DecodeError(f"table sync buckets: {len(items)} (granularity {g})")
        return cls(
            _updates(entries, "table entries", MAX_TABLE),
            expect(reply, bool, "reply"),
            g,
            tuple(expect_int(b, "bucket", 0, max(0, g - 1)) for b in items),
        )


@register
@dataclass(frozen=True, slots=True)
class TableBuckets:
    """The answer to a :class:`TableDigest` that differs: this table's hash per bucket
    (``len(hashes)`` buckets, a power of two chosen for the table's size). The receiver
    sends its entries of the buckets that differ, and gets this side's back."""

    KIND: ClassVar[str] = "sw_table_buckets"
    hashes: tuple[int, ...]

    def to_wire(self) -> list[Any]:
        return [list(self.hashes)]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> TableBuckets:
        (hashes,) = expect_list(fields, "table buckets", 1)
        items = expect_list(hashes, "bucket hashes")
        if _granularity(len(items)) == 0:
            raise DecodeError("bucket hashes: none")
        return cls(tuple(expect_int(h, "bucket hash", 0, (1 << 64) - 1) for h in items))


@register
@dataclass(frozen=True, slots=True)
class TableDigest:
    """A member table's order-free hash and size: equal hashes mean equal tables, so the
    periodic push-pull costs a few bytes until something differs (then the table)."""

    KIND: ClassVar[str] = "sw_table_digest"
    digest: int
    count: int

    def to_wire(self) -> list[Any]:
        return [self.digest, self.count]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> TableDigest:
        digest, count = expect_list(fields, "table digest", 2)
        return cls(
            expect_int(digest, "table hash", 0, (1 << 64) - 1),
            expect_int(count, "table size", 0, MAX_TABLE),
        )
