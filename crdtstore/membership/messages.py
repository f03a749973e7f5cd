"""Membership's own message: the hello that starts every link (the overlay protocol's
messages are :mod:`crdtstore.membership.wire`). The full mesh's heartbeat of releases up
to v0.2.0 is no longer a message: its tag decodes as an unknown kind.

Hellos travel beside the sync engine's messages, in the same envelope and with the same
strict decoding, but are handled by the replicator, not by the engine.

Fields are read by exact count, as every message's are. Fields added later extend a
message at its end and make one more accepted count: the older form still reads, with
the added fields absent (None, or empty), and nothing else is let through. A node of
before the addition refuses the longer form (it counts a ``rejected_membership``).

Clock readings (``clock_ms``) are the sender's wall clock when it sent the message; an
offset is always "the other node's clock minus the sender's", in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.codec import MAX_SEQ, expect, expect_int, expect_list, expect_replica
from crdtstore.errors import DecodeError
from crdtstore.membership.records import MAX_TOPICS, MemberRecord
from crdtstore.membership.versions import MAX_VERSION, MAX_VERSIONS
from crdtstore.sync.messages import expect_namespace, register

MAX_ADDRESS_LEN = 512
MAX_OFFSET_MS = MAX_SEQ
"""Bound of a clock offset either way (any int64 reading minus another fits in it)."""


def _address(obj: Any, what: str) -> str:
    addr: str = expect(obj, str, what)
    if not addr or len(addr) > MAX_ADDRESS_LEN:
        raise DecodeError(f"{what}: length outside [1, {MAX_ADDRESS_LEN}]")
    return addr


def _offset(obj: Any, what: str) -> int:
    return expect_int(obj, what, -MAX_OFFSET_MS, MAX_OFFSET_MS)


def _topics(obj: Any) -> tuple[str, ...] | None:
    if obj is None:
        return None
    items = expect_list(obj, "topics")
    if len(items) > MAX_TOPICS:
        raise DecodeError(f"hello names {len(items)} topics (limit {MAX_TOPICS})")
    return tuple(expect_namespace(t) for t in items)


def _versions(obj: Any) -> tuple[int, ...]:
    items = expect_list(obj, "protocol versions")
    if not 1 <= len(items) <= MAX_VERSIONS:
        raise DecodeError(f"hello lists {len(items)} protocol versions (1 to {MAX_VERSIONS})")
    versions = tuple(expect_int(v, "protocol version", 1, MAX_VERSION) for v in items)
    if len(set(versions)) != len(versions):
        raise DecodeError("hello lists a protocol version twice")
    return versions


@register
@dataclass(frozen=True, slots=True)
class Hello:
    """Sent to a seed (or any member) to introduce this node; answered by the same kind.

    Besides the addresses, it carries the sender's member record (``incarnation``,
    ``topics``, ``started_at_ms``): the receiver knows the sender's current life before
    the replicated record reaches it, or when that record cannot be applied there (it is
    stamped by a clock too far ahead). ``offset_ms``, in a reply: the addressee's clock
    minus the sender's, read from the hello being answered. The five-field form of
    earlier nodes has none of these (all None), and a hello without an incarnation is
    written in that form.

    ``versions``: the protocol versions the sender speaks
    (:mod:`crdtstore.membership.versions`), appended as the eleventh field; the ten-field
    form (tag v0.1.0, which refuses the longer one) has none (None), and a hello without
    versions is written in it."""

    KIND: ClassVar[str] = "hello"
    node_id: str
    router: str
    pub: str
    public_key: str | None
    reply: bool
    incarnation: int | None = None
    topics: tuple[str, ...] | None = None
    started_at_ms: int | None = None
    clock_ms: int | None = None
    offset_ms: int | None = None
    versions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.incarnation is not None and (self.started_at_ms is None or self.clock_ms is None):
            raise ValueError("a hello with a record carries its start and a clock reading")
        if self.versions is not None and self.incarnation is None:
            raise ValueError("a hello with versions carries a record (the ten fields first)")

    def to_wire(self) -> list[Any]:
        head = [self.node_id, self.router, self.pub, self.public_key, self.reply]
        if self.incarnation is None:
            return head  # no record to tell: the earlier form
        topics = None if self.topics is None else list(self.topics)
        fields = [
            *head,
            self.incarnation,
            topics,
            self.started_at_ms,
            self.clock_ms,
            self.offset_ms,
        ]
        if self.versions is None:
            return fields  # the form of v0.1.0 nodes, which refuse a longer one
        return [*fields, list(self.versions)]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Hello:
        items = expect_list(fields, "hello")
        if len(items) not in (5, 10, 11):
            raise DecodeError(f"hello: expected 5, 10 or 11 items, got {len(items)}")
        node_id, router, pub, key, reply = items[:5]
        if key is not None:
            key = expect(key, str, "public key")
        hello = cls(
            expect_replica(node_id, "node id"),
            _address(router, "router address"),
            _address(pub, "pub address"),
            key,
            expect(reply, bool, "reply flag"),
        )
        if len(items) == 5:
            return hello
        incarnation, topics, started, clock, offset = items[5:10]
        return cls(
            hello.node_id,
            hello.router,
            hello.pub,
            hello.public_key,
            hello.reply,
            expect_int(incarnation, "incarnation"),
            _topics(topics),
            expect_int(started, "started at"),
            expect_int(clock, "clock reading"),
            None if offset is None else _offset(offset, "clock offset"),
            _versions(items[10]) if len(items) == 11 else None,
        )

    def record(self) -> MemberRecord | None:
        """The sender's member record as the hello tells it (None from an earlier node)."""
        if self.incarnation is None or self.started_at_ms is None:
            return None
        return MemberRecord(
            node_id=self.node_id,
            router=self.router,
            pub=self.pub,
            topics=self.topics,
            public_key=self.public_key,
            incarnation=self.incarnation,
            started_at_ms=self.started_at_ms,
        )
