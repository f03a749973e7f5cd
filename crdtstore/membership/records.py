"""Member records: what every node publishes about itself in the reserved namespace.

Membership is ordinary replicated state: an LWW-map named :data:`MEMBERS_NAMESPACE`,
key = node id, value = the record as a plain dict. Each node writes only its own key
(join, restart with a higher incarnation, leave), so records never conflict; pruning a
member that left long ago is the one write a node makes to another node's key, and it
is a delete, which a later write by that node (if it ever returns) survives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crdtstore.errors import DecodeError

MEMBERS_NAMESPACE = "__members"
MAX_TOPICS = 1024


@dataclass(frozen=True, slots=True)
class MemberRecord:
    node_id: str
    router: str
    """Address of the node's ROUTER socket (digests, repair, reconciliation)."""
    pub: str
    """Address of the node's PUB socket (its delta batches, relayed or its own, and digests)."""
    topics: tuple[str, ...] | None
    """Namespaces the node replicates; None means all."""
    public_key: str | None
    """The node's CurveZMQ public key (z85), when keys are configured."""
    incarnation: int
    """Raised on every start and to refute a suspicion; a higher one always wins."""
    started_at_ms: int
    left: bool = False
    """True once the node announced a graceful leave."""

    def to_value(self) -> dict[str, Any]:
        value = asdict(self)
        value["topics"] = None if self.topics is None else list(self.topics)
        return value

    @classmethod
    def from_value(cls, value: Any) -> MemberRecord:
        """Validate a record read from replicated state (it came from the network)."""
        if not isinstance(value, dict):
            raise DecodeError(f"member record must be a map, got {type(value).__name__}")
        try:
            topics = value["topics"]
            if topics is not None:
                if not isinstance(topics, list) or len(topics) > MAX_TOPICS:
                    raise DecodeError("member topics must be a list")
                if not all(isinstance(t, str) for t in topics):
                    raise DecodeError("member topics must be strings")
                topics = tuple(topics)
            record = cls(
                node_id=value["node_id"],
                router=value["router"],
                pub=value["pub"],
                topics=topics,
                public_key=value["public_key"],
                incarnation=value["incarnation"],
                started_at_ms=value["started_at_ms"],
                left=value.get("left", False),
            )
        except KeyError as exc:
            raise DecodeError(f"member record lacks field {exc}") from exc
        for name in ("node_id", "router", "pub"):
            if not isinstance(getattr(record, name), str):
                raise DecodeError(f"member record field {name} must be a string")
        if record.public_key is not None and not isinstance(record.public_key, str):
            raise DecodeError("member record public_key must be a string or null")
        for name in ("incarnation", "started_at_ms"):
            field = getattr(record, name)
            if not isinstance(field, int) or isinstance(field, bool) or field < 0:
                raise DecodeError(f"member record field {name} must be a non-negative int")
        if not isinstance(record.left, bool):
            raise DecodeError("member record field left must be a bool")
        return record

    def replicates(self, namespace: str) -> bool:
        return namespace == MEMBERS_NAMESPACE or self.topics is None or namespace in self.topics
