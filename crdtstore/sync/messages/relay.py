"""Relay messages (:mod:`crdtstore.sync.relay`): Plumtree's have notices, prune, graft.

Invariants of decoding: a have notice holds 1 to :data:`MAX_HAVE_RUNS` non-empty runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from crdtstore.codec import (
    expect_int,
    expect_list,
    expect_replica,
)
from crdtstore.errors import DecodeError
from crdtstore.sync.messages.fields import expect_namespace, register

MAX_HAVE_RUNS = 4_096


@register
@dataclass(frozen=True, slots=True)
class Have:
    """The publisher learned these runs ``(origin, first, last)`` of ``namespace`` (a
    Plumtree "have" notice: a neighbour lacking one of them fetches it)."""

    KIND: ClassVar[str] = "have"
    namespace: str
    runs: tuple[tuple[str, int, int], ...]

    def to_wire(self) -> list[Any]:
        return [self.namespace, [list(run) for run in self.runs]]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Have:
        ns, items = expect_list(fields, "have notice", 2)
        runs: list[tuple[str, int, int]] = []
        for item in expect_list(items, "have runs"):
            origin, first, last = expect_list(item, "have run", 3)
            run = (
                expect_replica(origin, "origin"),
                expect_int(first, "first seq", 1),
                expect_int(last, "last seq", 1),
            )
            if run[1] > run[2]:
                raise DecodeError(f"have run {run[1]}..{run[2]} is empty")
            runs.append(run)
        if not runs or len(runs) > MAX_HAVE_RUNS:
            raise DecodeError(f"a have notice holds 1 to {MAX_HAVE_RUNS} runs, not {len(runs)}")
        return cls(expect_namespace(ns), tuple(runs))


@register
@dataclass(frozen=True, slots=True)
class Prune:
    """The sender got a batch of ``namespace`` from me that it had: it takes my data
    topic off its subscriptions, and asks me to do the same with its own."""

    KIND: ClassVar[str] = "prune"
    namespace: str

    def to_wire(self) -> list[Any]:
        return [self.namespace]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Prune:
        (ns,) = expect_list(fields, "prune", 1)
        return cls(expect_namespace(ns))


@register
@dataclass(frozen=True, slots=True)
class Graft:
    """The sender subscribed to my data topic of ``namespace`` again (its tree had a
    hole), and asks me to subscribe to its own."""

    KIND: ClassVar[str] = "graft"
    namespace: str

    def to_wire(self) -> list[Any]:
        return [self.namespace]

    @classmethod
    def from_wire(cls, fields: list[Any]) -> Graft:
        (ns,) = expect_list(fields, "graft", 1)
        return cls(expect_namespace(ns))
