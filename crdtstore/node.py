"""The public API: ``crdtstore.open()`` and :class:`Node`, with namespace views.

A :class:`Node` owns one :class:`~crdtstore.storage.LMDBReplica` (the directory), the
watcher thread that delivers changes, and, with ``bind``, the network role. Everything it
starts it stops in ``close()``, which is idempotent.

Reads go straight to LMDB (no cache of state), so every process sharing the directory
sees every other's commits at once. Each mutation outside ``transaction()`` returns once
committed; mutations of other threads arriving while a commit is in flight share the next
commit (:mod:`crdtstore.storage.group`). Inside ``transaction()``, all mutations of the
thread share one commit of their own, and reads see them.

Network seam (for the sync engine and transport, attached later): ``node.replica`` is the
:class:`~crdtstore.sync.replica.Replica` the engine drives; ``node.on_commit`` holds
callables run (no arguments) after each local commit that produced delta batches;
``node.on_role_acquired`` holds callables run once this node takes the network role;
``node._attach_network(obj)`` hands over an object whose ``close()`` the node calls first
when it closes. Never open a node before ``fork()`` and use it after.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    MutableMapping,
    MutableSet,
    Sequence,
    Set,
    ValuesView,
)
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from crdtstore.addresses import check_bind, check_seeds
from crdtstore.crdt import check_key
from crdtstore.errors import (
    ClosedError,
    Error,
    InvalidValue,
    NotReplicated,
    RoleHeld,
    TypeMismatch,
)
from crdtstore.membership import MEMBERS_NAMESPACE, StatusChange
from crdtstore.membership.observed import (
    MemberView,
    Observation,
    ViewStamp,
    observed_members,
    staleness,
)
from crdtstore.membership.view import Member, parse_records
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica, LocalWrite, NetworkRole
from crdtstore.storage.inputs import encode_key
from crdtstore.storage.journal import Change
from crdtstore.storage.layout import ns_prefix, row_dots, row_key_suffix
from crdtstore.storage.local import Committed
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.storage.member_watch import MemberWatcher, MemberWatchHandle, pid_running
from crdtstore.storage.namespaces import check_namespace
from crdtstore.storage.rows import winning_value
from crdtstore.storage.watch import ChangeFeed, JournalWatcher, WatchHandle

if TYPE_CHECKING:
    from crdtstore.replicator import Replicator
    from transport import TransportFaults

log = logging.getLogger(__name__)

T = TypeVar("T")
LWW = "lww_map"
RESERVED_PREFIX = "__"
ROW_KEY_MEMO_MAX = 4096
"""Row-key suffixes a node keeps for the keys it last read (about half a MiB for keys of
tens of bytes): the key's encoding and hash are a third of a ``get``, and the same keys
tend to be read again. Only the keys' positions are kept, never state, so every read
still sees the directory as it is."""
TOPICS_RECHECK_S = 1.0
"""How stale this process's view of the directory's declared topics may be."""
ORSET = "or_set"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self._role: NetworkRole | None = None
        self._role_stop = threading.Event()
        self._role_thread: threading.Thread | None = None
        self._view_lock = threading.Lock()
        self._view: MemberViewStore | None = None
        self._member_watcher: MemberWatcher | None = None
        if bind is not None:
            try:
                self._want_role()
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
        now = _wall_ms()
        network = self._network
        if network is not None:
            members = list(network.members())
            return MemberView(members, None, os.getpid(), network.router_address, now)
        stamp, observations, stale = self._read_view(now)
        records, rejected = parse_records(self._member_values())
        self.stats["rejected_member_record"] += rejected
        observed_at = None if stamp is None else stamp.written_at_ms
        members = observed_members(
            self.node_id, records, observations, observed_at, stale is not None
        )
        if not any(m.is_self for m in members):
            # Never networked: the node is a cluster of one, with no addresses yet.
            topics = self.settings.topics
            me = Member(self.node_id, "alive", 0, "", "", topics, None, 0, None, True)
            members = sorted([*members, me], key=lambda m: m.node_id)
        return MemberView(
            members,
            stale,
            None if stamp is None else stamp.pid,
            None if stamp is None else stamp.router,
            observed_at,
        )

    def _read_view(self, now: int) -> tuple[ViewStamp | None, dict[str, Observation], str | None]:
        """The directory's member view: stamp, rows, and why it is stale (or None)."""
        with self._view_lock:
            if self._view is None:
                self._view = MemberViewStore.open_existing(self.path, self.stats)
            view = self._view
            if view is None:
                return None, {}, staleness(None, now, pid_running)
            stamp, observations = view.read()
            stale = staleness(stamp, now, pid_running)
            if stale is not None and view.replaced():
                # A new holder replaced a damaged file: read the new one from now on.
                view.close()
                self._view = None
            return stamp, observations, stale

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
        with self._view_lock:
            if self._member_watcher is None:
                self._member_watcher = MemberWatcher(
                    self.path,
                    self.stats,
                    self.settings.watch_poll_interval_ms / 1000,
                    _wall_ms,
                    pid_running,
                )
            watcher = self._member_watcher
        return watcher.subscribe(callback)

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
        self._role_stop.set()
        if self._role_thread is not None:
            self._role_thread.join()
        if self._network is not None:
            try:
                self._network.close()
            finally:
                self._network = None
        self._watcher.stop()
        with self._view_lock:
            member_watcher, self._member_watcher = self._member_watcher, None
            view, self._view = self._view, None
        if member_watcher is not None:  # outside the lock: a callback may read members()
            member_watcher.stop()
        if view is not None:
            view.close()
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

    def _want_role(self) -> None:
        self._role = NetworkRole(self.path)
        if self._role.try_acquire():
            self._role_taken()  # a bind failure raises here, from open()
            return
        if not self.settings.role_standby:
            pid, address = self._role.holder()
            raise RoleHeld(
                f"{self.path} is already served by pid {pid or '?'}"
                f"{f' on {address}' if address else ''}: open it without bind to share it "
                "with that process (or with role_standby=True to take over when it stops)"
            )
        interval = self.settings.role_poll_interval_ms / 1000

        def poll() -> None:
            assert self._role is not None
            while not self._role_stop.wait(interval):
                if self._role.try_acquire():
                    log.info("%s: took the network role", self.path)
                    try:
                        self._role_taken()
                    except Error:
                        self.stats["network_start_errors"] += 1
                        log.exception("%s: could not start the network", self.path)
                    return

        self._role_thread = threading.Thread(
            target=poll, name=f"crdtstore-role-{self.node_id}", daemon=True
        )
        self._role_thread.start()

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
            committed = w.commit()
        finally:
            self._tls.write = None
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


def _valid_key(key: object) -> bool:
    try:
        check_key(key)
    except Error:
        return False
    return True


class _NamespaceView:
    """What both views share: the namespace, its cached id, key lookup, iteration, size."""

    __slots__ = ("_name", "_node", "_prefix")
    TYPE: str

    def __init__(self, node: Node, name: str) -> None:
        self._node = node
        self._name = name
        self._prefix: bytes | None = None  # the namespace's row-key prefix, once resolved

    @property
    def name(self) -> str:
        return self._name

    def _lookup(self, key: object) -> list[list[Any]] | None:
        """The live dots of ``key`` (None or [] when absent; invalid keys are absent)."""
        if type(key) is not str and not _valid_key(key):  # every str is a valid key
            return None
        return self._node._row(self, key)

    def __iter__(self) -> Iterator[Any]:
        return (key for key, _ in self._node._rows(self._name, self.TYPE))

    def __len__(self) -> int:
        return self._node._count(self._name, self.TYPE)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} of node {self._node.node_id!r}>"


class LWWMapView(_NamespaceView, MutableMapping[Any, Any]):
    """A live view of one LWW-map namespace: every call reads or writes the directory."""

    __slots__ = ()
    TYPE = LWW

    def __getitem__(self, key: Any) -> Any:
        dots = self._node._row(self, key)
        if dots is None:
            raise KeyError(key)
        return winning_value(dots)  # a row holds a dot at least: none is DecodeError

    def __contains__(self, key: object) -> bool:
        return bool(self._lookup(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        node = self._node
        w = node._tls.__dict__.get("write")
        if w is not None and not node._closed:  # in this thread's transaction: the hot path
            w.put(self._name, key, value)
        else:
            self._node._write(lambda w: w.put(self._name, key, value))

    def __delitem__(self, key: Any) -> None:
        if not self._node._write(lambda w: w.delete(self._name, key)):
            raise KeyError(key)

    # MutableMapping's compound methods, each in one transaction: one commit and one delta
    # batch, all or nothing (a bad value halfway through an update writes none of it), and
    # no other writer between its read and its write (pop, setdefault).

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        with self._node.transaction():
            MutableMapping.update(self, other, **kwds)

    def clear(self) -> None:
        with self._node.transaction():
            for key in list(self):
                del self[key]

    def pop(self, key: Any, *default: Any) -> Any:
        with self._node.transaction():
            return MutableMapping.pop(self, key, *default)

    def popitem(self) -> tuple[Any, Any]:
        with self._node.transaction():
            return MutableMapping.popitem(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self._node.transaction():
            return MutableMapping.setdefault(self, key, default)

    def items(self) -> ItemsView[Any, Any]:
        return _Items(self)

    def values(self) -> ValuesView[Any]:
        return _Values(self)

    def _items(self) -> Iterator[tuple[Any, Any]]:
        for key, dots in self._node._rows(self._name, LWW):
            yield key, winning_value(dots)


class _Items(ItemsView[Any, Any]):
    _mapping: LWWMapView

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._items()


class _Values(ValuesView[Any]):
    _mapping: LWWMapView

    def __iter__(self) -> Iterator[Any]:
        return (value for _, value in self._mapping._items())


class ORSetView(_NamespaceView, MutableSet[Any]):
    """A live view of one OR-Set namespace: every call reads or writes the directory."""

    __slots__ = ()
    TYPE = ORSET

    def __contains__(self, element: object) -> bool:
        return bool(self._lookup(element))

    def add(self, element: Any) -> None:
        node = self._node
        w = node._tls.__dict__.get("write")
        if w is not None and not node._closed:  # in this thread's transaction: the hot path
            w.add(self._name, element)
        else:
            self._node._write(lambda w: w.add(self._name, element))

    def discard(self, element: Any) -> None:
        self._node._write(lambda w: w.remove(self._name, element))

    def remove(self, element: Any) -> None:
        if not self._node._write(lambda w: w.remove(self._name, element)):
            raise KeyError(element)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        """What ``s | t``, ``s & t``, ``s - t`` and ``s ^ t`` return: a plain set, a
        snapshot (a view is of a namespace, and cannot be built from elements)."""
        return set(it)

    # MutableSet's compound methods, each in one transaction (see LWWMapView.update).

    def clear(self) -> None:
        with self._node.transaction():
            for element in list(self):
                self.discard(element)

    def pop(self) -> Any:
        with self._node.transaction():
            return MutableSet.pop(self)

    def __ior__(self, it: Set[Any]) -> ORSetView:  # type: ignore[misc]  # as typeshed's
        return self._in_one_transaction(MutableSet.__ior__, it)

    def __iand__(self, it: Set[Any]) -> ORSetView:
        return self._in_one_transaction(MutableSet.__iand__, it)

    def __ixor__(self, it: Set[Any]) -> ORSetView:  # type: ignore[misc]  # as typeshed's
        return self._in_one_transaction(MutableSet.__ixor__, it)

    def __isub__(self, it: Set[Any]) -> ORSetView:
        return self._in_one_transaction(MutableSet.__isub__, it)

    def _in_one_transaction(self, op: Callable[[Any, Set[Any]], Any], it: Set[Any]) -> ORSetView:
        with self._node.transaction():
            op(self, it)
        return self


__all__ = ["LWWMapView", "Node", "ORSetView", "open"]


def start_replicator(node: Node, bind: str, seeds: Sequence[str]) -> Replicator:
    """Build the node's replicator from its settings and start it (binds, or raises).

    Here, not in :mod:`crdtstore.replicator`, because it reads the node: the replicator
    is handed callables and never sees a Node. Its imports are local so that a
    local-only node never loads zmq."""
    from crdtstore.replicator import (
        STATUS_FILE,
        Replicator,
        derive_pub_address,
        parse_seed,
    )
    from transport import load_keys

    settings = node.settings
    curve = None
    if settings.secret_key is not None and settings.keys_dir is not None:
        curve = load_keys(settings.secret_key, settings.keys_dir)
    parsed = [parse_seed(seed, settings.keys_dir) for seed in seeds]
    if curve is not None and any(key is None for _, key in parsed):
        raise Error("with CURVE keys configured every seed must be given as KEYNAME@ADDR")
    previous = node._member_values().get(node.node_id)
    incarnation = 1
    if isinstance(previous, dict) and isinstance(previous.get("incarnation"), int):
        incarnation = previous["incarnation"] + 1  # a restart outranks the old self
    member_view = MemberViewStore.open_for_writing(node.path, node.stats)
    try:
        replicator = Replicator(
            replica=node.replica,
            write_own_record=lambda r: node._write_member(r.node_id, r.to_value()),
            delete_record=node._delete_member,
            read_records=node._member_values,
            bind=bind,
            pub_bind=settings.pub_bind or derive_pub_address(bind),
            seeds=parsed,
            settings=settings,
            sync_settings=settings.sync,
            transport_settings=settings.transport,
            curve=curve,
            topics=node.topics,
            status_path=os.path.join(node.path, STATUS_FILE),
            extra_stats=lambda: dict(node.stats),
            member_view=member_view,
            clock=node.replica.now_ms,
            faults=node._faults,
        )
    except BaseException:
        member_view.close()
        raise
    try:
        replicator.start(incarnation)
    except BaseException:
        replicator.close()
        raise
    return replicator
