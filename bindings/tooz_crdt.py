"""A tooz coordination driver over crdtstore: group membership with no central server.

URL::

    crdt://[SEED_HOST:PORT]/DATA_DIR?bind=tcp://HOST:PORT&seed=tcp://...&timeout=30
        &node_id=ID&secret_key=FILE&keys_dir=DIR&connect_timeout=10

``DATA_DIR`` is the host's node directory. Every coordinator of a host opens the same one
(within a process they share one handle), so a write by one is visible to the others at
once, as tooz's semantics need. With ``bind`` (and seeds, given as the URL's host or as
``seed`` options) the node replicates to the other hosts; without it, the directory is
replicated by whichever process holds its network role (``crdtstore serve``), or not at
all. ``timeout`` (seconds, default 30) is how long a member may go without heartbeating
before others stop listing it.

Layout (namespaces, all LWW-maps):

- ``tooz.groups``: group id -> ``{"created_at": ISO time}``.
- ``tooz.members.<group id in hex>``, one namespace per group (so listing a group reads
  only its own members): member id -> ``{"capabilities": ..., "created_at": ...,
  "updated_at": ...}``.
- ``tooz.beats``: member id -> ``{"n": counter, "timeout": seconds, "node": node id}``.

Expiry never compares clocks of different hosts. A heartbeat bumps the member's counter;
each observing process remembers, on its own monotonic clock, when it last saw each
counter change, and stops listing a member whose counter has not changed for the
member's timeout. And a member whose host's node is dead (or left) in the failure
detector's view of the observer's directory is not listed either: every process sharing
that directory reads the same view (``Node.member_view``), so they agree on it, within
one refresh of the view, even one that started after the host died; and they do not
wait out the member's timeout for it. A stale view (no process serves the directory)
decides nothing. A member is never deleted by an observer: during a partition each side
would otherwise boot the other side's members out for good; instead they reappear as
soon as their heartbeats arrive again (and their node is alive again).

Not offered, by design: locks and leader election need agreement between nodes (a
consensus protocol); a CRDT store is available under partition precisely because it does
not wait for agreement, so two sides of a partition could both "hold" a lock. They raise
``tooz.NotImplemented``, as do the leader watchers the base class would accept silently.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, ClassVar, TypeVar

import tooz
from tooz import coordination, locking

import crdtstore

T = TypeVar("T")

GROUPS = "tooz.groups"
MEMBERS = "tooz.members"
BEATS = "tooz.beats"
DEFAULT_TIMEOUT = 30.0
VIEW_REUSE_S = 0.1
"""How long a driver reuses the node's member view it read: listing a group stays a few
LMDB reads, and the view itself changes at most once a heartbeat."""
GONE = frozenset({"dead", "left"})


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _members_ns(group_id: bytes) -> str:
    return f"{MEMBERS}.{group_id.hex()}"


def _option(options: dict[str, Any], name: str, default: Any = None) -> Any:
    value = options.get(name, default)
    if isinstance(value, list):
        return value[-1] if value else default
    return value


class _Shared:
    """One node handle per directory per process, shared by its coordinators."""

    lock = threading.Lock()
    handles: ClassVar[dict[str, tuple[crdtstore.Node, int, dict[bytes, tuple[int, float]]]]] = {}

    @classmethod
    def acquire(cls, path: str, **open_args: Any) -> tuple[crdtstore.Node, dict[Any, Any]]:
        with cls.lock:
            entry = cls.handles.get(path)
            if entry is None:
                node = crdtstore.open(path, **open_args)
                entry = (node, 0, {})
            node, count, seen = entry
            cls.handles[path] = (node, count + 1, seen)
            return node, seen

    @classmethod
    def release(cls, path: str) -> None:
        with cls.lock:
            node, count, seen = cls.handles[path]
            if count > 1:
                cls.handles[path] = (node, count - 1, seen)
                return
            del cls.handles[path]
        node.close()


class CrdtDriver(coordination.CoordinationDriverCachedRunWatchers):
    """tooz groups, members, capabilities and heartbeats over replicated CRDT state."""

    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.CAUSAL,
    )

    def __init__(self, member_id: bytes, parsed_url: Any, options: dict[str, Any]) -> None:
        super().__init__(_as_bytes(member_id), parsed_url, options)
        self._path = os.path.abspath(parsed_url.path or "")
        self._timeout = float(_option(options, "timeout", DEFAULT_TIMEOUT))
        self._connect_timeout = float(_option(options, "connect_timeout", 10))
        seeds = [s for s in options.get("seed", []) if s]
        if parsed_url.netloc:
            seeds.insert(0, f"tcp://{parsed_url.netloc}")
        self._seeds = seeds
        self._bind = _option(options, "bind")
        self._open_args: dict[str, Any] = {}
        for name in ("node_id", "secret_key", "keys_dir"):
            if _option(options, name) is not None:
                self._open_args[name] = _option(options, name)
        self._node: crdtstore.Node | None = None
        self._views: dict[str, crdtstore.LWWMapView] = {}
        self._seen: dict[bytes, tuple[int, float]] = {}
        self._beats = 0
        self._gone_nodes: tuple[float, frozenset[str]] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def _start(self) -> None:
        if not self._path or self._path == "/":
            raise coordination.ToozConnectionError("crdt:// needs a data directory path")
        if self._seeds and not self._bind:
            raise coordination.ToozConnectionError(
                f"seeds {self._seeds} need bind=tcp://HOST:PORT to be reachable by them"
            )
        args = dict(self._open_args)
        if self._bind:
            args.update(bind=self._bind, seeds=self._seeds)
        try:
            self._node, self._seen = _Shared.acquire(self._path, **args)
        except crdtstore.Error as exc:
            raise coordination.ToozConnectionError(str(exc)) from exc
        except Exception as exc:  # e.g. the transport refusing the bind address
            raise coordination.ToozConnectionError(str(exc)) from exc
        if self._seeds:
            self._await_peer()
        self._beat()

    def _await_peer(self) -> None:
        assert self._node is not None
        deadline = time.monotonic() + self._connect_timeout
        while not any(m.status == "alive" and not m.is_self for m in self._node.members()):
            if time.monotonic() > deadline:
                self._close()
                raise coordination.ToozConnectionError(
                    f"no member reachable through {self._seeds} within {self._connect_timeout}s"
                )
            time.sleep(0.05)  # polling the member list, bounded by connect_timeout

    def _stop(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._node is not None:
            self._node = None
            self._views.clear()
            _Shared.release(self._path)

    def _map(self, name: str) -> crdtstore.LWWMapView:
        """A cached view: creating one checks the namespace's type and the topics."""
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self.node.lww_map(name)
        return view

    @property
    def node(self) -> crdtstore.Node:
        if self._node is None:
            raise coordination.ToozConnectionError("coordinator not started")
        return self._node

    # -- results --------------------------------------------------------------------------

    @staticmethod
    def _result(fn: Callable[[], T]) -> coordination.CoordAsyncResult[T]:
        """Run ``fn`` now (every operation is a local read or write) and wrap the outcome."""
        fut: futures.Future[T] = futures.Future()
        try:
            fut.set_result(fn())
        except tooz.ToozError as exc:
            fut.set_exception(exc)
        except crdtstore.Error as exc:
            fut.set_exception(tooz.ToozError(str(exc)))
        return coordination.CoordinatorResult(fut)

    # -- liveness -------------------------------------------------------------------------

    def _beat(self) -> None:
        self._beats += 1
        beats = self._map(BEATS)
        previous = beats.get(self._member_id)
        count = previous["n"] + 1 if isinstance(previous, dict) else self._beats
        beats[self._member_id] = {"n": count, "timeout": self._timeout, "node": self.node.node_id}

    def heartbeat(self) -> float:
        self._beat()
        return self._timeout / 3

    def _nodes_gone(self) -> frozenset[str]:
        """Nodes dead or left in the directory's failure detector view (none if stale)."""
        now = time.monotonic()
        cached = self._gone_nodes
        if cached is None or now - cached[0] > VIEW_REUSE_S:
            view = self.node.member_view()
            gone = frozenset(
                m.node_id for m in view.members if view.stale is None and m.status in GONE
            )
            cached = self._gone_nodes = (now, gone)
        return cached[1]

    def _alive(self, member_id: bytes, beats: Any) -> bool:
        """Whether ``member_id``'s counter changed within its timeout, on our clock, and
        its node is not dead in the directory's member view."""
        beat = beats.get(member_id)
        if not isinstance(beat, dict):
            return False
        node = beat.get("node")  # absent in the beats of older drivers
        if isinstance(node, str) and node in self._nodes_gone():
            return False
        now = time.monotonic()
        count, timeout = int(beat.get("n", 0)), float(beat.get("timeout", DEFAULT_TIMEOUT))
        seen = self._seen.get(member_id)
        if seen is None or seen[0] != count:
            self._seen[member_id] = (count, now)
            return True
        return now - seen[1] <= timeout

    def _members(self, group_id: bytes) -> dict[bytes, dict[str, Any]]:
        if group_id not in self._map(GROUPS):
            raise coordination.GroupNotCreated(group_id)
        beats = self._map(BEATS)
        return {
            mid: value
            for mid, value in self._map(_members_ns(group_id)).items()
            if self._alive(mid, beats)
        }

    # -- groups ---------------------------------------------------------------------------

    def create_group(self, group_id: bytes) -> coordination.CoordAsyncResult[None]:
        group_id = _as_bytes(group_id)

        def create() -> None:
            groups = self._map(GROUPS)
            if group_id in groups:
                raise coordination.GroupAlreadyExist(group_id)
            groups[group_id] = {"created_at": _now_iso()}

        return self._result(create)

    def get_groups(self) -> coordination.CoordAsyncResult[list[bytes]]:
        return self._result(lambda: list(self._map(GROUPS)))

    def delete_group(self, group_id: bytes) -> coordination.CoordAsyncResult[None]:
        group_id = _as_bytes(group_id)

        def delete() -> None:
            if self._members(group_id):
                raise coordination.GroupNotEmpty(group_id)
            del self._map(GROUPS)[group_id]

        return self._result(delete)

    def join_group(
        self, group_id: bytes, capabilities: Any = b""
    ) -> coordination.CoordAsyncResult[None]:
        group_id = _as_bytes(group_id)

        def join() -> None:
            if self._member_id in self._members(group_id):
                raise coordination.MemberAlreadyExist(group_id, self._member_id)
            now = _now_iso()
            caps = None if capabilities == b"" else capabilities  # tooz's "no capabilities"
            record = {"capabilities": caps, "created_at": now, "updated_at": now}
            with self.node.transaction():
                self._map(_members_ns(group_id))[self._member_id] = record
                self._beat()
            self._joined_groups.add(group_id)

        return self._result(join)

    def leave_group(self, group_id: bytes) -> coordination.CoordAsyncResult[None]:
        group_id = _as_bytes(group_id)

        def leave() -> None:
            if group_id not in self._map(GROUPS):
                raise coordination.GroupNotCreated(group_id)
            members = self._map(_members_ns(group_id))
            if self._member_id not in members:
                raise coordination.MemberNotJoined(group_id, self._member_id)
            del members[self._member_id]
            self._joined_groups.discard(group_id)

        return self._result(leave)

    def get_members(self, group_id: bytes) -> coordination.CoordAsyncResult[set[bytes]]:
        group_id = _as_bytes(group_id)
        return self._result(lambda: set(self._members(group_id)))

    def _member(self, group_id: bytes, member_id: bytes) -> dict[str, Any]:
        record = self._members(group_id).get(_as_bytes(member_id))
        if record is None:
            raise coordination.MemberNotJoined(group_id, member_id)
        return record

    def get_member_capabilities(
        self, group_id: bytes, member_id: bytes
    ) -> coordination.CoordAsyncResult[Any]:
        group_id = _as_bytes(group_id)
        return self._result(lambda: self._member(group_id, member_id)["capabilities"])

    def get_member_info(
        self, group_id: bytes, member_id: bytes
    ) -> coordination.CoordAsyncResult[dict[str, Any]]:
        group_id = _as_bytes(group_id)
        return self._result(lambda: dict(self._member(group_id, member_id)))

    def get_members_with_capabilities(
        self, group_id: bytes
    ) -> coordination.CoordAsyncResult[dict[bytes, Any]]:
        group_id = _as_bytes(group_id)
        return self._result(
            lambda: {m: r["capabilities"] for m, r in self._members(group_id).items()}
        )

    def update_capabilities(
        self, group_id: bytes, capabilities: Any
    ) -> coordination.CoordAsyncResult[None]:
        group_id = _as_bytes(group_id)

        def update() -> None:
            record = dict(self._member(group_id, self._member_id))
            record.update(capabilities=capabilities, updated_at=_now_iso())
            self._map(_members_ns(group_id))[self._member_id] = record

        return self._result(update)

    # -- what needs consensus -------------------------------------------------------------

    def get_lock(self, name: bytes) -> locking.Lock:
        raise tooz.NotImplemented("crdt:// offers no locks: they need consensus (see docs)")

    def get_leader(self, group_id: bytes) -> coordination.CoordAsyncResult[bytes]:
        raise tooz.NotImplemented("crdt:// offers no leader election: it needs consensus")

    def watch_elected_as_leader(self, group_id: bytes, callback: Any) -> None:
        raise tooz.NotImplemented("crdt:// offers no leader election: it needs consensus")

    def unwatch_elected_as_leader(self, group_id: bytes, callback: Any) -> None:
        raise tooz.NotImplemented("crdt:// offers no leader election: it needs consensus")

    def stand_down_group_leader(self, group_id: bytes) -> bool:
        raise tooz.NotImplemented("crdt:// offers no leader election: it needs consensus")
