"""Shared fixtures for the codec tests: reachable CRDT values and their valid encodings.

Values come from a small three-replica simulation (mutations, joins of states and of
delta groups) so that they hold what real values hold: concurrent dots, removed dots
in the context, empty entries in deltas, dot clouds with gaps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from crdtstore.codec import encode_value, pack
from crdtstore.crdt import DotMap, HybridClock, LWWMap, ORSet
from crdtstore.sync.messages import DeltaBatch, PackedRange, encode_message

REPLICAS = ("a", "b", "c")
KEYS: tuple[Any, ...] = ("x", "y", b"\x00bin", 0, -5, (1 << 63) - 1, "ключ")
START_MS = 1_700_000_000_000
PAYLOADS: tuple[Any, ...] = (None, True, 0, -1, 2**64 - 1, 1.5, "s", b"b", [1, [2]], {"k": [None]})

Simulation = tuple[list[DotMap[Any]], dict[str, list[DotMap[Any]]]]
"""(every state and delta produced, each replica's own deltas in seq order)."""


def simulate(
    kind: type[DotMap[Any]], rnd: random.Random, n_ops: int, payloads: Sequence[Any] = PAYLOADS
) -> Simulation:
    states: dict[str, DotMap[Any]] = {r: kind() for r in REPLICAS}
    clocks = {r: HybridClock() for r in REPLICAS}
    own: dict[str, list[DotMap[Any]]] = {r: [] for r in REPLICAS}
    produced: list[DotMap[Any]] = []
    now = START_MS
    for _ in range(n_ops):
        r = rnd.choice(REPLICAS)
        now += rnd.randint(-2, 5)
        roll = rnd.random()
        if roll < 0.2:
            states[r] = states[r].join(states[rnd.choice(REPLICAS)])
            continue
        if roll < 0.35 and produced:
            states[r] = states[r].join(rnd.choice(produced))
            continue
        state, key, write = states[r], rnd.choice(KEYS), rnd.random() < 0.65
        if isinstance(state, ORSet):
            delta: DotMap[Any] = state.add(r, key) if write else state.remove(r, key)
        else:
            assert isinstance(state, LWWMap)
            if write:
                clocks[r], ts = clocks[r].tick(now)
                delta = state.put(r, key, rnd.choice(payloads), ts)
            else:
                delta = state.delete(r, key)
        states[r] = state.join(delta)
        own[r].append(delta)
        produced.append(delta)
        if rnd.random() < 0.2:
            produced.append(delta.join(rnd.choice(produced)))
    return [*states.values(), *produced], own


def delta_batches(own: dict[str, list[DotMap[Any]]], rnd: random.Random) -> list[DeltaBatch]:
    """For each origin, one batch joining a random interval of its own deltas."""
    batches = []
    for origin, deltas in own.items():
        if not deltas:
            continue
        first = rnd.randint(1, len(deltas))
        last = rnd.randint(first, len(deltas))
        joined = deltas[first - 1]
        for d in deltas[first:last]:
            joined = joined.join(d)
        batches.append(DeltaBatch(f"ns-{origin}", origin, first, last, joined))
    return batches


@pytest.fixture(scope="session")
def make_simulation() -> Callable[..., Simulation]:
    return simulate


@pytest.fixture(scope="session")
def make_batches() -> Callable[[dict[str, list[DotMap[Any]]], random.Random], list[DeltaBatch]]:
    return delta_batches


@pytest.fixture(scope="session")
def valid_encodings() -> list[bytes]:
    """Valid messages, values (both types, states and deltas) and a shipped range's
    entries, as bytes on the wire."""
    rnd = random.Random(20240601)
    out: list[bytes] = []
    for kind in (ORSet, LWWMap):
        for n_ops in (0, 3, 12, 30):
            values, own = simulate(kind, rnd, n_ops)
            out.extend(pack(encode_value(v)) for v in values[-4:])
            out.extend(encode_message(b) for b in delta_batches(own, rnd))
            out.extend(PackedRange.of(v).data for v in values[-2:])  # a range's entries
    return out
