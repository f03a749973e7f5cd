"""A deterministic network of membership protocols, for thousands of nodes in one process.

Each node is a :class:`~crdtstore.membership.protocol.MembershipProtocol`; every frame
between two nodes is encoded and decoded with the real codec (so sizes are real and
decoding is exercised) and travels with a delay drawn from ``delay_ms``, is lost with
probability ``loss``, and is dropped whole across a partition. A node works through its
frames and timers one at a time, each taking ``work_ms`` (``slow_factor`` times that on a
slow node), so a slow node answers late and its own timers fire late, as a loaded
process would. Everything is driven by one seeded ``random.Random``: a run replays.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.protocol import (
    SEED_PREFIX,
    MembershipProtocol,
    NeighbourDown,
    NeighbourUp,
    ProtocolSettings,
    Refuted,
    Send,
)
from crdtstore.membership.wire import Contact
from crdtstore.sync.messages import decode_message, encode_message


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
    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    last_contact: dict[str, float] = field(default_factory=dict)


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
    ) -> None:
        self.rng = random.Random(seed)
        self.settings = settings or ProtocolSettings()
        self.delay_ms = delay_ms
        self.loss = loss
        self.work_ms = work_ms
        self.slow_factor = slow_factor
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.observations: list[Observation] = []
        self.refutations: list[tuple[float, str, int]] = []
        self._heap: list[tuple[float, int, str, str, object]] = []
        self._seq = 0
        self._groups: dict[str, int] | None = None
        self.record_observations = True

    # -- scenario --------------------------------------------------------------------------

    def add_node(
        self, node_id: str, seeds: Iterable[str] = (), slow: bool = False, incarnation: int = 1
    ) -> SimNode:
        me = Contact(node_id, address(node_id), address(node_id) + "/pub", None, incarnation)
        contacts = [
            Contact(SEED_PREFIX + address(s), address(s), address(s) + "/pub", None, 0)
            for s in seeds
        ]
        proto = MembershipProtocol(
            me, self.settings, random.Random(self.rng.random()), int(self.now), contacts
        )
        node = SimNode(node_id, proto, slow=slow)
        self.nodes[node_id] = node
        self._schedule_tick(node, self.now)
        return node

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].up = False

    def leave(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._run_commands(node, node.protocol.leave(int(self.now)))
        node.up = False

    def partition(self, *groups: Iterable[str]) -> None:
        self._groups = {n: i for i, group in enumerate(groups) for n in group}

    def heal(self) -> None:
        self._groups = None

    def run_until(self, t_ms: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_ms:
            at, _, kind, node_id, payload = heapq.heappop(heap)
            self.now = at
            node = self.nodes.get(node_id)
            if node is None or not node.up:
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
                self._run_commands(node, node.protocol.tick(int(at)))
            else:
                sender, data = payload  # type: ignore[misc]
                start = self._work(node, at)
                if start > at:
                    self._push(start, "frame", node_id, payload)
                    continue
                node.recv_msgs += 1
                node.recv_bytes += len(data)
                node.last_contact[sender] = at
                msg = decode_message(data)
                self._run_commands(node, node.protocol.on_message(sender, msg, int(at)))
            self._schedule_tick(node, at)
        self.now = t_ms

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
            row = node.protocol.members().get(subject)
            if row is not None and row[0] is status and row[1] >= incarnation:
                seen += 1
        return seen / len(others)

    def connections(self, node: SimNode, window_ms: float) -> int:
        """Active neighbours plus peers exchanged with (either way) within ``window_ms``."""
        recent = {p for p, t in node.last_contact.items() if self.now - t <= window_ms}
        return len(recent | set(node.protocol.overlay.active))

    def first_time(self, subject: str, status: MemberStatus, share: float) -> float | None:
        """When ``share`` of the nodes then live first saw ``subject`` at ``status``."""
        others = len([n for n in self.live() if n.node_id != subject])
        need = max(1, int(share * others + 0.999999))
        seen: set[str] = set()
        for obs in self.observations:
            if obs.change.node_id == subject and obs.change.new is status:
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
        deadline = max(float(node.protocol.next_deadline()), at + 1.0)
        if node.tick_at < 0 or deadline < node.tick_at:
            node.tick_at = deadline
            self._push(deadline, "tick", node.node_id, None)

    def _push(self, at: float, kind: str, node_id: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, node_id, payload))

    def _run_commands(self, node: SimNode, commands: list[object]) -> None:
        for command in commands:
            if isinstance(command, Send):
                self._send(node, command)
            elif isinstance(command, StatusChange):
                if self.record_observations:
                    self.observations.append(Observation(self.now, node.node_id, command))
            elif isinstance(command, Refuted):
                self.refutations.append((self.now, node.node_id, command.incarnation))
            elif isinstance(command, (NeighbourUp, NeighbourDown)):
                pass

    def _send(self, node: SimNode, command: Send) -> None:
        to = command.to
        if isinstance(to, Contact):
            dst = to.router.removeprefix("sim://")
        else:
            dst = to
        data = encode_message(command.msg)  # type: ignore[arg-type]
        node.sent_msgs += 1
        node.sent_bytes += len(data)
        node.last_contact[dst] = self.now
        if self._groups is not None and self._groups.get(node.node_id) != self._groups.get(dst):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        low, high = self.delay_ms
        self._push(self.now + self.rng.uniform(low, high), "frame", dst, (node.node_id, data))


def counters(nodes: Iterable[SimNode]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for node in nodes:
        totals["sent_msgs"] += node.sent_msgs
        totals["sent_bytes"] += node.sent_bytes
        totals["recv_msgs"] += node.recv_msgs
        totals["recv_bytes"] += node.recv_bytes
    return dict(totals)
