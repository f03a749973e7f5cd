"""The node's live status: the snapshot, ``status.json``, and the answer to a status query.

Every ``status_interval_ms`` the replicator's thread builds a snapshot of what operators
look at (``crdt-inspect DIR status``, metrics, :meth:`Node.network_status`): members,
lag, sessions, clocks, versions agreed, and the counters of every part. Other threads read
``last_status`` only, since the engine's state is the replicator thread's alone. The role
holder writes it into the node directory (:data:`STATUS_FILE`) and answers status queries
(:mod:`crdtstore.status_query`) from it, encoded once per snapshot however many ask.

Invariants: ``status.json`` is replaced whole (readers never see a half-written file); a
failure to build or write it is counted and never stops the thread (a full disk fails
every write, and must not stop the operator's view of the rest); a query from a sender
named like a node is refused, since the answer would go to that node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crdtstore.errors import ClosedError
from crdtstore.membership.versions import PeerVersions
from crdtstore.membership.view import Member
from crdtstore.network.clock_watch import ClockWatch
from crdtstore.status_query import encode_status_reply, is_status_request
from crdtstore.sync.engine import SyncEngine

if TYPE_CHECKING:
    from crdtstore.overlay_liveness import OverlayLiveness
    from transport import Transport

# The replicator's voice, as before this module was split out of it: log filters name it.
log = logging.getLogger("crdtstore.replicator")

STATUS_FILE = "status.json"
"""Written into the node directory every ``status_interval_ms`` by the role holder."""
_MEMBER_FIELDS = tuple(f.name for f in dataclasses.fields(Member))
"""A status row is these fields, shallow: ``dataclasses.asdict`` copies each value deeply,
the larger part of building a status of many members (every field is a scalar or a
tuple of strings)."""


class StatusReport:
    """Builds, keeps, writes and serves one node's status, on the replicator's thread."""

    def __init__(
        self,
        *,
        node_id: str,
        transport: Transport,
        engine: SyncEngine,
        liveness: OverlayLiveness,
        versions: PeerVersions,
        clocks: ClockWatch,
        members: Callable[[], list[Member]],
        names_a_node: Callable[[str], bool],
        path: str | None,
        extra_stats: Callable[[], dict[str, int]] | None,
        clock: Callable[[], int],
        stats: Counter[str],
    ) -> None:
        """``names_a_node(peer)``: whether ``peer`` is a member's id (its queries are
        refused); ``path``: where to write the status (None: nowhere); ``extra_stats``:
        the storage counters; ``stats``: the replicator's counters, shown and counted in."""
        self.node_id = node_id
        self._transport = transport
        self._engine = engine
        self._liveness = liveness
        self._versions = versions
        self._clocks = clocks
        self._members = members
        self._names_a_node = names_a_node
        self._path = path
        self._extra_stats = extra_stats
        self._clock = clock
        self._stats = stats
        self.last_status: dict[str, Any] | None = None
        """The newest :meth:`status`, made every ``status_interval_ms``: what other
        threads read."""
        self._encoded: tuple[dict[str, Any], bytes] | None = None

    def status(self, now: int | None = None) -> dict[str, Any]:
        """Live state for operators (``crdt-inspect DIR status``): members, lag, clocks,
        counters."""
        members = self._members()
        engine, liveness = self._engine, self._liveness
        return {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "written_at_ms": self._clock() if now is None else now,
            "router": self._transport.bound_router,
            "pub": self._transport.bound_pub,
            "members": [{name: getattr(m, name) for name in _MEMBER_FIELDS} for m in members],
            "clock": self._clocks.status(members),
            "peer_lag": engine.peer_lag(),
            "sessions": engine.sessions(),
            "behind": engine.behind(),
            "protocol_versions": self._versions.agreements(),
            "local_health": liveness.local_health,
            "sync": dict(engine.stats),
            "transport": self._transport.stats(),
            "replicator": dict(self._stats),
            "liveness": dict(liveness.stats),
            "overlay": self._overlay(),
            "storage": {} if self._extra_stats is None else dict(self._extra_stats()),
        }

    def _overlay(self) -> dict[str, Any]:
        return {
            "neighbours": self._liveness.neighbours(),
            "connections": self._liveness.connections(),
            # The links trusted to relay any origin's batches (see relay_sources).
            "member_links": sorted(self._liveness.relay_sources()),
            "protocol": self._liveness.protocol_stats(),
        }

    def refresh(self, now: int) -> None:
        """The status snapshot for metrics and queries, and ``status.json``."""
        try:
            self.last_status = self.status(now)
        except ClosedError:
            return  # the node is closing
        except Exception:  # reading a counter must not kill the thread that writes them
            self._stats["status_write_errors"] += 1
            log.exception("cannot build the node's status (counted)")
            return
        if self._path is not None:
            self._write(self._path, self.last_status)

    def _write(self, path: str, status: dict[str, Any]) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            # dumps, not dump: only dumps uses the C encoder (dump encodes in Python, a
            # large share of a status write with many members).
            text = json.dumps(status, sort_keys=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            # Operators lose the live view, replication goes on: count, log the first one.
            # (crdt-inspect tells a full file system from a stopped node.) A partial
            # temporary file would hold space a full disk lacks.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._stats["status_write_errors"] += 1
            if self._stats["status_write_errors"] == 1:
                log.error("cannot write %s: %s (counted; replication continues)", tmp, exc)

    def on_query(self, peer: str, body: bytes, now: int) -> None:
        """An operator's status query (:mod:`crdtstore.status_query`), answered from the
        newest status, encoded once per status interval however many ask."""
        # A sender named like a node (recorded, introduced or connected) is refused: the
        # answer would go to that node, on the connection to it.
        if peer == self.node_id or self._names_a_node(peer) or not is_status_request(body):
            self._stats["rejected_query"] += 1
            return
        status = self.last_status
        if status is None:
            status = self.last_status = self.status(now)
        if self._encoded is None or self._encoded[0] is not status:
            self._encoded = (status, encode_status_reply(status))
        self._stats["status_queries"] += 1
        self._transport.send(peer.encode(), self._encoded[1])
