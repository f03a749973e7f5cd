"""The history of a run: every operation a client attempted, as invoke / ok / fail records.

A client appends one JSON line per event to its own file (one file per client process, so
no two writers share one): ``invoke`` before it calls the store, ``ok`` after the call
returned, ``fail`` if it raised. An operation with an invoke and no completion was cut
short (its client was killed): it may or may not have happened, and the checker treats it
so (``info``, as Jepsen calls it). A ``fail`` is treated the same way: the store may have
committed before the error surfaced.

Each line is written with one ``write`` on a file opened ``O_APPEND``, so a SIGKILL can
cut an operation short but never a line in half.

Times are the wall clock (``time.time_ns``), the clock the store's hybrid logical clocks
read, so "invoked after that write was acknowledged" means the same to the checker as to
the LWW-map; and the monotonic clock, for durations. Every process runs on one host.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["ok", "fail", "info"]
ADD = "add"
REMOVE = "remove"
PUT = "put"


class HistoryWriter:
    """One client process's history file."""

    def __init__(self, path: Path, process: str, node: str) -> None:
        self.process = process
        self.node = node
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _line(self, record: dict[str, Any]) -> None:
        record.update(process=self.process, wall=time.time_ns(), mono=time.monotonic_ns())
        os.write(self._fd, (json.dumps(record, sort_keys=True) + "\n").encode())

    def invoke(self, n: int, f: str, key: str, value: str | None, observed: bool) -> None:
        self._line(
            {
                "type": "invoke",
                "n": n,
                "f": f,
                "key": key,
                "value": value,
                "node": self.node,
                "observed": observed,
            }
        )

    def ok(self, n: int) -> None:
        self._line({"type": "ok", "n": n})

    def fail(self, n: int, error: str) -> None:
        self._line({"type": "fail", "n": n, "error": error})

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True, slots=True)
class Op:
    """One attempted operation, its invoke paired with its completion (if any)."""

    process: str
    n: int
    f: str
    """``add`` or ``remove`` (OR-Set element ``key``) or ``put`` (LWW key ``key``)."""
    key: str
    value: str | None
    node: str
    observed: bool
    """For a remove: the client saw the element in its node's replica just before."""
    invoke_wall: int
    outcome: Outcome
    complete_wall: int | None
    """None unless the outcome is ``ok`` or ``fail``."""
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.outcome == "ok"

    def describe(self) -> str:
        what = f"{self.f}({self.key!r}" + (f", {self.value!r})" if self.f == PUT else ")")
        return f"{self.process}#{self.n} {what} on {self.node}: {self.outcome}"


@dataclass(frozen=True, slots=True)
class History:
    ops: list[Op]
    torn_lines: int
    """Lines that did not parse (none are expected: see the module's docstring)."""


def records(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line's record, or None for a line that does not parse."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                yield None
                continue
            yield record if isinstance(record, dict) else None


def read_history(directory: Path) -> History:
    """Every client's operations, from every ``*.jsonl`` file in ``directory``."""
    ops: list[Op] = []
    torn = 0
    for path in sorted(directory.glob("*.jsonl")):
        invokes: dict[tuple[str, int], dict[str, Any]] = {}
        completions: dict[tuple[str, int], dict[str, Any]] = {}
        for record in records(path):
            if record is None:
                torn += 1
                continue
            ident = (record["process"], record["n"])
            (invokes if record["type"] == "invoke" else completions)[ident] = record
        for ident, inv in invokes.items():
            done = completions.get(ident)
            ops.append(
                Op(
                    process=inv["process"],
                    n=inv["n"],
                    f=inv["f"],
                    key=inv["key"],
                    value=inv["value"],
                    node=inv["node"],
                    observed=inv["observed"],
                    invoke_wall=inv["wall"],
                    outcome="info" if done is None else done["type"],
                    complete_wall=None if done is None else done["wall"],
                    error=None if done is None else done.get("error"),
                )
            )
    ops.sort(key=lambda op: op.invoke_wall)
    return History(ops, torn)
