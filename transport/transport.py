"""``Transport``: the application-side handle of one node's ZeroMQ I/O.

Theory of operation. ``start`` creates a private ``zmq.Context``, the ZAP handler (with
CURVE), two inproc PAIR pipes (three with ``express_topics``), and the I/O thread
(``iothread.IOThread``), which creates, binds and polls every network socket. Application
threads never touch a network socket:

- Commands (publish, send, subscribe, connect_peer, ...) go down the command pipe. Any
  number of application threads may call them; one lock (``_command_lock``) serialises
  their use of the pipe's single socket. ``publish`` and ``send`` never block: if the pipe
  is full the message is dropped and counted (``command_dropped``), the same best effort
  as PUB/SUB itself. Control commands wait for room, at most ``COMMAND_TIMEOUT_MS``.
- Deliveries come up the event pipe. ``recv`` is for ONE consumer thread at a time (a
  lock enforces it); it polls in short slices so ``close`` can take the pipe from it.
- Publications whose topic is one of ``express_topics``, and direct messages whose first
  byte is one of ``express_channels``, come up a pipe of their own, read
  by ``recv_express`` (one consumer thread too): a consumer busy with what ``recv``
  returned (a long apply, an fsync) must not hold back a message whose timing is the
  point, such as a heartbeat, and a full event pipe must not drop one.

Shutdown. ``close`` is idempotent and bounded: it asks the I/O thread to stop, joins it
for at most ``JOIN_TIMEOUT_S``, closes the pipes, stops the ZAP handler and terminates the
context. Every socket has linger 0, so nothing waits on a peer that is gone. If the I/O
thread does not stop in time the context is left unterminated (and logged) rather than
hang the caller.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import zmq

from transport import pipes, routing_id
from transport.counters import Counters
from transport.delivery import Delivery
from transport.errors import TransportError
from transport.faults import TransportFaults
from transport.iothread import Context, IOThread, IOThreadConfig
from transport.security import CurveKeys, KeyAllowList
from transport.settings import TransportSettings
from transport.sockets import Socket

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 5.0
STOP_GRACE_S = 1.0  # for the I/O thread to reach STOP in its command pipe
COMMAND_TIMEOUT_MS = 1000
RECV_SLICE_MS = 500
"""``recv`` re-checks for ``close`` at least this often, should the I/O thread's word that
it stopped be lost (its pipe full): ``close`` waits at most this long for the consumer to
let go of the event pipe. Otherwise a consumer waits for its own deadline, a delivery, a
wake or that word, whichever comes first: an idle node's cost is its threads' wake-ups."""

_instance_ids = itertools.count()


class Transport:
    """ZeroMQ I/O of one node: a ROUTER and a PUB bound locally, a DEALER and a SUB per peer.

    Direct messages: ``send(peer, payload)`` goes out on our DEALER to that peer if we
    connected to it, else through our ROUTER if that peer connected to us; the receiver gets
    ``Delivery("direct", peer=<our identity>, ...)``. Publications: ``publish(topic,
    payload)`` reaches every peer whose SUB is connected to our PUB and subscribed to a
    prefix of ``topic``.
    """

    def __init__(
        self,
        identity: bytes,
        *,
        router_bind: str | None,
        pub_bind: str | None,
        settings: TransportSettings = TransportSettings(),  # noqa: B008 - frozen, shared safely
        curve: CurveKeys | None = None,
        express_topics: frozenset[bytes] = frozenset(),
        faults: TransportFaults | None = None,
        express_channels: frozenset[bytes] = frozenset(),
    ) -> None:
        if not identity:
            raise TransportError("identity must be non-empty bytes")
        if identity.startswith(b"\x00"):
            # libzmq reserves identities starting with NUL for the ones it generates.
            raise TransportError(f"identity must not start with a NUL byte: {identity!r}")
        if len(identity) > routing_id.MAX_IDENTITY_BYTES:
            raise TransportError(
                f"identity is {len(identity)} bytes; at most {routing_id.MAX_IDENTITY_BYTES} "
                f"fit in a routing id: {identity!r}"
            )
        self.identity = identity
        self._router_bind = router_bind
        self._pub_bind = pub_bind
        self._settings = settings
        self._curve = curve
        self._express_topics = express_topics
        self._faults = faults
        self._express_channels = express_channels
        self._counters = Counters()
        self._state_lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._express_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._context: Context | None = None
        self._allow_list: KeyAllowList | None = None
        self._commands: Socket | None = None
        self._events: Socket | None = None
        self._express: Socket | None = None
        self._thread: IOThread | None = None
        self._pollers: dict[str, zmq.Poller] = {}  # pipe -> its poller, used under its lock

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and bind. Raises ``TransportError`` if a bind fails."""
        with self._state_lock:
            if self._closed:
                raise TransportError("transport is closed")
            if self._started:
                raise TransportError("transport already started")
            self._started = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self._context = zmq.Context()
        if self._curve is not None:
            # Before any bind: a CURVE server with no ZAP handler admits every client.
            self._allow_list = KeyAllowList(self._context, self._curve.keys_dir)
            self._allow_list.start()
        name = f"inproc://transport-{next(_instance_ids)}-{id(self):x}"
        self._commands = self._context.socket(zmq.PAIR)
        self._commands.setsockopt(zmq.LINGER, 0)
        self._commands.setsockopt(zmq.SNDTIMEO, COMMAND_TIMEOUT_MS)
        self._commands.bind(name + "-commands")
        self._events = self._context.socket(zmq.PAIR)
        self._events.setsockopt(zmq.LINGER, 0)
        self._events.setsockopt(zmq.RCVHWM, self._settings.rcvhwm)
        self._events.bind(name + "-events")
        express_endpoint = None
        if self._express_topics or self._express_channels:
            express_endpoint = name + "-express"
            self._express = self._context.socket(zmq.PAIR)
            self._express.setsockopt(zmq.LINGER, 0)
            self._express.setsockopt(zmq.RCVHWM, self._settings.rcvhwm)
            self._express.bind(express_endpoint)
        config = IOThreadConfig(
            identity=self.identity,
            router_bind=self._router_bind,
            pub_bind=self._pub_bind,
            settings=self._settings,
            curve=self._curve,
            command_endpoint=name + "-commands",
            event_endpoint=name + "-events",
            express_endpoint=express_endpoint,
            express_topics=self._express_topics,
            faults=self._faults,
            express_channels=self._express_channels,
        )
        self._thread = IOThread(self._context, config, self._counters)
        self._thread.start()
        if not self._thread.ready.wait(STARTUP_TIMEOUT_S):
            raise TransportError(f"transport I/O thread did not start in {STARTUP_TIMEOUT_S} s")
        if self._thread.startup_error is not None:
            raise TransportError(self._thread.startup_error)

    def close(self) -> None:
        """Stop the I/O thread and release every socket. Idempotent; never hangs."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is not None:
            # STOP goes through the command pipe, behind what was sent before close (a
            # leave's last frames): the I/O thread hands those to their sockets first.
            # Setting the flag first ended its loop with them still queued, unsent.
            self._command(pipes.STOP, wait=False)
            thread.join(STOP_GRACE_S)
            thread.stop_requested.set()
            thread.join(JOIN_TIMEOUT_S)
        with self._command_lock:
            if self._commands is not None:
                self._commands.close(linger=0)
        events_closed = self._close_pipe(self._events, self._recv_lock)
        events_closed &= self._close_pipe(self._express, self._express_lock)
        if self._allow_list is not None:
            self._allow_list.stop()
        if self._context is None:
            return
        if (thread is not None and thread.is_alive()) or not events_closed:
            # term() would wait for the sockets still open; leak them rather than hang.
            log.error("transport %r: I/O not stopped in time; context left open", self.identity)
            return
        self._context.term()

    @staticmethod
    def _close_pipe(pipe: Socket | None, lock: threading.Lock) -> bool:
        """Close a delivery pipe once its consumer lets go of it; False if it did not."""
        if pipe is None:
            return True
        if not lock.acquire(timeout=1.0):
            return False
        try:
            pipe.close(linger=0)
        finally:
            lock.release()
        return True

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def bound_router(self) -> str | None:
        """The ROUTER's real endpoint (an ephemeral ``:*`` port resolved); None if unbound."""
        return None if self._thread is None else self._thread.bound_router

    @property
    def bound_pub(self) -> str | None:
        """The PUB's real endpoint (an ephemeral ``:*`` port resolved); None if unbound."""
        return None if self._thread is None else self._thread.bound_pub

    # -- commands --------------------------------------------------------------------------

    def _command(self, op: bytes, *args: bytes, wait: bool = True) -> bool:
        """Hand a command to the I/O thread. With ``wait`` False, a full pipe returns False."""
        with self._command_lock:
            if self._commands is None or self._commands.closed:
                return False
            try:
                self._commands.send_multipart([op, *args], 0 if wait else zmq.NOBLOCK)
            except zmq.Again:
                return False
            return True

    def _control(self, op: bytes, *args: bytes) -> None:
        self._check_running()
        if not self._command(op, *args):
            raise TransportError(f"transport I/O thread did not take command {op!r}")

    def _check_running(self) -> None:
        if not self._started:
            raise TransportError("transport not started")
        if self._closed:
            raise TransportError("transport is closed")

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Publish ``[topic, payload]`` on our PUB. Best effort; never blocks or raises."""
        if not self._command(pipes.PUBLISH, topic, payload, wait=False):
            self._counters.add("command_dropped")

    def send(self, peer: bytes, payload: bytes) -> None:
        """Send ``payload`` to ``peer`` point to point. Best effort; never blocks or raises.

        Uses our DEALER to ``peer`` if ``connect_peer`` opened one, else our ROUTER if that
        peer has sent to us; otherwise the message is dropped and counted (``send_dropped``).
        """
        if not self._command(pipes.SEND, peer, payload, wait=False):
            self._counters.add("command_dropped")

    def subscribe(self, topic: bytes) -> None:
        """Receive publications whose topic starts with ``topic``, from every peer."""
        self._control(pipes.SUBSCRIBE, topic)

    def unsubscribe(self, topic: bytes) -> None:
        self._control(pipes.UNSUBSCRIBE, topic)

    def subscribe_peer(self, peer: bytes, topics: Sequence[bytes]) -> None:
        """Receive ``peer``'s publications whose topic starts with one of ``topics``, on
        its SUB alone (the relay's per-link subscriptions). Kept for that peer, whether
        connected yet or not, across reconnects, until ``unsubscribe_peer``; a prefix
        subscribed twice is held once."""
        if not peer:
            raise TransportError("peer must be non-empty bytes")
        if topics:
            self._control(pipes.SUBSCRIBE_PEER, peer, *topics)

    def unsubscribe_peer(self, peer: bytes, topics: Sequence[bytes]) -> None:
        if topics:
            self._control(pipes.UNSUBSCRIBE_PEER, peer, *topics)

    def connect_peer(
        self,
        peer: bytes,
        router_addr: str,
        pub_addr: str | None,
        peer_public_key: bytes | None = None,
    ) -> None:
        """Open a DEALER to the peer's ROUTER and, with ``pub_addr``, a SUB to its PUB.

        Idempotent; called again with different addresses or key, it replaces the old
        connections. With CURVE on, ``peer_public_key`` (z85) is required.
        """
        if not peer:
            raise TransportError("peer must be non-empty bytes")
        if not router_addr:
            raise TransportError(f"peer {peer!r}: router_addr must be non-empty")
        if pub_addr == "":
            raise TransportError(f"peer {peer!r}: pub_addr must be None or non-empty")
        if self._curve is not None and not peer_public_key:
            raise TransportError(
                f"peer {peer!r}: CURVE is on, so connect_peer needs the peer's public key"
            )
        self._control(
            pipes.CONNECT,
            peer,
            router_addr.encode(),
            pipes.optional(None if pub_addr is None else pub_addr.encode()),
            pipes.optional(peer_public_key if self._curve is not None else None),
        )

    def disconnect_peer(self, peer: bytes) -> None:
        """Close our DEALER and SUB to ``peer``; a no-op for an unknown peer."""
        self._control(pipes.DISCONNECT, peer)

    def wake(self) -> None:
        """Make a ``recv`` blocked in another thread return None soon. Never blocks."""
        self._command(pipes.WAKE, wait=False)

    def wake_express(self) -> None:
        """Make a ``recv_express`` blocked now return None at once (as ``wake`` does for
        ``recv``): its consumer can wait for its next deadline, not poll for a stop."""
        if self._express_topics or self._express_channels:
            self._command(pipes.WAKE, b"express", wait=False)

    def reload_keys(self) -> None:
        """Re-read ``keys_dir`` into the ZAP allow-list (no-op with CURVE off)."""
        self._check_running()
        if self._allow_list is not None:
            self._allow_list.reload()

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (names in ``transport.counters.COUNTER_NAMES``)."""
        return self._counters.snapshot()

    def io_stall_ms(self) -> int:
        """How long the I/O thread has been held up since the last call: its longest turn
        (reading, checking and passing on what the sockets held) finished since then, or
        the turn under way if longer. While it lasts, frames that peers sent wait in the
        sockets: a failure detector reading silence then is reading this node, not them.
        For one caller (the failure detector's thread): the call starts a new window."""
        thread = self._thread
        if thread is None:
            return 0
        started = thread.turn_started
        ongoing = time.monotonic() - started if started else 0.0
        longest, thread.longest_turn_s = thread.longest_turn_s, 0.0
        return int(max(longest, ongoing) * 1000)

    # -- deliveries ------------------------------------------------------------------------

    def recv(self, timeout: float | None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` seconds (None: wait until one comes),
        after ``wake``, or once closed. For one consumer thread at a time."""
        return self._receive(self._recv_lock, "_events", timeout)

    def recv_express(self, timeout: float | None) -> Delivery | None:
        """As ``recv``, for what ``express_topics`` and ``express_channels`` name. For one
        consumer thread at a time, which may be another than ``recv``'s."""
        if not self._express_topics and not self._express_channels:
            raise TransportError("recv_express: this transport has no express_topics")
        return self._receive(self._express_lock, "_express", timeout)

    def _poller(self, pipe: str, events: Socket) -> zmq.Poller:
        """A poller of ``pipe`` alone, made once: ``Socket.poll`` makes one per call, a
        sixth of the CPU of each wait that ends with nothing (as an idle node's do)."""
        poller = self._pollers.get(pipe)
        if poller is None:
            poller = self._pollers[pipe] = zmq.Poller()
            poller.register(events, zmq.POLLIN)
        return poller

    def _receive(self, lock: threading.Lock, pipe: str, timeout: float | None) -> Delivery | None:
        if not self._started:
            raise TransportError("transport not started")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with lock:
            while True:
                events: Socket | None = getattr(self, pipe)
                if self._closed or events is None or events.closed:
                    return None
                remaining_ms = RECV_SLICE_MS
                if deadline is not None:
                    remaining_ms = min(
                        RECV_SLICE_MS, max(0, round((deadline - time.monotonic()) * 1000))
                    )
                if self._poller(pipe, events).poll(remaining_ms):
                    frames = events.recv_multipart()
                    if frames[0] in (pipes.EV_WOKEN, pipes.EV_STOPPED):
                        return None
                    return pipes.decode_delivery(frames)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
