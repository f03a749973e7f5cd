"""``crdtstore.open()`` and :class:`Node`: one node directory opened in this process.

Invariants:

- A :class:`Node` owns one :class:`~crdtstore.storage.LMDBReplica` (the directory), the
  watcher thread that delivers changes, the member view of a process without the role
  (:mod:`.members`) and, with ``bind``, the network role (:mod:`.role`). Everything it
  starts it stops in ``close()``, which is idempotent, in the reverse order: the role's
  standby thread and the network first, the replica last.
- Reads go straight to LMDB (no cache of state), so every process sharing the directory
  sees every other's commits at once; only row-key positions are memoised, never values.
- Each mutation outside ``transaction()`` returns once committed (durable); mutations of
  other threads arriving while a commit is in flight share the next commit
  (:mod:`crdtstore.storage.group`). Inside ``transaction()``, all mutations of the thread
  share one commit of their own, and reads see them.

Network seam (for the sync engine and transport): ``node.replica`` is the
:class:`~crdtstore.sync.replica.Replica` the engine drives; ``node.on_commit`` holds
callables run (no arguments) after each local commit that produced delta batches;
``node.on_role_acquired`` holds callables run once this node takes the network role;
``node._attach_network(obj)`` hands over an object whose ``close()`` the node calls first
when it closes. Never open a node before ``fork()`` and use it after.

Why one module over 500 lines: :class:`Node` is one thing, the facade of the public API;
its methods are a few lines each over storage, and what holds state of its own (views,
member view, network role) lives in the modules beside this one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from crdtstore.addresses import check_bind, check_seeds
from crdtstore.errors import (
    ClosedError,
    Error,
    InvalidValue,
    NotReplicated,
    TypeMismatch,
)
from crdtstore.membership import MEMBERS_NAMESPACE, StatusChange
from crdtstore.membership.observed import MemberView
from crdtstore.membership.view import Member
from crdtstore.node.members import DirectoryMembers, wall_ms
from crdtstore.node.role import RoleClaim, start_replicator
from crdtstore.node.views import LWW, ORSET, LWWMapView, ORSetView, _NamespaceView
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica, LocalWrite
from crdtstore.storage.inputs import encode_key
from crdtstore.storage.journal import Change
from crdtstore.storage.layout import ns_prefix, row_dots, row_key_suffix
from crdtstore.storage.local import Committed
from crdtstore.storage.member_watch import MemberWatchHandle
from crdtstore.storage.namespaces import check_namespace
from crdtstore.storage.watch import ChangeFeed, JournalWatcher, WatchHandle

if TYPE_CHECKING:
    from transport import TransportFaults

log = logging.getLogger(__name__)

T = TypeVar("T")
RESERVED_PREFIX = "__"
ROW_KEY_MEMO_MAX = 4096
"""Row-key suffixes a node keeps for the keys it last read (about half a MiB for keys of
tens of bytes): the key's encoding and hash are a third of a ``get``, and the same keys
tend to be read again. Only the keys' positions are kept, never state, so every read
still sees the directory as it is."""
TOPICS_RECHECK_S = 1.0
"""How stale this process's view of the directory's declared topics may be."""


def open(
    path: str | os.PathLike[str],
    node_id: str | None = None,
    bind: str | None = None,
    seeds: Iterable[str] = (),
    *,
    clock: Callable[[], int] | None = None,
    faults: TransportFaults | None = None,
    **settings: Any,
) -> Node:
    """Open (creating if needed) the node directory ``path``.

    ``node_id``: the node's id; generated and persisted on first open when None;
    reopening with another id raises :class:`~crdtstore.errors.IdentityMismatch`.
    ``bind``: the address to serve the network on (``tcp://HOST:PORT``); None makes a
    local-only replica. With ``bind``, the node takes the directory's network role; if
    another process holds it, :class:`~crdtstore.errors.RoleHeld` names that process
    (with ``role_standby=True`` the node waits instead, and takes over when it stops).
    ``seeds``: a list of addresses of nodes to join through.
    ``clock``: the wall clock this process reads, in ms since the epoch, for its write
    stamps and, with ``bind``, its replication and failure detection (default: the
    system's); a test gives a shifted one to run a node whose clock is off.
    ``faults``: with ``bind``, network faults for the node's transport to inject (lost
    frames, cut peers): a test seam, built by :mod:`crdtstore.testing.faults`; None (the
    default) runs no fault code.
    ``settings``: any field of :class:`~crdtstore.settings.NodeSettings`; unknown names,
    and malformed addresses, raise :class:`~crdtstore.errors.InvalidValue`.
    """
    return Node(
        path,
        node_id=node_id,
        bind=bind,
        seeds=seeds,
        settings=NodeSettings.from_mapping(settings),
        clock=clock,
        faults=faults,
    )


class Node:
    """One node's data directory, opened in this process. Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        node_id: str | None = None,
        bind: str | None = None,
        seeds: Iterable[str] = (),
        settings: NodeSettings | None = None,
        clock: Callable[[], int] | None = None,
        faults: TransportFaults | None = None,
    ) -> None:
        self.settings = settings if settings is not None else NodeSettings()
        self._faults = faults
        self.path = os.fspath(path)
        self.bind = None if bind is None else check_bind(bind)
        self.seeds: tuple[str, ...] = check_seeds(seeds)
        self.stats: Counter[str] = Counter()
        self.on_commit: list[Callable[[], None]] = []
        self.on_role_acquired: list[Callable[[], None]] = []
        self._tls = threading.local()
        self._suffixes: dict[str | bytes | int, bytes] = {}
        self._closed = False
        self._close_lock = threading.Lock()
        self._network: Any = None
        self._replica = (
            LMDBReplica(path, node_id, self.settings)
            if clock is None
            else LMDBReplica(path, node_id, self.settings, now_ms=clock)
        )
        self.stats = self._replica.stats  # one set of counters per node
        self._replica.group.after = self._after_commit
        self._watcher = JournalWatcher(
            self._replica, self.settings.watch_poll_interval_ms / 1000, self.stats
        )
        if self.settings.topics is not None and self._replica.topics() != tuple(
            sorted(self.settings.topics)
        ):
            self._replica.declare_topics(self.settings.topics)
        self._topics_cache: tuple[frozenset[str] | None, float] | None = None
        self._members = DirectoryMembers(
            self.path, self.stats, self.settings.watch_poll_interval_ms / 1000
        )
        self._role: RoleClaim | None = None
        if bind is not None:
            try:
                self._role = RoleClaim(
                    self.path,
                    self.node_id,
                    standby=self.settings.role_standby,
                    poll_interval_s=self.settings.role_poll_interval_ms / 1000,
                    stats=self.stats,
                    on_taken=self._role_taken,
                )
                self._role.claim()
            except BaseException:
                if self._network is None:
                    # Nothing was served under the id this open chose for a new directory
                    # (the bind failed): take it back, or a retry with --node-id is refused.
                    self._replica.forget_new_node_id()
                self.close()
                raise

    # -- identity and lifecycle ----------

    @property
    def node_id(self) -> str:
        return self._replica.node_id

    @property
    def replica(self) -> LMDBReplica:
        """The LMDB replica, for the sync engine (implements ``sync.replica.Replica``)."""
        return self._replica

    @property
    def has_network_role(self) -> bool:
        return self._role is not None and self._role.held

    @property
    def topics(self) -> frozenset[str] | None:
        """The namespaces this directory replicates (None: all), as declared by whichever
        process opened it with ``topics``; every process sharing the directory obeys it."""
        if self.settings.topics is not None:
            return frozenset(self.settings.topics)
        now = time.monotonic()
        cached = self._topics_cache
        if cached is None or now - cached[1] > TOPICS_RECHECK_S:
            # Re-read now and then, not on every view: a declaration is rare, and this
            # sits on the path of every lww_map() / or_set() call.
            stored = self._replica.topics()
            cached = self._topics_cache = (None if stored is None else frozenset(stored), now)
        return cached[0]

    @property
    def router_address(self) -> str | None:
        """The address peers reach this node on (None until it holds the network role)."""
        network = self._network
        return None if network is None else network.router_address

    def network_status(self) -> dict[str, Any] | None:
        """This process's newest live status as role holder (what ``status.json`` holds,
        refreshed every ``status_interval_ms``); None without the role, or before the first."""
        network = self._network
        return None if network is None else network.last_status

    def network_loop_age_s(self) -> float | None:
        """Seconds since the replicator's loop last went round (None without the role): how
        a supervisor tells a node that holds the role but no longer serves it."""
        network = self._network
        return None if network is None else time.monotonic() - network.loop_beat

    def map_use(self) -> tuple[int, int]:
        """Bytes of the directory's LMDB map in use, and the map's current size."""
        self._check()
        return self._replica.map_use()

    def members(self) -> list[Member]:
        """Members as seen locally, with status, sorted by id; this node included.

        In every process sharing the directory, the statuses are those of the failure
        detector of the process holding the network role (which keeps its view in the
        directory), within one ``member_view_interval_ms``. While no process holds the
        role, or its holder stopped updating the view, no other member is claimed alive:
        each reads ``unknown``, with when it was last heard and observed;
        :meth:`member_view` says why the view is stale.
        """
        return self.member_view().members

    def member_view(self) -> MemberView:
        """:meth:`members`, with whose failure detector they come from and whether its
        view is current (``stale`` is None) or why not."""
        self._check()
        now = wall_ms()
        network = self._network
        if network is not None:
            members = list(network.members())
            return MemberView(members, None, os.getpid(), network.router_address, now)
        return self._members.view(self.node_id, self.settings.topics, self._member_values, now)

    def reload_keys(self) -> None:
        """Re-read the CurveZMQ keys directory (the allow-list of member public keys)."""
        self._check()
        network = self._network
        if network is None:
            raise Error("reload_keys needs a node holding the network role (open with bind)")
        network.transport.reload_keys()

    def watch_members(self, callback: Callable[[StatusChange], None]) -> MemberWatchHandle:
        """Call ``callback(change)`` whenever a member joins, becomes suspect, dead, alive
        again (new incarnation) or leaves, as the failure detector of the process holding
        the directory's network role sees it; in any process sharing the directory.

        While no process holds the role (or its holder stopped updating its view) every
        member not left is reported once as ``MemberStatus.UNKNOWN``. Callbacks run on the
        node's member-watch thread, every ``watch_poll_interval_ms``; ``handle.cancel()``
        stops them.
        """
        self._check()
        return self._members.watch(callback)

    def _member_values(self) -> dict[str, Any]:
        ns = self._replica.namespaces().get(MEMBERS_NAMESPACE)
        if ns is None:
            return {}
        return dict(LWWMapView(self, MEMBERS_NAMESPACE).items())

    def _delete_member(self, key: str) -> None:
        self._write(lambda w: w.delete(MEMBERS_NAMESPACE, key))

    def leave(self) -> None:
        """Announce a graceful leave to the cluster (replicated), then close."""
        network = self._network
        if network is not None:
            network.close(leave=True)
        self.close()

    def _write_member(self, key: str, value: Any) -> None:
        """The replicator's write of its own member record (bypasses the reserved check)."""
        self._replica.namespace_id(MEMBERS_NAMESPACE, LWW)
        self._write(lambda w: w.put(MEMBERS_NAMESPACE, key, value))

    def _attach_network(self, network: Any) -> None:
        """Give the node an object (replicator) to close before the replica closes."""
        self._network = network

    def close(self) -> None:
        """Stop every thread the node started, then close the directory. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._role is not None:
            self._role.stop()
        if self._network is not None:
            try:
                self._network.close()
            finally:
                self._network = None
        self._watcher.stop()
        self._members.close()
        if self._role is not None:
            self._role.release()
        self._replica.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Node({self.node_id!r}, {self.path!r}{', closed' if self._closed else ''})"

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"node {self.path} is closed")

    # -- the network role ----------

    def _role_taken(self) -> None:
        assert self.bind is not None
        replicator = start_replicator(self, self.bind, self.seeds)
        if self._role is not None and replicator.router_address is not None:
            self._role.announce(replicator.router_address)
        self._attach_network(replicator)
        self.on_commit.append(replicator.notify_commit)
        self._run_hooks(self.on_role_acquired, "role_hook_errors")

    def _run_hooks(self, hooks: list[Callable[[], None]], counter: str) -> None:
        for hook in list(hooks):
            try:
                hook()
            except Exception:  # a hook of the network layer; count it and go on
                self.stats[counter] += 1
                log.exception("%s: hook %r failed (counted)", self.path, hook)

    # -- namespaces ----------

    def lww_map(self, name: str) -> LWWMapView:
        """The LWW-map ``name`` (TypeMismatch if it is another type). A namespace that does
        not exist yet reads as empty and is created by its first write, so a misspelt
        name that is only read creates nothing and replicates nothing."""
        self._ensure(name, LWW)
        return LWWMapView(self, name)

    def or_set(self, name: str) -> ORSetView:
        """The OR-Set ``name`` (TypeMismatch if it is another type; created by its first
        write, as :meth:`lww_map`)."""
        self._ensure(name, ORSET)
        return ORSetView(self, name)

    def namespaces(self) -> dict[str, str]:
        """Namespace name -> CRDT type, of every namespace in the directory, except those
        dropped that hold nothing (:meth:`drop`)."""
        self._check()
        dropped = self._replica.dropped_namespaces()
        return {n: t for n, t in self._replica.namespaces().items() if n not in dropped}

    def drop(self, name: str) -> bool:
        """Remove namespace ``name`` everywhere: every entry this node has seen there, here
        at once (rows and logged batches freed) and on every node that replicates it as the
        drop reaches it; False if there is nothing to drop (no namespace ``name`` here, or
        nothing written there since it was dropped).

        A replicated decision made safe by causality, not by a lock: the drop carries this
        node's causal context of ``name`` and removes exactly the writes it covers,
        wherever and whenever it is applied, so every node converges to the same state; a
        write concurrent to the drop (one this node had not seen) survives it
        (:mod:`crdtstore.storage.drops` says why). Not inside :meth:`transaction`."""
        self._check()
        if check_namespace(name).startswith(RESERVED_PREFIX):
            raise InvalidValue(f"namespace {name!r}: names starting with '__' are reserved")
        if self._current() is not None:
            raise Error(f"drop({name!r}) cannot run inside transaction(): it commits alone")
        # Its own commit, never a group's: a drop refuses a namespace written in the same
        # commit, and another thread's write to it may share a group.
        with self.transaction():
            return self._write(lambda w: w.drop_namespace(name))

    def _ensure(self, name: str, type_name: str) -> None:
        self._check()
        if name.startswith(RESERVED_PREFIX) if isinstance(name, str) else False:
            raise InvalidValue(f"namespace {name!r}: names starting with '__' are reserved")
        topics = self.topics
        if topics is not None and name not in topics:
            raise NotReplicated(
                f"namespace {name!r} is not among this node's topics {sorted(topics)}"
            )
        w = self._current()
        if w is None:
            self._replica.existing_namespace(name, type_name)
            return
        found = w.lookup(check_namespace(name))
        if found is not None and found[1] != type_name:
            raise TypeMismatch(f"namespace {name!r} holds a {found[1]}, not a {type_name}")

    # -- transactions ----------

    def _current(self) -> LocalWrite | None:
        return getattr(self._tls, "write", None)

    @contextmanager
    def transaction(self) -> Iterator[Node]:
        """Many mutations, one commit, one delta batch per namespace touched.

        Reads inside see the transaction's writes. An exception inside aborts every
        mutation of the transaction. Nested ``transaction()`` blocks join the outer one.
        The transaction belongs to this thread (other threads do not see it until commit,
        and their own writes wait for it: keep transactions short).
        """
        self._check()
        if self._current() is not None:
            yield self
            return
        w = self._replica.begin_local()
        self._tls.write = w
        try:
            yield self
        except BaseException:
            w.abort()
            raise
        else:
            committed = w.commit(durable=False)
        finally:
            self._tls.write = None
        try:
            self._replica.make_durable(committed.ticket)
        except Error:
            # Committed, only its flush failed: every reader sees the changes, so the
            # watchers and publication hear of them (as for a group); the caller is told.
            self.stats["transaction_flush_errors"] += 1
            self._after_commit(committed)
            raise
        self._after_commit(committed)

    def _write(self, fn: Callable[[LocalWrite], T]) -> T:
        """``fn`` in this thread's transaction if it has one, else committed through the
        group commit: with the mutations of other threads that arrive meanwhile, in one
        commit, each returning only once that commit is durable."""
        self._check()
        w = self._current()
        if w is not None:
            return fn(w)
        return self._replica.group.run(fn)

    def _submit(self, fn: Callable[[LocalWrite], T]) -> Future[T]:
        """Queue ``fn`` for the group commit without waiting (an event loop's write);
        some thread that may block must then call :meth:`_lead_writes`."""
        self._check()
        return self._replica.group.submit(fn)

    def _lead_writes(self) -> None:
        """Lead the commit of the writes queued by :meth:`_submit`, unless a thread does."""
        self._replica.group.lead()

    def _settle_writes(self) -> None:
        """Return once every write queued by :meth:`_submit` so far is settled, even one
        that another thread's group took and is committing."""
        self._replica.group.settle()

    def _after_commit(self, committed: Committed) -> None:
        if committed.changed:
            self._watcher.wake()
        if committed.namespaces:
            self._run_hooks(self.on_commit, "commit_hook_errors")

    # -- reads ----------

    def _row(self, view: _NamespaceView, key: Any) -> list[list[Any]] | None:
        """The dots of one key (raises for an invalid key): the fast path of get / in."""
        if self._closed:
            raise ClosedError(f"node {self.path} is closed")
        if self._tls.__dict__.get("write") is not None:  # sees this thread's transaction
            return self._dots(view._name, view.TYPE, encode_key(key, self.settings))
        prefix = view._prefix
        if prefix is None:
            # Resolved outside any transaction, then kept: namespace ids never change.
            ns_id = self._replica.existing_namespace(view._name, view.TYPE)
            if ns_id is None:
                return None  # not created yet: absent, and reading creates nothing
            prefix = view._prefix = ns_prefix(ns_id)
        kt = type(key)
        # Only keys of these exact types are remembered: a dict would take True or 1.0 for 1.
        if kt is str or kt is bytes or kt is int:
            suffix = self._suffixes.get(key)
            if suffix is None:
                suffix = row_key_suffix(encode_key(key, self.settings))
                if len(self._suffixes) >= ROW_KEY_MEMO_MAX:
                    self._suffixes.clear()
                self._suffixes[key] = suffix
        else:
            suffix = row_key_suffix(encode_key(key, self.settings))
        data = self._replica.get_row(prefix + suffix)
        return None if data is None else row_dots(data)

    def _dots(self, name: str, type_name: str, ekey: bytes) -> list[list[Any]] | None:
        self._check()
        w = self._current()
        if w is not None:
            return w.dots(name, ekey)
        ns_id = self._replica.existing_namespace(name, type_name)
        if ns_id is None:
            return None
        return self._replica.read_dots(ns_id, ekey)

    def _count(self, name: str, type_name: str) -> int:
        self._check()
        w = self._current()
        if w is not None:
            return w.count(name)
        ns_id = self._replica.existing_namespace(name, type_name)
        if ns_id is None:
            return 0
        return self._replica.count_live(ns_id)

    def _rows(self, name: str, type_name: str) -> Iterator[tuple[Any, list[list[Any]]]]:
        """Every live row, in chunks of ``iter_chunk`` per read transaction."""
        after: bytes | None = None
        limit = self.settings.iter_chunk
        while True:
            self._check()
            w = self._current()
            if w is not None:
                chunk = w.scan(name, after, limit)
            else:
                ns_id = self._replica.existing_namespace(name, type_name)
                if ns_id is None:
                    return
                chunk = self._replica.scan_rows(ns_id, after, limit)
            for _, key, dots in chunk:
                yield key, dots
            if len(chunk) < limit:
                return
            after = bytes(chunk[-1][0])

    # -- changes ----------

    def watch(self, namespace: str | None, callback: Callable[[Change], None]) -> WatchHandle:
        """Call ``callback(change)`` for every later change (local, remote, other processes)
        of ``namespace`` (None: every namespace), on the node's watcher thread."""
        self._check()
        return self._watcher.subscribe(namespace, callback)

    def changes(self, namespace: str | None = None, maxsize: int = 100_000) -> ChangeFeed:
        """An iterator over later changes (see :meth:`watch`); ``feed.get(timeout)`` polls."""
        self._check()
        return ChangeFeed(self._watcher, namespace, maxsize)


__all__ = ["Node", "open", "start_replicator"]
