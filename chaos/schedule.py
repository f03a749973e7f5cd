"""The fault plan of a run, drawn from its seed before anything starts.

Four tracks run side by side, each alternating a quiet gap and one fault, so faults of
different tracks overlap (a partition during packet loss while a node is paused) but a
track never stacks two of its own:

- ``cut``: partitions of several shapes: ``isolate`` (one node from all others),
  ``majority`` (a minority of up to half the nodes from the rest) and ``bridge`` (two
  sides that cannot reach each other, and one node that reaches both);
- ``link``: packet ``loss``, ``delay`` (with reordering) or ``duplicate`` on the packets
  some nodes send;
- ``node``: ``kill`` (SIGKILL, restarted after the fault's time) or ``pause``
  (SIGSTOP, then SIGCONT) of a node;
- ``client``: the same for a client; a killed client is replaced by a new process (a new
  incarnation with its own history file).

The plan is pure data (printed, and saved with the run), so a seed names one plan.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

CUT_SHAPES = ("isolate", "majority", "bridge")
LINK_KINDS = ("loss", "delay", "duplicate")
PROCESS_KINDS = ("kill", "pause")


@dataclass(frozen=True, slots=True)
class Fault:
    track: str
    kind: str
    start: float
    """Seconds after the workload started."""
    end: float
    targets: tuple[int, ...] = ()
    """Nodes (tracks cut, link, node) or clients (track client), numbered from 1."""
    sides: tuple[tuple[int, ...], ...] = ()
    """For a cut: the groups that cannot reach each other (a bridge node is in none)."""
    probability: float = 0.0
    """For a link fault: the share of packets lost, delayed or duplicated."""
    blocked: tuple[tuple[int, int], ...] = field(default=())
    """For a cut: every pair of nodes that cannot reach each other."""

    def describe(self) -> str:
        span = f"{self.start:6.1f}-{self.end:6.1f}s {self.track:6} {self.kind:9}"
        if self.track == "cut":
            return f"{span} " + " | ".join(",".join(f"n{i}" for i in s) for s in self.sides)
        who = ",".join(f"{'c' if self.track == 'client' else 'n'}{i}" for i in self.targets)
        extra = f" p={self.probability:.2f}" if self.track == "link" else ""
        return f"{span} {who}{extra}"


def cut(rng: random.Random, nodes: int, start: float, end: float) -> Fault:
    order = list(range(1, nodes + 1))
    rng.shuffle(order)
    shape = rng.choice(CUT_SHAPES)
    if shape == "isolate":
        sides = (tuple(order[:1]), tuple(sorted(order[1:])))
    elif shape == "majority":
        minority = rng.randint(1, nodes // 2)
        sides = (tuple(sorted(order[:minority])), tuple(sorted(order[minority:])))
    else:  # bridge: order[0] reaches both sides
        rest = order[1:]
        half = rng.randint(1, len(rest) - 1)
        sides = (tuple(sorted(rest[:half])), tuple(sorted(rest[half:])))
    blocked = tuple(sorted((min(a, b), max(a, b)) for a in sides[0] for b in sides[1]))
    return Fault("cut", shape, start, end, sides=sides, blocked=blocked)


def link(rng: random.Random, nodes: int, start: float, end: float) -> Fault:
    kind = rng.choice(LINK_KINDS)
    targets = tuple(sorted(rng.sample(range(1, nodes + 1), rng.randint(1, nodes - 1))))
    low, high = {"loss": (0.05, 0.4), "delay": (0.2, 1.0), "duplicate": (0.1, 0.5)}[kind]
    return Fault("link", kind, start, end, targets=targets, probability=rng.uniform(low, high))


def process(rng: random.Random, track: str, count: int, start: float, end: float) -> Fault:
    return Fault(track, rng.choice(PROCESS_KINDS), start, end, targets=(rng.randint(1, count),))


def track_faults(
    rng: random.Random,
    duration: float,
    lengths: tuple[float, float],
    make: Callable[[float, float], Fault],
) -> list[Fault]:
    """Alternate a quiet gap and a fault until ``duration``; the last fault ends by then."""
    faults: list[Fault] = []
    t = rng.uniform(0.5, 3.0)
    while True:
        length = rng.uniform(*lengths)
        if t + length > duration:
            return faults
        faults.append(make(t, t + length))
        t += length + rng.uniform(0.5, 3.0)


TRACKS = ("cut", "link", "node", "client")


def make_schedule(
    seed: int, nodes: int, clients: int, duration: float, tracks: Sequence[str]
) -> list[Fault]:
    """Every fault of the run, by start time."""
    faults: list[Fault] = []
    for track in tracks:
        # One generator per track, from the seed and the track's name: turning one track
        # off (--tracks) leaves the others' plans as they were.
        rng = random.Random(f"{seed}/{track}")
        make: Callable[[float, float], Fault]
        if track == "cut":
            lengths, make = (3.0, 10.0), partial(cut, rng, nodes)
        elif track == "link":
            lengths, make = (3.0, 10.0), partial(link, rng, nodes)
        elif track == "node":
            lengths, make = (1.0, 9.0), partial(process, rng, "node", nodes)
        elif track == "client":
            lengths, make = (0.5, 5.0), partial(process, rng, "client", clients)
        else:
            raise ValueError(f"unknown track {track!r}; known: {', '.join(TRACKS)}")
        faults += track_faults(rng, duration, lengths, make)
    return sorted(faults, key=lambda f: (f.start, f.track))
