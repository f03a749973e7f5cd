"""Membership's own messages: the join handshake and heartbeats.

They travel beside the sync engine's messages, in the same envelope and with the same
strict decoding, but are handled by the replicator, not by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.codec import expect, expect_int, expect_list, expect_replica
from crdtstore.errors import DecodeError
from crdtstore.sync.messages import register

MAX_ADDRESS_LEN = 512
MAX_SUSPECTS = 4096


def _address(obj: Any, what: str) -> str:
    addr: str = expect(obj, str, what)
    if not addr or len(addr) > MAX_ADDRESS_LEN:
        raise DecodeError(f"{what}: length outside [1, {MAX_ADDRESS_LEN}]")
    return addr


@register
@dataclass(frozen=True, slots=True)
class Hello:
    """Sent to a seed (or any member) to introduce this node; answered by the same kind."""

    KIND: ClassVar[str] = "hello"
    node_id: str
    router: str
    pub: str
    public_key: str | None
    reply: bool

    def to_wire(self) -> list[Any]:
        return [self.node_id, self.router, self.pub, self.public_key, self.reply]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Hello:
        node_id, router, pub, key, reply = expect_list(fields, "hello", 5)
        if key is not None:
            key = expect(key, str, "public key")
        return cls(
            expect_replica(node_id, "node id"),
            _address(router, "router address"),
            _address(pub, "pub address"),
            key,
            expect(reply, bool, "reply flag"),
        )


@register
@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Published every heartbeat interval: "I am alive at this incarnation", plus whom
    the sender suspects, so that a suspected member learns of it and can refute."""

    KIND: ClassVar[str] = "heartbeat"
    node_id: str
    incarnation: int
    suspects: dict[str, int]

    def to_wire(self) -> list[Any]:
        return [self.node_id, self.incarnation, self.suspects]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Heartbeat:
        node_id, incarnation, suspects = expect_list(fields, "heartbeat", 3)
        raw = expect(suspects, dict, "suspects")
        if len(raw) > MAX_SUSPECTS:
            raise DecodeError(f"heartbeat names {len(raw)} suspects (limit {MAX_SUSPECTS})")
        return cls(
            expect_replica(node_id, "node id"),
            expect_int(incarnation, "incarnation"),
            {expect_replica(k, "suspect id"): expect_int(v, "incarnation") for k, v in raw.items()},
        )
