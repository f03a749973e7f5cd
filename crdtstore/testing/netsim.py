"""A deterministic network of membership protocols, for thousands of nodes in one process.

Each node is a :class:`~crdtstore.membership.protocol.MembershipProtocol`; every frame
between two nodes is encoded with the real codec (so sizes are real) and, unless
``decode=False``, decoded again on arrival (so decoding is exercised; tests keep it on).
A benchmark may turn decoding off: the receiver then gets the sender's message object,
which is what decoding would rebuild, and the run costs about half as much.

A frame travels with a delay drawn from ``delay_ms``, is lost with probability
``loss``, and is dropped whole across a partition or by a paused node. A node works
through its frames and timers one at a time, each taking ``work_ms`` (``slow_factor``
times that on a slow node), so a slow node answers late and its own timers fire late,
as a loaded process would. Everything is driven by one seeded ``random.Random`` and no
outcome depends on a set's iteration order: a run replays from its seed.

A node's clock may be off (``clock_skew_ms``): its protocol is given the simulated time
plus that much, as a node whose clock runs ahead reads it, and the clock readings its
probes and acks carry are fed to its own :class:`~crdtstore.membership.clocks.ClockOffsets`
(``SimNode.clocks``), as the replicator feeds them.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from crdtstore.membership.clocks import ClockOffsets
from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.protocol import (
    SEED_PREFIX,
    ClockReading,
    Command,
    MembershipProtocol,
    ProtocolSettings,
    Refuted,
    Send,
)
from crdtstore.membership.wire import Contact
from crdtstore.sync.messages import Message, decode_message, encode_message

_Frame = tuple[str, int, object]
"""A frame in flight: sender, encoded size, and the bytes (or the message object)."""


MAX_CLOCK_DRIFT_MS = 60_000
"""The limit a simulated node judges clocks by (the node's default ``max_clock_drift_ms``)."""


def address(node_id: str) -> str:
    return f"sim://{node_id}"


@dataclass
class SimNode:
    node_id: str
    protocol: MembershipProtocol
    slow: bool = False
    busy_until: float = 0.0
    tick_at: float = -1.0
    up: bool = True
    paused: bool = False
    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    last_contact: dict[str, float] = field(default_factory=dict)
    clock_skew_ms: int = 0
    """This node's clock minus the simulated time."""
    clocks: ClockOffsets = field(default_factory=lambda: ClockOffsets(MAX_CLOCK_DRIFT_MS))

    def clock(self, at: float) -> int:
        """This node's clock at simulated time ``at``."""
        return int(at) + self.clock_skew_ms


@dataclass(frozen=True)
class Observation:
    at_ms: float
    observer: str
    change: StatusChange


class NetSim:
    def __init__(
        self,
        seed: int,
        settings: ProtocolSettings | None = None,
        delay_ms: tuple[float, float] = (2.0, 10.0),
        loss: float = 0.0,
        work_ms: float = 0.05,
        slow_factor: float = 10.0,
        decode: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.settings = settings or ProtocolSettings()
        self.delay_ms = delay_ms
        self.loss = loss
        self.work_ms = work_ms
        self.slow_factor = slow_factor
        self.decode = decode
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.observations: list[Observation] = []
        self.refutations: list[tuple[float, str, int]] = []
        self.by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        """Message class name -> [frames, bytes] sent (all nodes)."""
        self._by_subject: dict[str, list[Observation]] = defaultdict(list)
        self._heap: list[tuple[float, int, str, str, _Frame | None]] = []
        self._seq = 0
        self._groups: dict[str, int] | None = None
        self.record_observations = True

    # -- scenario --------------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        seeds: Iterable[str] = (),
        slow: bool = False,
        incarnation: int = 1,
        clock_skew_ms: int = 0,
    ) -> SimNode:
        """Start ``node_id`` (again, after a crash or leave: a restart under the same id,
        whose ``incarnation`` must exceed the one it had), its clock ``clock_skew_ms`` off."""
        me = Contact(node_id, address(node_id), address(node_id) + "/pub", None, incarnation)
        contacts = [
            Contact(SEED_PREFIX + address(s), address(s), address(s) + "/pub", None, 0)
            for s in seeds
        ]
        proto = MembershipProtocol(
            me,
            self.settings,
            random.Random(self.rng.random()),
            int(self.now) + clock_skew_ms,
            contacts,
        )
        node = SimNode(node_id, proto, slow=slow, clock_skew_ms=clock_skew_ms)
        self.nodes[node_id] = node
        self._schedule_tick(node, self.now)
        return node

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].up = False

    def leave(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._run_commands(node, node.protocol.leave(node.clock(self.now)))
        node.up = False

    def pause(self, node_id: str) -> None:
        """The node stops: frames sent to it are lost and its timers do not run (a
        stopped process, a long GC pause), until :meth:`resume`."""
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.paused = False
        node.tick_at = -1.0
        self._schedule_tick(node, self.now)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network between ``groups``; a node in none of them is cut off alone."""
        self._groups = {n: i for i, group in enumerate(groups) for n in group}

    def heal(self) -> None:
        self._groups = None

    def run_until(self, t_ms: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_ms:
            at, _, kind, node_id, payload = heapq.heappop(heap)
            self.now = at
            node = self.nodes.get(node_id)
            if node is None or not node.up or node.paused:
                continue
            if kind == "tick":
                if at != node.tick_at:
                    continue  # superseded by an earlier deadline
                node.tick_at = -1.0
                start = self._work(node, at)
                if start > at:
                    self._push(start, "tick", node_id, None)
                    node.tick_at = start
                    continue
                self._run_commands(node, node.protocol.tick(node.clock(at)))
            else:
                start = self._work(node, at)
                if start > at:
                    self._push(start, "frame", node_id, payload)
                    continue
                assert payload is not None
                sender, size, msg = payload
                node.recv_msgs += 1
                node.recv_bytes += size
                node.last_contact[sender] = at
                if isinstance(msg, bytes):
                    msg = decode_message(msg)
                self._run_commands(node, node.protocol.on_message(sender, msg, node.clock(at)))
            self._schedule_tick(node, at)
        self.now = t_ms

    def run_until_true(
        self, condition: Callable[[], bool], limit_ms: float, step_ms: float = 100.0
    ) -> float | None:
        """Run in steps of ``step_ms`` until ``condition`` holds (the time it first held,
        to within a step) or ``limit_ms`` passes (None)."""
        while True:
            if condition():
                return self.now
            if self.now >= limit_ms:
                return None
            self.run_until(min(limit_ms, self.now + step_ms))

    # -- measurements ----------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def share_seeing(self, subject: str, status: MemberStatus, incarnation: int = 0) -> float:
        """Fraction of live nodes (other than ``subject``) whose table says ``status``."""
        others = [n for n in self.live() if n.node_id != subject]
        if not others:
            return 1.0
        seen = 0
        for node in others:
            st = node.protocol.status(subject)
            entry = node.protocol.table.get(subject)
            if st is status and entry is not None and entry.contact.incarnation >= incarnation:
                seen += 1
        return seen / len(others)

    def connections(self, node: SimNode, window_ms: float) -> int:
        """Active neighbours plus peers exchanged with (either way) within ``window_ms``."""
        recent = {p for p, t in node.last_contact.items() if self.now - t <= window_ms}
        return len(recent | set(node.protocol.overlay.active))

    def components(self) -> list[list[str]]:
        """Connected components of the live nodes' active views (links taken both ways)."""
        live = {n.node_id for n in self.live()}
        adjacent: dict[str, set[str]] = {n: set() for n in live}
        for node_id in live:
            for other in self.nodes[node_id].protocol.overlay.active:
                if other in live:
                    adjacent[node_id].add(other)
                    adjacent[other].add(node_id)
        out: list[list[str]] = []
        unseen = set(live)
        for start in sorted(live):
            if start not in unseen:
                continue
            unseen.discard(start)
            stack, part = [start], [start]
            while stack:
                for other in adjacent[stack.pop()]:
                    if other in unseen:
                        unseen.discard(other)
                        stack.append(other)
                        part.append(other)
            out.append(sorted(part))
        return out

    def observations_of(self, subject: str) -> list[Observation]:
        return self._by_subject.get(subject, [])

    def first_time(
        self, subject: str, status: MemberStatus, share: float, after_ms: float = 0.0
    ) -> float | None:
        """When ``share`` of the nodes now live (other than ``subject``) had first seen
        ``subject`` at ``status`` (at or after ``after_ms``)."""
        others = len([n for n in self.live() if n.node_id != subject])
        need = max(1, int(share * others + 0.999999))
        seen: set[str] = set()
        for obs in self.observations_of(subject):
            if obs.at_ms >= after_ms and obs.change.new is status:
                seen.add(obs.observer)
                if len(seen) >= need:
                    return obs.at_ms
        return None

    # -- internals -------------------------------------------------------------------------

    def _work(self, node: SimNode, at: float) -> float:
        """When ``node`` can start a task arriving at ``at`` (and books its work)."""
        start = max(at, node.busy_until)
        if start > at:
            return start
        cost = self.work_ms * (self.slow_factor if node.slow else 1.0)
        node.busy_until = at + cost
        return at

    def _schedule_tick(self, node: SimNode, at: float) -> None:
        deadline = max(float(node.protocol.next_deadline() - node.clock_skew_ms), at + 1.0)
        if node.tick_at < 0 or deadline < node.tick_at:
            node.tick_at = deadline
            self._push(deadline, "tick", node.node_id, None)

    def _push(self, at: float, kind: str, node_id: str, payload: _Frame | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, node_id, payload))

    def _run_commands(self, node: SimNode, commands: Sequence[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                self._send(node, command)
            elif isinstance(command, StatusChange):
                if self.record_observations:
                    obs = Observation(self.now, node.node_id, command)
                    self.observations.append(obs)
                    self._by_subject[command.node_id].append(obs)
            elif isinstance(command, Refuted):
                self.refutations.append((self.now, node.node_id, command.incarnation))
            elif isinstance(command, ClockReading):
                if command.sent_ms is None:
                    node.clocks.observe(command.node_id, command.clock_ms, command.received_ms)
                else:
                    node.clocks.observe_round_trip(
                        command.node_id, command.clock_ms, command.sent_ms, command.received_ms
                    )

    def _send(self, node: SimNode, command: Send) -> None:
        to = command.to
        dst = to.router.removeprefix("sim://") if isinstance(to, Contact) else to
        msg: Message = command.msg  # type: ignore[assignment]
        data = encode_message(msg)
        size = len(data)
        node.sent_msgs += 1
        node.sent_bytes += size
        kind = self.by_kind[type(msg).__name__]
        kind[0] += 1
        kind[1] += size
        node.last_contact[dst] = self.now
        if self._groups is not None and self._groups.get(node.node_id, -1) != self._groups.get(
            dst, -2
        ):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        low, high = self.delay_ms
        payload: _Frame = (node.node_id, size, data if self.decode else msg)
        self._push(self.now + self.rng.uniform(low, high), "frame", dst, payload)


def counters(nodes: Iterable[SimNode]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for node in nodes:
        totals["sent_msgs"] += node.sent_msgs
        totals["sent_bytes"] += node.sent_bytes
        totals["recv_msgs"] += node.recv_msgs
        totals["recv_bytes"] += node.recv_bytes
    return dict(totals)
