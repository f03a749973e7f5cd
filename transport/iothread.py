"""The I/O thread: the one owner of every ZeroMQ socket of a transport.

Invariants:
- Only this thread touches the network sockets (ROUTER, PUB, per-peer DEALER and SUB),
  their monitors, and the I/O ends of the inproc pipes. It creates them, polls them
  and closes them before it exits. Application threads reach it only by commands.
- Nothing received from the network can stop the loop: each message is handled inside its
  own ``try``; a failure is counted (``dropped_errors``), logged, and the loop continues.
- Nothing here blocks on the network: every send is NOBLOCK and an EAGAIN (or an
  unroutable ROUTER identity) is a counted drop.
- A message is delivered only if it has the expected frame count (ROUTER: identity +
  payload; DEALER: payload; SUB: topic + payload) and its frames sum to at most
  ``max_message_bytes``.

Peers. ``connect_peer`` gives a peer its own DEALER and its own SUB. The DEALER's routing
id is our node id with a tag of its own (``routing_id``), so the peer's ROUTER sees who we
claim to be, and each connection it holds has an id no other connection has. One SUB per
peer, rather than one SUB connected everywhere, is what lets a drop rule cut a single
peer's publications, lets each connection pin that peer's CURVE server key, and makes
``disconnect_peer`` a socket close.

The sockets' options and monitors, and why no socket has ZMTP heartbeats or
ROUTER_HANDOVER, are in :mod:`transport.sockets`.

Why one module over 500 lines: :class:`IOThread` is one thing, the one owner of every
socket; its handlers share that ownership (the poller, the peers' sockets, the routing
table) and the invariants above, which hold only if all of it stays in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from transport import pipes, routing_id
from transport.counters import Counters
from transport.faults import TransportFaults
from transport.security import CurveKeys, z85_text
from transport.settings import TransportSettings
from transport.sockets import (
    HANDSHAKE_FAILED,
    MONITORED_EVENTS,
    Socket,
    configure_network_socket,
    monitor_socket,
    recv_monitor_event,
)

log = logging.getLogger(__name__)

Context = zmq.Context[Socket]

POLL_INTERVAL_MS = 1000
"""Upper bound on how long the loop sleeps before re-checking its stop flag, should the
STOP command be lost (the command pipe is full when close is called). Otherwise it
sleeps until a socket is ready or a refused peer is due again: every wake-up of an idle
node's threads is part of its idle cost, and close joins this thread for longer."""

BATCH = 256
"""Messages taken from one ready socket per loop turn, so one busy peer cannot starve the
command pipe or the other peers."""

MAX_ROUTER_PEERS = 65_536
"""Identities remembered as reachable through our ROUTER. Any client can claim any
identity, so this set must be bounded; the least recently heard from is forgotten first."""


@dataclass
class _Peer:
    """The sockets we opened towards one peer, and the addresses they were opened with."""

    router_addr: str
    pub_addr: str | None
    public_key: bytes | None
    dealer: Socket
    sub: Socket | None
    monitors: list[Socket]


@dataclass(frozen=True)
class IOThreadConfig:
    identity: bytes
    router_bind: str | None
    pub_bind: str | None
    settings: TransportSettings
    curve: CurveKeys | None
    command_endpoint: str
    event_endpoint: str
    express_endpoint: str | None = None
    """Where publications on one of ``express_topics`` go instead of ``event_endpoint``."""
    express_topics: frozenset[bytes] = frozenset()
    faults: TransportFaults | None = None
    """The test seam (``transport.faults``); None runs no fault code."""
    express_channels: frozenset[bytes] = frozenset()
    """Direct messages whose first byte is one of these go to ``express_endpoint`` too."""


class IOThread(threading.Thread):
    """Runs the poll loop. ``ready`` is set once binding succeeded or failed
    (``startup_error``); ``bound_router`` / ``bound_pub`` then hold the real endpoints."""

    def __init__(self, context: Context, config: IOThreadConfig, counters: Counters) -> None:
        super().__init__(name=f"transport-io-{config.identity!r}", daemon=True)
        self._context = context
        self._config = config
        self._settings = config.settings
        self._counters = counters
        self._faults = config.faults
        self.ready = threading.Event()
        self.stop_requested = threading.Event()
        self.startup_error: str | None = None
        self.bound_router: str | None = None
        self.bound_pub: str | None = None

        self._poller = zmq.Poller()
        self._handlers: dict[Socket, Callable[[Socket], None]] = {}
        self._owned: list[Socket] = []  # pipes, ROUTER, PUB, monitors: closed on exit
        self._commands: Socket | None = None
        self._events: Socket | None = None
        self._express: Socket | None = None
        self._router: Socket | None = None
        self._pub: Socket | None = None
        self._peers: dict[bytes, _Peer] = {}
        self._peer_of_socket: dict[Socket, bytes] = {}
        # peer -> the routing id it was last heard under (its newest connection to us)
        self._router_peers: OrderedDict[bytes, bytes] = OrderedDict()
        self._subscriptions: set[bytes] = set()
        # Per peer, prefixes for its SUB alone; kept across its SUB's replacement (a
        # reconnect, a new address), until unsubscribed.
        self._peer_subscriptions: dict[bytes, set[bytes]] = {}
        self._retry_at: dict[bytes, float] = {}  # peer -> monotonic time to re-create it
        # When the turn under way began (0.0 between turns) and the longest finished turn
        # since the owner last asked: see Transport.io_stall_ms.
        self.turn_started = 0.0
        self.longest_turn_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._open()
        except zmq.ZMQError as exc:
            if self.startup_error is None:
                self.startup_error = str(exc)
            self._close_all()
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        except Exception:
            # Only a bug in this module gets here (network input is handled per message).
            log.exception("transport I/O thread failed; closing its sockets")
        finally:
            # Both consumers wait for their next deadline, not in short slices: tell both.
            self._emit([pipes.EV_STOPPED])
            if self._express is not None:
                self._emit([pipes.EV_STOPPED], self._express)
            self._close_all()

    def _open(self) -> None:
        self._commands = self._own(zmq.PAIR)
        self._commands.connect(self._config.command_endpoint)
        self._register(self._commands, self._on_command_ready)
        self._events = self._own(zmq.PAIR)
        self._events.setsockopt(zmq.SNDHWM, self._settings.rcvhwm)
        self._events.connect(self._config.event_endpoint)
        if self._config.express_endpoint is not None:
            self._express = self._own(zmq.PAIR)
            self._express.setsockopt(zmq.SNDHWM, self._settings.rcvhwm)
            self._express.connect(self._config.express_endpoint)
        if self._config.router_bind is not None:
            self._router = self._bind_server(zmq.ROUTER, self._config.router_bind, "ROUTER")
            # No ROUTER_HANDOVER: our peers' connections never share a routing id, and a
            # handover stalls the connection it takes the id from (see transport.sockets).
            # Mandatory routing turns "no such peer" into an error we count instead of a
            # silent drop inside libzmq; with NOBLOCK it never blocks.
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.bound_router = self._last_endpoint(self._router)
            self._register(self._router, self._on_router_ready)
        if self._config.pub_bind is not None:
            self._pub = self._bind_server(zmq.PUB, self._config.pub_bind, "PUB")
            self.bound_pub = self._last_endpoint(self._pub)

    def _own(self, socket_type: int) -> Socket:
        sock: Socket = self._context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        self._owned.append(sock)
        return sock

    def _bind_server(self, socket_type: int, address: str, name: str) -> Socket:
        sock = self._own(socket_type)
        configure_network_socket(sock, self._settings)
        curve = self._config.curve
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        monitor = monitor_socket(sock, MONITORED_EVENTS)
        monitor.setsockopt(zmq.LINGER, 0)
        self._owned.append(monitor)
        self._register(monitor, self._on_monitor_ready)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            self.startup_error = f"cannot bind {name} to {address!r}: {exc}"
            raise
        return sock

    @staticmethod
    def _last_endpoint(sock: Socket) -> str:
        endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        return endpoint.decode()

    def _register(self, sock: Socket, handler: Callable[[Socket], None]) -> None:
        self._poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = handler

    def _unregister(self, sock: Socket) -> None:
        self._poller.unregister(sock)
        del self._handlers[sock]

    def _close_all(self) -> None:
        for peer in list(self._peers):
            self._close_peer(peer)
        for sock in self._owned:
            if sock in self._handlers:
                self._unregister(sock)
        # Reverse order closes each monitor before the socket it watches, whose closing
        # would otherwise report to it.
        for sock in reversed(self._owned):
            sock.close(linger=0)
        self._owned.clear()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop_requested.is_set():
            timeout_ms = POLL_INTERVAL_MS
            if self._retry_at:
                wait_s = min(self._retry_at.values()) - time.monotonic()
                timeout_ms = max(0, min(timeout_ms, int(wait_s * 1000) + 1))
            ready = self._poller.poll(timeout_ms)
            self.turn_started = started = time.monotonic()
            for sock, _ in ready:
                # A command earlier in this turn may have closed the socket.
                handler = self._handlers.get(sock)
                if handler is not None:
                    handler(sock)
            self.turn_started = 0.0
            self.longest_turn_s = max(self.longest_turn_s, time.monotonic() - started)
            if self._retry_at:
                self._retry_refused_peers()

    def _retry_refused_peers(self) -> None:
        now = time.monotonic()
        for peer in [p for p, at in self._retry_at.items() if at <= now]:
            del self._retry_at[peer]
            state = self._peers.get(peer)
            if state is None:
                continue
            self._close_peer(peer)
            self._connect_peer(peer, state.router_addr, state.pub_addr, state.public_key)

    def _drain(self, sock: Socket, handle: Callable[[list[zmq.Frame]], None]) -> None:
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:
                self._counters.add("dropped_errors")
                log.warning("dropped a message whose handling failed", exc_info=True)

    def _emit(self, frames: list[bytes], pipe: Socket | None = None) -> None:
        pipe = self._events if pipe is None else pipe
        assert pipe is not None
        try:
            pipe.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._counters.add("events_dropped")

    def _fits(self, frames: list[zmq.Frame]) -> bool:
        if sum(len(f.buffer) for f in frames) > self._settings.max_message_bytes:
            self._counters.add("dropped_oversized")
            return False
        return True

    # -- network input ---------------------------------------------------------------------

    def _on_router_ready(self, sock: Socket) -> None:
        self._drain(sock, self._on_router_message)

    def _on_router_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            self._counters.add("dropped_malformed")
            return
        if not self._fits(frames):
            return
        sender, payload = frames[0].bytes, frames[1]
        peer = routing_id.node_of(sender)
        if self._blocked(peer):
            return
        self._router_peers[peer] = sender
        self._router_peers.move_to_end(peer)
        if len(self._router_peers) > MAX_ROUTER_PEERS:
            self._router_peers.popitem(last=False)
        body = payload.bytes
        event = [pipes.EV_DIRECT, peer, body, self._authenticated_user(payload)]
        # Counted before the hand-over, so a consumer that sees the delivery sees the count.
        self._counters.add("received_direct")
        self._emit(event, self._express_pipe_for(body))

    def _express_pipe_for(self, payload: bytes) -> Socket | None:
        """The express pipe for a direct message on an express channel, else None."""
        if self._config.express_channels and payload[:1] in self._config.express_channels:
            return self._express
        return None

    def _authenticated_user(self, frame: zmq.Frame) -> bytes:
        if self._config.curve is None:
            return b""
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return b""  # the ZAP handler gave no User-Id: report None rather than guess
        return user.encode("ascii") if isinstance(user, str) else b""

    def _on_dealer_ready(self, sock: Socket) -> None:
        peer = self._peer_of_socket[sock]
        self._drain(sock, lambda frames: self._on_dealer_message(peer, frames))

    def _on_dealer_message(self, peer: bytes, frames: list[zmq.Frame]) -> None:
        if len(frames) != 1:
            self._counters.add("dropped_malformed")
            return
        if not self._fits(frames):
            return
        if self._blocked(peer):
            return
        payload = frames[0].bytes
        event = [pipes.EV_DIRECT, peer, payload, self._pinned_user(peer)]
        # Counted before the hand-over, so a consumer that sees the delivery sees the count.
        self._counters.add("received_direct")
        self._emit(event, self._express_pipe_for(payload))

    def _on_sub_ready(self, sock: Socket) -> None:
        peer = self._peer_of_socket[sock]
        self._drain(sock, lambda frames: self._on_sub_message(peer, frames))

    def _on_sub_message(self, peer: bytes, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            self._counters.add("dropped_malformed")
            return
        if not self._fits(frames):
            return
        if self._blocked(peer):
            return
        topic = frames[0].bytes
        event = [pipes.EV_PUBLISH, topic, frames[1].bytes, self._pinned_user(peer), peer]
        # Counted before the hand-over, so a consumer that sees the delivery sees the count.
        self._counters.add("received_publish")
        express = topic in self._config.express_topics
        self._emit(event, self._express if express else None)

    def _pinned_user(self, peer: bytes) -> bytes:
        key = self._peers[peer].public_key
        return b"" if key is None else z85_text(key).encode("ascii")

    def _on_peer_monitor_ready(self, sock: Socket) -> None:
        peer = self._peer_of_socket[sock]
        for _ in range(BATCH):
            try:
                event = recv_monitor_event(sock)
            except zmq.Again:
                return
            if event & HANDSHAKE_FAILED:
                self._counters.add("peer_refused")
                delay_s = self._settings.reconnect_ivl_max_ms / 1000
                self._retry_at.setdefault(peer, time.monotonic() + delay_s)

    def _on_monitor_ready(self, sock: Socket) -> None:
        for _ in range(BATCH):
            try:
                kind = recv_monitor_event(sock)
            except zmq.Again:
                return
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._counters.add("auth_failed")
            elif kind == zmq.EVENT_DISCONNECTED:
                self._counters.add("disconnects")
            elif kind in (
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                self._counters.add("handshake_failed")

    # -- commands --------------------------------------------------------------------------

    def _on_command_ready(self, sock: Socket) -> None:
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_command(frames[0], frames[1:])
            except Exception:
                self._counters.add("dropped_errors")
                log.exception("transport command %r failed", frames[0])
            if self.stop_requested.is_set():
                return

    def _on_command(self, op: bytes, args: list[bytes]) -> None:
        if op == pipes.PUBLISH:
            self._publish(args[0], args[1])
        elif op == pipes.SEND:
            self._send(args[0], args[1])
        elif op == pipes.SUBSCRIBE:
            self._subscriptions.add(args[0])
            for state in self._peers.values():
                if state.sub is not None:
                    state.sub.setsockopt(zmq.SUBSCRIBE, args[0])
        elif op == pipes.UNSUBSCRIBE:
            if args[0] in self._subscriptions:
                self._subscriptions.discard(args[0])
                for state in self._peers.values():
                    if state.sub is not None:
                        state.sub.setsockopt(zmq.UNSUBSCRIBE, args[0])
        elif op == pipes.SUBSCRIBE_PEER:
            self._subscribe_peer(args[0], args[1:])
        elif op == pipes.UNSUBSCRIBE_PEER:
            self._unsubscribe_peer(args[0], args[1:])
        elif op == pipes.CONNECT:
            peer, router_addr, pub_addr, key = args
            pub = pipes.from_optional(pub_addr)
            self._connect_peer(
                peer,
                router_addr.decode(),
                None if pub is None else pub.decode(),
                pipes.from_optional(key),
            )
        elif op == pipes.DISCONNECT:
            self._close_peer(args[0])
        elif op == pipes.WAKE:
            express = bool(args) and args[0] == b"express" and self._express is not None
            self._emit([pipes.EV_WOKEN], self._express if express else None)
        elif op == pipes.STOP:
            self.stop_requested.set()
        else:
            raise ValueError(f"unknown transport command {op!r}")

    def _subscribe_peer(self, peer: bytes, topics: list[bytes]) -> None:
        held = self._peer_subscriptions.setdefault(peer, set())
        state = self._peers.get(peer)
        for topic in topics:
            if topic in held:
                continue  # libzmq counts subscriptions: a second would need two unsubscribes
            held.add(topic)
            if state is not None and state.sub is not None:
                state.sub.setsockopt(zmq.SUBSCRIBE, topic)

    def _unsubscribe_peer(self, peer: bytes, topics: list[bytes]) -> None:
        held = self._peer_subscriptions.get(peer)
        if held is None:
            return
        state = self._peers.get(peer)
        for topic in topics:
            if topic not in held:
                continue
            held.discard(topic)
            if state is not None and state.sub is not None:
                state.sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        if not held:
            del self._peer_subscriptions[peer]

    def _blocked(self, peer: bytes) -> bool:
        """Whether the fault seam cuts ``peer`` off (counted when it does)."""
        if self._faults is not None and peer in self._faults.blocked_peers():
            self._counters.add("partition_dropped")
            return True
        return False

    def _publish(self, topic: bytes, payload: bytes) -> None:
        if self._pub is None or (
            self._faults is not None and self._faults.drop_outgoing("publish")
        ):
            self._counters.add("publish_dropped")
            return
        # PUB never blocks and never raises EAGAIN: past the HWM libzmq drops per subscriber.
        self._pub.send_multipart([topic, payload], zmq.NOBLOCK)
        self._counters.add("published")

    def _send(self, peer: bytes, payload: bytes) -> None:
        if self._blocked(peer):
            return
        if self._faults is not None and self._faults.drop_outgoing("direct"):
            self._counters.add("send_dropped")
            return
        try:
            if peer in self._peers:
                self._peers[peer].dealer.send(payload, zmq.NOBLOCK)
            elif self._router is not None and peer in self._router_peers:
                self._router.send_multipart([self._router_peers[peer], payload], zmq.NOBLOCK)
            else:
                self._counters.add("send_dropped")
                return
        except zmq.Again:
            self._counters.add("send_dropped")
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # The peer's connection to our ROUTER is gone; forget the route.
            self._router_peers.pop(peer, None)
            self._counters.add("send_dropped")
            return
        self._counters.add("sent")

    # -- peers -----------------------------------------------------------------------------

    def _connect_peer(
        self, peer: bytes, router_addr: str, pub_addr: str | None, key: bytes | None
    ) -> None:
        existing = self._peers.get(peer)
        if existing is not None:
            if (existing.router_addr, existing.public_key) == (router_addr, key):
                if existing.pub_addr == pub_addr:
                    return
                if existing.pub_addr is None and pub_addr is not None:
                    # A direct-only peer gains a subscription: its DEALER stays, with
                    # whatever is queued on it (closing it at linger 0 would drop that).
                    self._add_sub(peer, existing, pub_addr, key)
                    return
            self._close_peer(peer)
        # Registered before connecting, so a failing connect is cleaned up by _close_peer.
        state = _Peer(router_addr, pub_addr, key, self._client_socket(zmq.DEALER, key), None, [])
        self._peers[peer] = state
        self._add_peer_socket(peer, state, state.dealer, self._on_dealer_ready)
        try:
            state.dealer.setsockopt(
                zmq.ROUTING_ID, routing_id.for_connection(self._config.identity)
            )
            state.dealer.connect(router_addr)
            if pub_addr is not None:
                self._add_sub(peer, state, pub_addr, key)
        except zmq.ZMQError:
            self._close_peer(peer)
            raise

    def _add_sub(self, peer: bytes, state: _Peer, pub_addr: str, key: bytes | None) -> None:
        state.pub_addr = pub_addr
        state.sub = self._client_socket(zmq.SUB, key)
        self._add_peer_socket(peer, state, state.sub, self._on_sub_ready)
        for topic in self._subscriptions | self._peer_subscriptions.get(peer, set()):
            state.sub.setsockopt(zmq.SUBSCRIBE, topic)
        state.sub.connect(pub_addr)

    def _add_peer_socket(
        self, peer: bytes, state: _Peer, sock: Socket, handler: Callable[[Socket], None]
    ) -> None:
        monitor = monitor_socket(sock, HANDSHAKE_FAILED)
        monitor.setsockopt(zmq.LINGER, 0)
        state.monitors.append(monitor)
        for owned, on_ready in ((sock, handler), (monitor, self._on_peer_monitor_ready)):
            self._peer_of_socket[owned] = peer
            self._register(owned, on_ready)

    def _client_socket(self, socket_type: int, server_key: bytes | None) -> Socket:
        sock: Socket = self._context.socket(socket_type)
        configure_network_socket(sock, self._settings)
        curve = self._config.curve
        if curve is not None:
            assert server_key is not None  # Transport.connect_peer checked
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        return sock

    def _close_peer(self, peer: bytes) -> None:
        state = self._peers.pop(peer, None)
        self._retry_at.pop(peer, None)
        if state is None:
            return
        for sock in [*state.monitors, state.dealer, state.sub]:
            if sock is None:
                continue
            if sock in self._handlers:
                self._unregister(sock)
                del self._peer_of_socket[sock]
            sock.close(linger=0)
