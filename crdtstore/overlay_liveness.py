"""The overlay membership protocol's own thread: probes in and out, ticks, links, the view.

Theory of operation. Whether a member is alive must not depend on how busy its replicator
is. The replicator's thread applies batches (each a durable commit), bootstraps (one
transaction of a million entries) and answers repair; a probe answered from it, or
received behind the deliveries queued for it, waits for all of that, and peers would take
a member busy with a large apply for a dead one. So this module runs the sans-I/O
:class:`~crdtstore.membership.protocol.MembershipProtocol` on a thread of its own, fed by
the transport's express pipe (``Transport.recv_express``, channel ``O``), which never
carries replication traffic; it touches neither the replica nor the sync engine. It owns
every connection of the node:

- a neighbour (the protocol's active view) gets a DEALER and a SUB (``connect_peer``
  with both addresses); the replicator hears of it (``take_neighbour_events``) to add it
  to the sync engine and greet it;
- any other member this thread must reach (a probe on behalf of a neighbour, a shuffle
  reply, a reconnection attempt) gets a DEALER only, closed once idle for
  ``3 * probe_interval_ms``; that bounds a node's connections by the active view's size
  plus the few exchanges of the last seconds, whatever the cluster's size.

The view it holds is written into the directory (:mod:`crdtstore.storage.member_view`) at
once on every status change and at least every ``member_view_interval_ms`` otherwise, so
processes without the network role see what this one sees, by a thread of its own
(:mod:`crdtstore.storage.member_view_writer`): a write may wait, a probe's answer must not.

The replicator reaches the protocol only through the methods here. It tells the protocol
of members read from the replicated records (``learn``) and takes what was decided on
this thread (``take_changes``, ``take_neighbour_events``) to act on it on its own thread
(engine peers, hellos). A refutation raises the incarnation here at once (the next probe
answer carries it); the replicator then rewrites its member record (``take_refutation``),
a durable write this thread must not wait for.

Invariants: the protocol object, the connection bookkeeping and the queues for the
replicator are touched only under ``_lock``. Nothing here touches the replica or the sync
engine. What a frame's sender id makes this thread keep (when it was last heard) is kept
for members of the protocol's table only: the id is a claim (any client chooses its
routing id unless CURVE is on).

Why one module of ~600 lines: the connection bookkeeping (neighbours, topic links,
transient and seed connections) and the protocol's commands share one lock and one
order of effects (connections before sends, see ``_run_commands``); split apart, each
half would need the other's lock held across calls. The view's writer, which shares
nothing but a snapshot, is apart.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from crdtstore.errors import DecodeError
from crdtstore.membership import MemberStatus, StatusChange
from crdtstore.membership.observed import Observation
from crdtstore.membership.protocol import (
    SEED_PREFIX,
    ClockReading,
    MembershipProtocol,
    NeighbourDown,
    NeighbourUp,
    ProtocolSettings,
    Refuted,
    Send,
)
from crdtstore.membership.records import MemberRecord
from crdtstore.membership.seeds import SeedWatch
from crdtstore.membership.wire import Contact, Join, NeighborReply
from crdtstore.storage.member_view import MemberViewStore
from crdtstore.storage.member_view_writer import MemberViewWriter
from crdtstore.sync.messages import decode_message, encode_message
from transport import Delivery

log = logging.getLogger(__name__)

CHANNEL_OVERLAY = b"O"
DRAIN_MAX = 1024
"""Messages handled before the next tick at most: after a stall, what arrived meanwhile
is handled first, but a flood cannot keep the protocol from ticking."""


class OverlayTransport(Protocol):
    """What the overlay's thread needs of the transport (``transport.Transport`` has it)."""

    def recv_express(self, timeout: float | None) -> Delivery | None: ...

    def send(self, peer: bytes, payload: bytes) -> None: ...

    def connect_peer(
        self,
        peer: bytes,
        router_addr: str,
        pub_addr: str | None,
        peer_public_key: bytes | None = None,
    ) -> None: ...

    def disconnect_peer(self, peer: bytes) -> None: ...

    def io_stall_ms(self) -> int: ...


def contact_of(record: MemberRecord) -> Contact:
    return Contact(record.node_id, record.router, record.pub, record.public_key, record.incarnation)


class OverlayLiveness:
    """Owns one node's membership protocol, on a thread of its own. Thread-safe."""

    def __init__(
        self,
        *,
        node_id: str,
        transport: OverlayTransport,
        settings: ProtocolSettings,
        seeds: list[tuple[str, bytes | None]],
        view_interval_ms: int,
        view: MemberViewStore | None,
        clock: Callable[[], int],
        rng: random.Random | None = None,
        seed_watch: SeedWatch | None = None,
        on_clock: Callable[[ClockReading], None] | None = None,
        seed_hello: Callable[[], bytes | None] | None = None,
        on_news: Callable[[], None] | None = None,
    ) -> None:
        """``seed_watch``: counts (``seed_unanswered``) and logs seeds that a join asked and
        that never answered. ``on_clock`` sees, on this thread, each member's clock reading
        that a probe or an ack brought. ``seed_hello``: the frame of the node's hello, sent
        with each join to such a seed: a seed of an earlier release's full-mesh mode drops
        joins unread, but answers a hello with why it refuses. ``on_news()`` is called on
        this thread when something waits to be taken (status changes, a refutation, links
        gained or lost): the replicator waits for its own deadlines, so it is woken to act
        on them at once."""
        self.node_id = node_id
        self._net: OverlayTransport = transport
        self._clock = clock
        self._on_news = on_news
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()  # the protocol, the connections, the queues below
        self._incarnation = 0
        self._changes: list[StatusChange] = []  # made on this thread, for the replicator
        self._unlogged: list[StatusChange] = []  # every change, until the view logs it
        self._refuted: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._settings = settings
        self._seeds = seeds
        self._rng = rng or random.Random()
        self._protocol: MembershipProtocol | None = None
        self._neighbours: dict[str, Contact] = {}
        self._pinned: dict[str, Contact] = {}  # links kept for a topic's sake
        self._transient: dict[str, int] = {}  # node id -> last use (ms)
        self._seed_aliases: set[str] = set()
        self._events: list[NeighbourUp | NeighbourDown] = []
        self._heard_at: dict[str, int] = {}
        self._seed_watch = seed_watch
        self._on_clock = on_clock
        self._seed_hello = seed_hello
        self._writer = MemberViewWriter(
            node_id=node_id,
            view=view,
            interval_ms=view_interval_ms,
            snapshot=self._view_snapshot,
            clock=clock,
            stats=self.stats,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start_overlay(self, me: MemberRecord) -> None:
        """Start the protocol as ``me`` (this node's record), then the threads."""
        now = self._clock()
        seeds = [
            Contact(SEED_PREFIX + addr, addr, addr, None if key is None else key.decode(), 0)
            for addr, key in self._seeds
            if addr != me.router
        ]
        with self._lock:
            self._incarnation = me.incarnation
            self._protocol = MembershipProtocol(
                contact_of(me), self._settings, self._rng, now, seeds
            )
        self.start(me.incarnation, me.router)

    def start(self, incarnation: int, router: str | None) -> None:
        self._incarnation = incarnation
        self._writer.router = router
        thread = threading.Thread(
            target=self._run, name=f"crdtstore-overlay-{self.node_id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        self._writer.start()

    def close(self) -> None:
        """Stop the threads; tell readers of the view that this holder stopped. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        for thread in self._threads:
            thread.join(timeout=5)
        self._writer.close()

    def _wake(self) -> None:
        """End the thread's wait for its next deadline now (it waits that long, not a
        short poll: a node's idle cost is mostly its threads' wake-ups)."""
        wake = getattr(self._net, "wake_express", None)
        if wake is not None:
            wake()

    def prepare_leave(self) -> None:
        """This node is about to write its record as left: from now on a claim that it
        left is its own, not one to refute. Without this, peers that read the record
        before the leave's gossip said "left" back, this node refuted at a higher
        incarnation, its record followed, and so on until the leave went out (seen:
        sixteen lives spent on one leave)."""
        with self._lock:
            if self._protocol is not None:
                self._protocol.leaving = True

    def leave(self) -> None:
        """Tell the neighbours this node leaves (before the transport closes)."""
        with self._lock:
            if self._protocol is None:
                return
            self._run_commands(self._protocol.leave(self._clock()))

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.turn()
            except Exception:  # one bad message or bug must not end failure detection
                self.stats["liveness_errors"] += 1
                log.exception("overlay: error (counted, continuing)")

    def turn(self) -> None:
        """One turn of the thread: a step, then the replicator woken if news waits."""
        self.step()
        if self._on_news is not None and self._has_news():
            self._on_news()

    def step(self) -> None:
        """Handle what arrived until the protocol's next deadline, then tick it if due: a
        tick comes after every message already received, so a thread that was itself held
        up counts what arrived meanwhile before judging anyone silent."""
        with self._lock:
            deadline = 0 if self._protocol is None else self._protocol.next_deadline()
        self.receive_until(deadline)
        now = self._clock()
        with self._lock:
            if self._protocol is not None and now >= self._protocol.next_deadline():
                stall = self._net.io_stall_ms()
                self._run_commands(self._protocol.tick(now, io_stall_ms=stall))
                self._close_idle(now)
                # The protocol's own counters (suspicions raised, indirect probes, acks
                # refused), shown with this thread's (its "refutations" are this thread's).
                for name, count in self._protocol.stats.items():
                    self.stats[name] = count

    def receive_until(self, deadline_ms: int) -> None:
        """Wait for express deliveries until ``deadline_ms`` (or a wake), then handle
        every one that has arrived, ``DRAIN_MAX`` at most."""
        wait_ms = max(0, deadline_ms - self._clock())
        delivery = self._net.recv_express(wait_ms / 1000)
        handled = 0
        while delivery is not None:
            self.on_delivery(delivery, self._clock())
            handled += 1
            if handled >= DRAIN_MAX:
                break
            delivery = self._net.recv_express(0)

    def on_delivery(self, delivery: Delivery, now: int) -> None:
        if delivery.kind != "direct" or not delivery.payload.startswith(CHANNEL_OVERLAY):
            self.stats["rejected_overlay"] += 1
            return
        peer = (delivery.peer or b"").decode("utf-8", "replace")
        try:
            msg = decode_message(delivery.payload[1:])
        except DecodeError as exc:
            self.stats["rejected_overlay"] += 1
            log.debug("overlay: undecodable message from %r: %s", peer, exc)
            return
        with self._lock:
            if self._protocol is None:
                return
            if peer in self._transient:
                self._transient[peer] = now
            replied = isinstance(msg, NeighborReply) and msg.sender.node_id == peer
            if replied and self._seed_watch is not None:
                self._seed_watch.answered(msg.sender.router)  # a seed took our join
            self._run_commands(self._protocol.on_message(peer, msg, now))
            # Kept for members only: a routing id is any client's choice, and one stranger
            # cycling through ids must not grow this map without bound.
            if peer in self._protocol.table:
                self._heard_at[peer] = now

    # -- commands ------------------------------------------------------------------------------

    def _run_commands(self, commands: Sequence[object]) -> None:
        # Connections first: a reply to a new neighbour must leave on the connection it
        # keeps, and one to a dropped neighbour on the connection still open.
        for command in commands:
            if isinstance(command, NeighbourUp):
                self._neighbour_up(command.contact)
            elif isinstance(command, NeighbourDown):
                self._neighbour_down(command.node_id)
        self._readdress_neighbours()
        for command in commands:
            if isinstance(command, Send):
                self._send(command)
            elif isinstance(command, StatusChange):
                self._changes.append(command)
                self._unlogged.append(command)
                self._writer.changed()
            elif isinstance(command, Refuted):
                self._incarnation = command.incarnation
                self._refuted = command.incarnation
                self.stats["refutations"] += 1
            elif isinstance(command, ClockReading) and self._on_clock is not None:
                self._on_clock(command)

    def _send(self, command: Send) -> None:
        data = CHANNEL_OVERLAY + encode_message(command.msg)  # type: ignore[arg-type]
        to = command.to
        if isinstance(to, str):
            self._net.send(to.encode(), data)
            return
        node_id = to.node_id
        silent_seed = False
        if node_id.startswith(SEED_PREFIX):
            if isinstance(command.msg, Join):
                silent_seed = self._greeted_seed(to.router)
            if node_id not in self._seed_aliases:
                self._connect(node_id, to.router, None, to.public_key)
                self._seed_aliases.add(node_id)
        elif node_id not in self._neighbours and node_id not in self._pinned:
            if node_id not in self._transient:
                self._connect(node_id, to.router, None, to.public_key)
            self._transient[node_id] = self._clock()
        self._net.send(node_id.encode(), data)
        self.stats["overlay_sent"] += 1
        hello = None if not silent_seed or self._seed_hello is None else self._seed_hello()
        if hello is not None:
            self._net.send(node_id.encode(), hello)

    def _greeted_seed(self, addr: str) -> bool:
        """A join sent to a seed: a wrong address or a seed that is down answers nothing
        while ZeroMQ retries without a word, so a seed silent too long is said. Returns
        whether it is."""
        if self._seed_watch is None:
            return False
        now = self._clock()
        silent_ms = self._seed_watch.greeted(addr, now)
        if silent_ms is None:
            return False
        self.stats["seed_unanswered"] += 1
        if self._seed_watch.should_warn(addr, now):
            log.warning(
                "seed %s has not answered for %.0f s (not running, or not reachable from "
                "here?); still trying",
                addr,
                silent_ms / 1000,
            )
        return True

    def _connect(self, node_id: str, router: str, pub: str | None, key: str | None) -> None:
        try:
            self._net.connect_peer(
                node_id.encode(), router, pub, None if key is None else key.encode()
            )
        except Exception as exc:  # a bad address from a peer must not stop the thread
            self.stats["overlay_connect_errors"] += 1
            log.warning("overlay: cannot connect to %s at %s: %s", node_id, router, exc)

    def _neighbour_up(self, contact: Contact) -> None:
        self._transient.pop(contact.node_id, None)
        self._neighbours[contact.node_id] = contact
        self._connect(contact.node_id, contact.router, contact.pub, contact.public_key)
        self._events.append(NeighbourUp(contact))
        self.stats["neighbours_up"] += 1

    def _readdress_neighbours(self) -> None:
        """Follow a neighbour that came back as a new life while still in the active view.

        A member restarted before it was declared dead joins again and is taken back in
        place: the protocol swaps its contact and reports no NeighbourUp, as the set of
        neighbours did not change. Its new life has a new PUB port (and may have new
        addresses or key): the old SUB would hear nothing of it again, so its writes would
        reach this node only by repair, and never be relayed. Reconnected here, and told
        to the replicator as a new neighbour (a hello: its clock and versions may differ
        too)."""
        assert self._protocol is not None
        active, table = self._protocol.overlay.active, self._protocol.table
        for node_id, held in list(self._neighbours.items()):
            contact = active.get(node_id)
            if contact is None:
                continue
            # A new life that joined elsewhere is known from gossip or its record only.
            entry = table.get(node_id)
            if entry is not None and entry.contact.incarnation > contact.incarnation:
                contact = entry.contact
            if contact == held:
                continue
            self._neighbours[node_id] = contact
            if (contact.router, contact.pub, contact.public_key) == (
                held.router,
                held.pub,
                held.public_key,
            ) and contact.incarnation <= held.incarnation:
                continue
            if node_id in self._pinned:
                self._pinned[node_id] = contact
            self._connect(node_id, contact.router, contact.pub, contact.public_key)
            self._events.append(NeighbourUp(contact))
            self.stats["neighbours_readdressed"] += 1

    def _neighbour_down(self, node_id: str) -> None:
        if self._neighbours.pop(node_id, None) is None:
            return
        if node_id not in self._pinned:
            # Closed once idle, not now: what was just queued for it (the Disconnect that
            # ended the link, a leave) would die with a socket closed at linger 0.
            self._transient[node_id] = self._clock()
        self._events.append(NeighbourDown(node_id))
        self.stats["neighbours_down"] += 1

    def _close_idle(self, now: int) -> None:
        limit = 3 * self._settings.probe_interval_ms
        for node_id, used in list(self._transient.items()):
            if now - used > limit:
                del self._transient[node_id]
                self._net.disconnect_peer(node_id.encode())
        if self._neighbours and self._seed_aliases:
            for alias in self._seed_aliases:
                self._net.disconnect_peer(alias.encode())
                self.stats["seed_connections_closed"] += 1
            self._seed_aliases.clear()

    def _has_news(self) -> bool:
        """Whether something waits for the replicator to take it."""
        with self._lock:
            return bool(self._events) or bool(self._changes) or self._refuted is not None

    # -- the replicator's interface ------------------------------------------------------------

    def take_neighbour_events(self) -> list[NeighbourUp | NeighbourDown]:
        """Links gained and lost since the last call. A NeighbourUp also says that a linked
        member (neighbour or topic link) came back as a new life, connected anew."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def connections(self) -> int:
        with self._lock:
            linked = self._neighbours.keys() | self._pinned.keys()
            return len(linked) + len(self._transient) + len(self._seed_aliases)

    def pin(self, record: MemberRecord) -> None:
        """Keep a DEALER and a SUB to ``record``'s member whether or not it is a
        neighbour (a holder of a topic this node holds; see the replicator)."""
        with self._lock:
            contact = contact_of(record)
            self._pinned[contact.node_id] = contact
            self._transient.pop(contact.node_id, None)
            self._connect(contact.node_id, contact.router, contact.pub, contact.public_key)

    def unpin(self, node_id: str) -> None:
        with self._lock:
            if self._pinned.pop(node_id, None) is not None and node_id not in self._neighbours:
                self._transient[node_id] = self._clock()

    def pinned(self) -> set[str]:
        with self._lock:
            return set(self._pinned)

    def relay_sources(self) -> frozenset[str]:
        """The links whose publications may carry batches of any origin: topic links
        (made to replicated records only) and neighbours connected at the addresses of
        their replicated record. A neighbour that is not (a joiner whose record has not
        arrived, a stranger) is held to its own origin, as any publisher not vouched for
        is (see :mod:`crdtstore.membership.protocol`, admission)."""
        with self._lock:
            if self._protocol is None:
                return frozenset(self._pinned)
            recorded = self._protocol.recorded
            members = (n for n, c in self._neighbours.items() if recorded(c))
            return frozenset(self._pinned).union(members)

    def protocol_stats(self) -> dict[str, int]:
        """The protocol's own counters (admission refusals, refutations, probes...)."""
        with self._lock:
            return {} if self._protocol is None else dict(self._protocol.stats)

    def is_neighbour(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._neighbours

    def neighbours(self) -> list[str]:
        with self._lock:
            return sorted(self._neighbours)

    def learn(self, record: MemberRecord, now: int) -> None:
        """A member record read from replicated state."""
        with self._lock:
            if self._protocol is None:
                return
            held = self._pinned.get(record.node_id)
            if held is not None and held.incarnation < record.incarnation:
                # A topic link's member restarted: its new life publishes on a new port.
                contact = contact_of(record)
                self._pinned[record.node_id] = contact
                if record.node_id not in self._neighbours:
                    self._connect(record.node_id, record.router, record.pub, record.public_key)
                    self._events.append(NeighbourUp(contact))
            self._run_commands(self._protocol.learn(contact_of(record), now, left=record.left))
        self._wake()  # what it learned may be due sooner than this thread's next deadline

    def known(self) -> list[str]:
        with self._lock:
            return (
                []
                if self._protocol is None
                else [n for n in self._protocol.members() if n != self.node_id]
            )

    def contacts(self) -> dict[str, Contact]:
        """Every member the protocol knows (but this node), as it knows it."""
        with self._lock:
            if self._protocol is None:
                return {}
            return {n: e.contact for n, e in self._protocol.table.items() if n != self.node_id}

    def incarnation_of(self, node_id: str) -> int | None:
        with self._lock:
            row = None if self._protocol is None else self._protocol.member(node_id)
        return None if row is None else row[1]

    def status(self, node_id: str) -> MemberStatus | None:
        with self._lock:
            return None if self._protocol is None else self._protocol.status(node_id)

    def last_heard_ms(self, node_id: str) -> int | None:
        with self._lock:
            return self._heard_at.get(node_id)

    @property
    def local_health(self) -> int:
        with self._lock:
            return 0 if self._protocol is None else self._protocol.local_health

    @property
    def incarnation(self) -> int:
        with self._lock:
            return self._incarnation

    def raise_incarnation(self, at_least: int) -> int:
        """Make the incarnation at least ``at_least``; the incarnation now."""
        with self._lock:
            if self._protocol is not None:
                self._run_commands(self._protocol.raise_incarnation(at_least, self._clock()))
                self._wake()
            self._incarnation = max(self._incarnation, at_least)
            return self._incarnation

    def _observations(self) -> dict[str, Observation]:
        if self._protocol is None:
            return {}
        out = {}
        for node_id, (status, incarnation, since) in self._protocol.members().items():
            if node_id == self.node_id:
                continue
            heard = self._heard_at.get(node_id, since)
            out[node_id] = Observation(status, incarnation, since, heard)
        return out

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

    def _view_snapshot(self) -> tuple[dict[str, Observation], list[StatusChange]]:
        """For the member-view writer: the observations, and the changes not logged yet."""
        with self._lock:
            changes, self._unlogged = self._unlogged, []
            return self._observations(), changes
