"""A member's status as failure detection sees it, and a change of it.

The detector itself is the overlay protocol (:mod:`crdtstore.membership.protocol`: SWIM
probing with a suspicion stage and Lifeguard's local health); these are the values it,
the member view and the API share. A member is *alive* while it answers, *suspect* once
it did not, *dead* once suspected too long without refuting at a newer incarnation, and
*left* once it said so. A dead member stays dead at its incarnation: only a newer one (a
restart, or a refutation) brings it back, so a paused member does not flap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MemberStatus(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"
    UNKNOWN = "unknown"
    """Never a detector's verdict: what a process without the network role reports while
    the directory's copy of the detector's view is stale (``membership.observed``)."""


@dataclass(frozen=True, slots=True)
class StatusChange:
    node_id: str
    old: MemberStatus | None
    new: MemberStatus
    incarnation: int
