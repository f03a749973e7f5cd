"""The failure detector's view as a node directory keeps it, and when a reader may trust it.

Only the process holding a directory's network role runs a failure detector. Every other
process sharing the directory (a service beside ``crdtstore serve``, a tooz coordinator,
``crdt-inspect``) reads the detector's view from the directory instead: one
:class:`Observation` per member, and a :class:`ViewStamp` saying who wrote the view and
when (:mod:`crdtstore.storage.member_view` stores them). This module holds the rules both
sides share; no clock is read and no file is touched here.

Staleness. A reader trusts the view only while its writer is demonstrably at work: the
holder rewrites the stamp at least every ``interval_ms`` (and at once on any status
change). The view is stale when no holder ever wrote one, when the holder wrote that it
stopped, when the holder's process is gone, or when the stamp is older than
``STALE_INTERVALS`` of the holder's intervals. A stale view's rows still say when each
member was last heard and last observed, but no member is reported ``alive`` (or dead) on
their strength: its status reads ``unknown``, since whatever happened after the holder
stopped watching was seen by nobody on this host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.records import MemberRecord
from crdtstore.membership.view import Member, members_view

STALE_INTERVALS = 3
"""A view not rewritten for this many of its holder's intervals is stale: one missed write
is a busy moment, three are a holder that stopped (or cannot write)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What the role holder's failure detector holds about one member."""

    status: MemberStatus
    incarnation: int
    since_ms: int
    """Wall-clock ms since when the detector has held ``status``."""
    last_heard_ms: int
    """Wall-clock ms of the member's last message (or of when the detector learned of it)."""


@dataclass(frozen=True, slots=True)
class ViewStamp:
    """Who wrote the directory's view, and when."""

    pid: int
    node_id: str
    router: str | None
    written_at_ms: int
    interval_ms: int
    """The longest the holder waits between two writes while it runs."""
    stopped: bool = False
    """Written last by a holder that closed: its readers need not wait for the stamp to age."""


@dataclass(frozen=True, slots=True)
class MemberView:
    """``Node.member_view()``: the members, and whether the verdicts behind them are current."""

    members: list[Member]
    stale: str | None
    """Why the view cannot be trusted (no process holds the network role, its holder
    stopped or stopped writing), or None while it is current."""
    holder_pid: int | None
    """The process whose failure detector the statuses come from (None: none ever did)."""
    holder_router: str | None
    written_at_ms: int | None
    """Wall-clock ms of the view's last write (now, in the process holding the role)."""


def staleness(
    stamp: ViewStamp | None, now_ms: int, holder_running: Callable[[int], bool]
) -> str | None:
    """Why a view with ``stamp`` is stale at ``now_ms``, or None if it is current.

    ``holder_running(pid)`` tells whether a process of that pid runs on this host."""
    if stamp is None:
        return "no process holding the network role has written a member view here"
    if stamp.stopped:
        return f"the process that held the network role (pid {stamp.pid}) stopped"
    if not holder_running(stamp.pid):
        return f"the process that held the network role (pid {stamp.pid}) is gone"
    age = now_ms - stamp.written_at_ms
    if age > STALE_INTERVALS * stamp.interval_ms:
        return (
            f"the network role holder (pid {stamp.pid}) has not updated the member view "
            f"for {age} ms (it writes every {stamp.interval_ms} ms)"
        )
    return None


def observed_members(
    self_id: str,
    records: Mapping[str, MemberRecord],
    observations: Mapping[str, Observation],
    observed_at_ms: int | None,
    stale: bool,
) -> list[Member]:
    """The member rows of the replicated ``records`` joined with a detector's
    ``observations``; with ``stale``, no other member is claimed alive or dead."""

    def verdict(node_id: str) -> tuple[MemberStatus | None, int | None, int | None]:
        seen = observations.get(node_id)
        if seen is None:
            return None, None, None
        return seen.status, seen.last_heard_ms, seen.incarnation

    out = []
    for member in members_view(self_id, records, verdict):
        seen = observations.get(member.node_id)
        if member.is_self:
            out.append(member)
            continue
        status = member.status
        if stale and status != MemberStatus.LEFT.value:
            status = MemberStatus.UNKNOWN.value
        out.append(
            dataclasses.replace(
                member,
                status=status,
                status_since_ms=None if seen is None else seen.since_ms,
                observed_at_ms=None if seen is None else observed_at_ms,
            )
        )
    return out
