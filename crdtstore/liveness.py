"""The failure detector's own thread: heartbeats out, heartbeats in, ticks, the directory's view.

Theory of operation. Whether a member is alive must not depend on how busy its replicator
is. The replicator's thread applies batches (each a durable commit), bootstraps (one
transaction of a million entries) and answers repair; a heartbeat sent from it, or
received behind the deliveries queued for it, waits for all of that, and peers took a
member busy with a large apply for a dead one. So liveness has a path of its own:

- this module's thread publishes the heartbeats and ticks the detector, and reads
  heartbeats from the transport's express pipe (``Transport.recv_express``), which never
  carries replication traffic; it touches neither the replica nor the sync engine;
- a detector tick comes after every heartbeat already received, so a thread that was
  itself held up counts what arrived meanwhile before judging anyone silent; and one
  that was held up longer than two ticks stretches its timeouts (Lifeguard's local
  health, in :class:`~crdtstore.membership.FailureDetector`);
- the view it holds is written into the directory (:mod:`crdtstore.storage.member_view`)
  at once on every status change and at least every ``member_view_interval_ms``
  otherwise, so processes without the network role see what this one sees. A second
  thread writes it: a write to a file may wait (the kernel throttles a process that
  dirties pages while the disk is busy with another's fsyncs), a heartbeat must not.

The replicator reaches the detector only through the methods here, which take one lock:
it learns members from the replicated records (``add``, ``forget``) and takes the status
changes made on this thread (``take_changes``) to act on them on its own thread (engine
peers, connections). A refutation raises the incarnation here at once (the next
heartbeat carries it); the replicator then rewrites its member record
(``take_refutation``), a durable write this thread must not wait for.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from crdtstore.errors import DecodeError, Error
from crdtstore.membership import FailureDetector, MemberStatus, StatusChange
from crdtstore.membership.messages import Heartbeat
from crdtstore.membership.observed import Observation, ViewStamp
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.sync.messages import decode_message, encode_message
from transport import Delivery

log = logging.getLogger(__name__)

DRAIN_MAX = 1024
"""Heartbeats handled before the next tick at most: after a stall, what arrived meanwhile
is counted first, but a flood cannot keep the detector from ticking."""


class LivenessTransport(Protocol):
    """What liveness needs of the transport (``transport.Transport`` has it)."""

    def publish(self, topic: bytes, payload: bytes) -> None: ...

    def recv_express(self, timeout: float | None) -> Delivery | None: ...

    def io_stall_ms(self) -> int: ...


class Liveness:
    """Owns one node's failure detector, on a thread of its own. Thread-safe."""

    def __init__(
        self,
        *,
        node_id: str,
        transport: LivenessTransport,
        heartbeat_topic: bytes,
        heartbeat_interval_ms: int,
        suspect_after_ms: int,
        dead_after_ms: int,
        view_interval_ms: int,
        view: MemberViewStore | None,
        clock: Callable[[], int],
        on_heartbeat: Callable[[Heartbeat, int], None] | None = None,
        heartbeat_clocks: Callable[[], dict[str, int]] | None = None,
        on_news: Callable[[], None] | None = None,
    ) -> None:
        """``on_heartbeat(beat, now)`` sees each accepted heartbeat (its clock reading) on
        this thread; ``heartbeat_clocks()`` names the members whose clocks are beyond the
        limit of ours, with their offsets, for each heartbeat we send (so each is told).
        ``on_news()`` is called on this thread when something waits to be taken (status
        changes, a refutation, links): the replicator waits for its own deadlines, so it
        is woken to act on them at once."""
        self.node_id = node_id
        self._transport = transport
        self._topic = heartbeat_topic
        self._interval = heartbeat_interval_ms
        self._view_interval = view_interval_ms
        self._view = view
        self._clock = clock
        self._on_heartbeat = on_heartbeat
        self._heartbeat_clocks = heartbeat_clocks
        self._on_news = on_news
        self.stats: Counter[str] = Counter()
        self._detector = FailureDetector(
            suspect_after_ms=suspect_after_ms,
            dead_after_ms=dead_after_ms,
            tick_interval_ms=heartbeat_interval_ms,
        )
        self._lock = threading.Lock()  # the detector, the incarnation, the queues below
        self._view_lock = threading.Lock()  # one view write at a time, in order
        self._incarnation = 0
        self._router: str | None = None
        self._changes: list[StatusChange] = []  # made on this thread, for the replicator
        self._unlogged: list[StatusChange] = []  # every change, until the view logs it
        self._refuted: int | None = None
        self._next_beat = 0
        self._next_view = 0
        self._view_due = threading.Event()  # a status change waits to be written
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, incarnation: int, router: str | None) -> None:
        self._incarnation = incarnation
        self._router = router
        for target, role in ((self._run, "liveness"), (self._run_view, "member-view")):
            thread = threading.Thread(
                target=target, name=f"crdtstore-{role}-{self.node_id}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        """Stop the threads; tell readers of the view that this holder stopped. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._view_due.set()
        self._wake()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._threads:
            self._write_view(self._clock(), stopped=True)

    def _wake(self) -> None:
        """End the thread's wait for its next deadline now (it waits that long, not a
        short poll: a node's idle cost is mostly its threads' wake-ups)."""
        wake = getattr(self._transport, "wake_express", None)
        if wake is not None:
            wake()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.turn()
            except Exception:  # one bad message or bug must not end failure detection
                self.stats["liveness_errors"] += 1
                log.exception("liveness: error (counted, continuing)")

    def turn(self) -> None:
        """One turn of the thread: a step, then the replicator woken if news waits."""
        self.step()
        if self._on_news is not None and self._has_news():
            self._on_news()

    def _has_news(self) -> bool:
        """Whether something waits for the replicator to take it."""
        with self._lock:
            return bool(self._changes) or self._refuted is not None

    def step(self) -> None:
        """One turn: wait for heartbeats until a beat is due, handle every heartbeat that
        has arrived, then beat and tick if due."""
        self.receive_until(self._next_beat)
        now = self._clock()
        if now >= self._next_beat:
            self._next_beat = now + self._interval
            self.beat(now)
            self.tick(now)

    def receive_until(self, deadline_ms: int) -> None:
        """Wait for express deliveries until ``deadline_ms`` (or a wake), then handle
        every one that has arrived, ``DRAIN_MAX`` at most."""
        wait_ms = max(0, deadline_ms - self._clock())
        delivery = self._transport.recv_express(wait_ms / 1000)
        handled = 0
        while delivery is not None:
            self.on_delivery(delivery, self._clock())
            handled += 1
            if handled >= DRAIN_MAX:
                break
            delivery = self._transport.recv_express(0)

    def _run_view(self) -> None:
        while not self._stop.is_set():
            wait_ms = max(0, self._next_view - self._clock())
            self._view_due.wait(timeout=wait_ms / 1000)
            if self._stop.is_set():
                return
            try:
                self.write_view_if_due(self._clock())
            except Exception:  # a bug here must not end the view's updates
                self.stats["liveness_errors"] += 1
                log.exception("liveness: member view error (counted, continuing)")

    def view_due(self) -> bool:
        """Whether a status change waits to be written into the directory's view."""
        return self._view_due.is_set()

    def write_view_if_due(self, now: int) -> None:
        """Write the view if a status change waits, or an interval passed since the last
        write (what the member-view thread does each time it wakes)."""
        if self._view_due.is_set() or now >= self._next_view:
            self._view_due.clear()
            self._next_view = now + self._view_interval
            self._write_view(now)

    def beat(self, now: int) -> None:
        """Publish this node's heartbeat: its incarnation, and whom it suspects."""
        # Outside the lock: the callback reads this detector through its own methods.
        clocks_off = {} if self._heartbeat_clocks is None else self._heartbeat_clocks()
        with self._lock:
            beat = Heartbeat(
                self.node_id,
                self._incarnation,
                self._detector.suspected(),
                clock_ms=now,
                clocks_off=clocks_off,
            )
        self._transport.publish(self._topic, encode_message(beat))
        self.stats["heartbeats_sent"] += 1

    def tick(self, now: int) -> None:
        with self._lock:
            changes = self._detector.tick(now, self._transport.io_stall_ms())
            self._changes += changes
            self._unlogged += changes
        if changes:
            self._view_due.set()

    def on_delivery(self, delivery: Delivery, now: int) -> None:
        """A publication from the express pipe: a peer's heartbeat, or something refused."""
        try:
            msg = decode_message(delivery.payload)
        except DecodeError as exc:
            self.stats["rejected_heartbeat"] += 1
            log.debug("liveness: undecodable heartbeat from %r: %s", delivery.peer, exc)
            return
        if not isinstance(msg, Heartbeat):
            self.stats["rejected_heartbeat"] += 1
            return
        if msg.node_id == self.node_id:
            return
        if (delivery.peer or b"").decode("utf-8", "replace") != msg.node_id:
            # Each member's SUB is named after it: a heartbeat in another's name, arriving
            # on its PUB, would keep a dead member alive.
            self.stats["rejected_heartbeat_identity"] += 1
            return
        with self._lock:
            changes = self._detector.heard(msg.node_id, msg.incarnation, now)
            self._changes += changes
            self._unlogged += changes
            mine = msg.suspects.get(self.node_id)
            if mine is not None and mine >= self._incarnation:
                # Someone suspects this node at its current incarnation: refute (SWIM) with
                # the next heartbeat, and take it as a sign of this node's own slowness.
                self._incarnation = mine + 1
                self._refuted = self._incarnation
                self._detector.refuted(now)
                self.stats["refutations"] += 1
        if changes:
            self._view_due.set()
        if self._on_heartbeat is not None:
            self._on_heartbeat(msg, now)

    # -- the detector, for the replicator's thread -------------------------------------------

    def add(
        self, node_id: str, incarnation: int, now: int, left: bool = False
    ) -> list[StatusChange]:
        """A member read from the replicated records (see ``FailureDetector.add``)."""
        with self._lock:
            changes = self._detector.add(node_id, incarnation, now, left)
            self._unlogged += changes
        if changes:
            self._view_due.set()
        return changes

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._detector.forget(node_id)

    def known(self) -> list[str]:
        with self._lock:
            return list(self._detector.known())

    def incarnation_of(self, node_id: str) -> int | None:
        """The incarnation the detector last heard ``node_id`` at (None if unknown)."""
        with self._lock:
            return self._detector.incarnation(node_id)

    def status(self, node_id: str) -> MemberStatus | None:
        with self._lock:
            return self._detector.status(node_id)

    def last_heard_ms(self, node_id: str) -> int | None:
        with self._lock:
            return self._detector.last_heard_ms(node_id)

    @property
    def local_health(self) -> int:
        with self._lock:
            return self._detector.local_health

    @property
    def incarnation(self) -> int:
        with self._lock:
            return self._incarnation

    def raise_incarnation(self, at_least: int) -> int:
        """Make the incarnation at least ``at_least``; the incarnation now."""
        with self._lock:
            self._incarnation = max(self._incarnation, at_least)
            return self._incarnation

    def take_changes(self) -> list[StatusChange]:
        """Status changes made on this thread since the last call, in order."""
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def take_refutation(self) -> int | None:
        """The incarnation a refutation raised this node to since the last call, if any."""
        with self._lock:
            refuted, self._refuted = self._refuted, None
        return refuted

    def observations(self) -> dict[str, Observation]:
        with self._lock:
            return self._observations()

    def _observations(self) -> dict[str, Observation]:
        d = self._detector
        out = {}
        for node_id in d.known():
            status, incarnation = d.status(node_id), d.incarnation(node_id)
            since, heard = d.since_ms(node_id), d.last_heard_ms(node_id)
            assert status is not None and incarnation is not None  # known() lists them
            out[node_id] = Observation(status, incarnation, since or 0, heard or 0)
        return out

    # -- the directory's view ----------------------------------------------------------------

    def _write_view(self, now: int, stopped: bool = False) -> None:
        """Write the whole view, and log the changes not logged yet in the order the
        detector made them (whichever thread made them)."""
        if self._view is None:
            return
        with self._view_lock:
            with self._lock:
                observations = self._observations()
                changes, self._unlogged = self._unlogged, []
            stamp = ViewStamp(
                os.getpid(), self.node_id, self._router, now, self._view_interval, stopped
            )
            logged = [(c.node_id, c.old, c.new, c.incarnation) for c in changes]
            try:
                self._view.write(stamp, observations, logged)
            except Error as exc:
                # Readers elsewhere see the view go stale; detection here goes on.
                self.stats["member_view_write_errors"] += 1
                if self.stats["member_view_write_errors"] == 1:
                    log.error("%s (counted; failure detection continues)", exc)
                return
            self.stats["member_view_writes"] += 1
