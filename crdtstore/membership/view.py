"""What ``node.members()`` returns: one immutable row per member, as this node sees it.

A row joins two sources: the replicated record (addresses, topics, key, incarnation,
the ``left`` flag) and, on the node that holds the network role, the local failure
detector's verdict and clock estimates. Status is never replicated: "dead" is an opinion
of the observer, and during a partition each side honestly reports what it sees.

A record is of one life of its member. When the detector has heard the member at a
higher incarnation, the record is of a past life: its ``left`` flag says that life left,
not the member, which is back (the new record is on its way, or a hello brought it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crdtstore.errors import DecodeError
from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.records import MemberRecord


@dataclass(frozen=True, slots=True)
class Member:
    """A member as this node sees it right now."""

    node_id: str
    status: str
    """``alive``, ``suspect``, ``dead`` or ``left``; ``unknown`` in a process without the
    network role while the directory's detector view is stale (see ``Node.member_view``)."""
    incarnation: int
    router: str
    pub: str
    topics: tuple[str, ...] | None
    """Namespaces it replicates; None means all."""
    public_key: str | None
    started_at_ms: int
    last_heard_ms: int | None
    """Wall-clock ms when this node last heard from it (None for itself or unknown)."""
    is_self: bool
    clock_offset_ms: int | None = None
    """Its clock minus this node's, estimated from its hellos, probes and acks (0 for this
    node itself; None when not known). Beyond ``max_clock_drift_ms`` the one of the two
    whose clock is ahead has its writes deferred by the other."""
    clock_off: bool = False
    """Its clock is more than half of ``max_clock_drift_ms`` from the median of the clocks
    this node knows (see :mod:`crdtstore.membership.clocks`): it is the one to fix."""
    status_since_ms: int | None = None
    """Wall-clock ms since when the failure detector has held this status (None where no
    detector has judged the member: itself, a record not yet seen by the detector)."""
    observed_at_ms: int | None = None
    """Wall-clock ms of the detector's view this row comes from: now in the process holding
    the network role, the view's last write in the directory for every other process."""


Verdict = Callable[[str], tuple[MemberStatus | None, int | None, int | None]]
"""node id -> (detector status, last heard ms, incarnation heard), for the node that runs a
failure detector. A probe can bring a new incarnation before the record does."""


def parse_records(values: Mapping[Any, Any]) -> tuple[dict[str, MemberRecord], int]:
    """Valid records by node id, and how many were rejected (they came from the network)."""
    records: dict[str, MemberRecord] = {}
    rejected = 0
    for node_id, value in values.items():
        try:
            record = MemberRecord.from_value(value)
        except DecodeError:
            rejected += 1
            continue
        if record.node_id != node_id:
            rejected += 1
            continue
        records[node_id] = record
    return records, rejected


def members_view(
    self_id: str,
    records: Mapping[str, MemberRecord],
    verdict: Verdict | None,
) -> list[Member]:
    out = []
    for node_id, record in sorted(records.items()):
        is_self = node_id == self_id
        heard: int | None = None
        incarnation = record.incarnation
        if is_self or verdict is None:
            status = "left" if record.left else "alive"
        else:
            seen, heard, heard_incarnation = verdict(node_id)
            incarnation = max(incarnation, heard_incarnation or 0)
            if record.left and incarnation == record.incarnation:
                status, heard = "left", None
            else:
                status = seen.value if seen is not None else "alive"
        out.append(
            Member(
                node_id=node_id,
                status=status,
                incarnation=incarnation,
                router=record.router,
                pub=record.pub,
                topics=record.topics,
                public_key=record.public_key,
                started_at_ms=record.started_at_ms,
                last_heard_ms=heard,
                is_self=is_self,
            )
        )
    return out
