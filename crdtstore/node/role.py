"""The network role of a node opened with ``bind``: claiming it, and starting the
replicator once it is held.

Invariants:

- At most one process serves a directory: the role is an exclusive lock on it
  (:class:`~crdtstore.storage.NetworkRole`), and the replicator starts only once the lock
  is held.
- A claim refused at open raises :class:`~crdtstore.errors.RoleHeld` naming the holder,
  unless ``role_standby``: then one thread polls the lock every ``role_poll_interval_ms``
  and starts the network the moment the holder stops; :meth:`RoleClaim.stop` ends and
  joins it, before the node closes anything that thread may use.
- A local-only node never loads zmq: the replicator's and transport's imports are made
  only when a replicator starts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from crdtstore.errors import Error, RoleHeld
from crdtstore.storage import NetworkRole
from crdtstore.storage.member_view import MemberViewStore

if TYPE_CHECKING:
    from crdtstore.node.api import Node
    from crdtstore.replicator import Replicator

log = logging.getLogger(__name__)


class RoleClaim:
    """One node's claim on its directory's network role. ``on_taken`` starts the network;
    at open its error is the caller's, on the standby thread it is counted and logged."""

    def __init__(
        self,
        path: str,
        node_id: str,
        *,
        standby: bool,
        poll_interval_s: float,
        stats: Counter[str],
        on_taken: Callable[[], None],
    ) -> None:
        self._path = path
        self._node_id = node_id
        self._standby = standby
        self._poll_interval_s = poll_interval_s
        self._stats = stats
        self._on_taken = on_taken
        self._lock = NetworkRole(path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._lock.held

    def claim(self) -> None:
        """Take the role and start the network now (raising what that raises), or raise
        RoleHeld, or (standby) wait for it on a thread of its own."""
        if self._lock.try_acquire():
            self._on_taken()  # a bind failure raises here, from open()
            return
        if not self._standby:
            pid, address = self._lock.holder()
            raise RoleHeld(
                f"{self._path} is already served by pid {pid or '?'}"
                f"{f' on {address}' if address else ''}: open it without bind to share it "
                "with that process (or with role_standby=True to take over when it stops)"
            )
        self._thread = threading.Thread(
            target=self._poll, name=f"crdtstore-role-{self._node_id}", daemon=True
        )
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            if self._lock.try_acquire():
                log.info("%s: took the network role", self._path)
                try:
                    self._on_taken()
                except Error:
                    self._stats["network_start_errors"] += 1
                    log.exception("%s: could not start the network", self._path)
                return

    def announce(self, address: str) -> None:
        """Name the address served on, for whoever is refused the role."""
        self._lock.announce(address)

    def stop(self) -> None:
        """End the standby thread, if any, and wait for it. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def release(self) -> None:
        self._lock.release()


def start_replicator(node: Node, bind: str, seeds: Sequence[str]) -> Replicator:
    """Build the node's replicator from its settings and start it (binds, or raises).

    Here, not in :mod:`crdtstore.replicator`, because it reads the node: the replicator
    is handed callables and never sees a Node. Its imports are local so that a
    local-only node never loads zmq."""
    from crdtstore.addresses import derive_pub_address
    from crdtstore.network.status import STATUS_FILE
    from crdtstore.replicator import Replicator, parse_seed
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
