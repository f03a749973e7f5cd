"""What must hold at the end of a run, checked on each replica's final state.

Inputs: the history (:mod:`chaos.history`) and, for every node, the OR-Set's elements and
the LWW-map's values once the cluster has healed and the clients have stopped. Each
replica is checked on its own, so a violation names the nodes it shows on.

OR-Set (every element is added once, by one operation; a remove removes only an element
its client had just seen in its replica, so the add it removes is one it observed):

- **lost add**: an acknowledged add whose element is absent, with no remove of it
  attempted at all (an acknowledged, failed or cut-short remove can each explain it);
- **phantom**: an element present that no add ever attempted;
- **undone remove**: an acknowledged remove whose element is present. With one add per
  element and the add observed, nothing concurrent can have re-added it (add-wins only
  saves adds the remove did not see).

LWW-map (every put writes a value unique to it):

- **lost register**: a key absent although a put of it was acknowledged (nothing in the
  workload deletes);
- **phantom value**: a value no put ever attempted;
- **stale register**: the value's put P was acknowledged, and another acknowledged put Q
  of the key was invoked after P's acknowledgement. All processes share one clock, and a
  write's hybrid timestamp is at least the wall time of its commit, so Q's timestamp
  exceeds P's and Q wins: P cannot be the final value. Only Q's whose invoke is
  ``STALE_MARGIN_NS`` past P's ack count, since timestamps are in whole milliseconds.
  This admits exactly "the last acknowledged value, or a value whose write was not
  acknowledged before the last acknowledged write began" (concurrent, failed, cut short).

Between replicas: identical entries (keys, values and dots) in both namespaces, checked
by the runner, which also checks membership and process exits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from chaos.history import ADD, PUT, REMOVE, Op

STALE_MARGIN_NS = 2_000_000
"""A write invoked more than this after another's ack has a later hybrid timestamp: the
timestamps' physical part is in whole milliseconds, so one ms of rounding on each side."""


@dataclass(frozen=True, slots=True)
class Replica:
    """The final state of one node's workload namespaces."""

    node: str
    elements: frozenset[str]
    registers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    subject: str
    """The element or key."""
    nodes: tuple[str, ...]
    """The replicas it shows on."""
    detail: str


@dataclass
class Verdict:
    counts: Counter[str] = field(default_factory=Counter)
    """Operations by function and outcome (``add ok``, ``put info``, ...)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failed operations by error type."""
    violations: list[Violation] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]

    @property
    def ok(self) -> bool:
        return not self.violations


def check(ops: Sequence[Op], replicas: Sequence[Replica]) -> Verdict:
    verdict = Verdict()
    for op in ops:
        verdict.counts[f"{op.f} {op.outcome}"] += 1
        if op.outcome == "fail" and op.error is not None:
            verdict.errors[op.error.split(":")[0]] += 1
    found: dict[tuple[str, str, str], list[str]] = {}
    for replica in replicas:
        for kind, subject, detail in check_set(ops, replica.elements):
            found.setdefault((kind, subject, detail), []).append(replica.node)
        for kind, subject, detail in check_registers(ops, replica.registers):
            found.setdefault((kind, subject, detail), []).append(replica.node)
    verdict.violations = [
        Violation(kind, subject, tuple(nodes), detail)
        for (kind, subject, detail), nodes in sorted(found.items())
    ]
    return verdict


def check_set(ops: Sequence[Op], present: frozenset[str]) -> list[tuple[str, str, str]]:
    """(kind, element, detail) of every OR-Set violation in one replica."""
    adds = {op.key: op for op in ops if op.f == ADD}
    removes: dict[str, list[Op]] = {}
    for op in ops:
        if op.f == REMOVE:
            removes.setdefault(op.key, []).append(op)
    out = []
    for element in sorted(present - adds.keys()):
        out.append(("phantom", element, "present, but no add of it was ever attempted"))
    for element, add in sorted(adds.items()):
        tried = removes.get(element, [])
        if add.acked and element not in present and not tried:
            out.append(("lost add", element, f"{add.describe()}; absent, never removed"))
        acked_removes = [r for r in tried if r.acked and r.observed]
        if acked_removes and element in present:
            out.append(
                (
                    "undone remove",
                    element,
                    f"{acked_removes[0].describe()} (after {add.describe()}); still present",
                )
            )
    return out


def check_registers(ops: Sequence[Op], values: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(kind, key, detail) of every LWW-map violation in one replica."""
    puts: dict[str, list[Op]] = {}
    for op in ops:
        if op.f == PUT:
            puts.setdefault(op.key, []).append(op)
    out = []
    for key in sorted(values.keys() - puts.keys()):
        out.append(("phantom value", key, f"{values[key]!r} in a key no put ever wrote"))
    for key, writes in sorted(puts.items()):
        acked = [w for w in writes if w.acked]
        if key not in values:
            if acked:
                out.append(("lost register", key, f"absent; {acked[-1].describe()}"))
            continue
        final = values[key]
        writer = next((w for w in writes if w.value == final), None)
        if writer is None:
            out.append(("phantom value", key, f"{final!r}: no put of {key!r} wrote it"))
            continue
        if writer.complete_wall is None or not writer.acked:
            continue  # cut short or failed: it may have committed at any time
        later = [w for w in acked if w.invoke_wall > writer.complete_wall + STALE_MARGIN_NS]
        if later:
            winner = max(later, key=lambda w: w.invoke_wall)
            out.append(
                (
                    "stale register",
                    key,
                    f"holds {final!r} of {writer.describe()}, but {winner.describe()} "
                    f"was invoked {(winner.invoke_wall - writer.complete_wall) / 1e6:.1f} ms "
                    "after that was acknowledged",
                )
            )
    return out
