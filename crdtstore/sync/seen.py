"""Which seqs of one (namespace, origin) a relay has seen, in bounded memory.

Seqs of an origin are dense (1, 2, 3, ...), so what was seen is a high-water mark
``hwm`` (every seq up to it) plus a few disjoint runs above it, those that came out of
order. Invariants: runs are sorted, disjoint, not adjacent to each other, and all start
above ``hwm + 1`` (a run that reaches the mark is folded into it).

Bound: at most ``max_runs`` runs. Past that the oldest gap is given up: the mark jumps
over it as if its seqs were seen. A batch of that gap arriving late is then taken for a
duplicate and not relayed; the sync engine's anti-entropy still repairs it, so the
bound costs latency for that batch, never the batch.
"""

from __future__ import annotations

import bisect


def _start(run: tuple[int, int]) -> int:
    return run[0]


class SeenRuns:
    __slots__ = ("hwm", "max_runs", "runs")

    def __init__(self, max_runs: int, hwm: int = 0) -> None:
        self.hwm = hwm
        self.max_runs = max_runs
        self.runs: list[tuple[int, int]] = []

    def covers(self, first: int, last: int) -> bool:
        """Every seq of ``first..last`` was seen."""
        if last <= self.hwm:
            return True
        lo = max(first, self.hwm + 1)
        at = bisect.bisect_right(self.runs, lo, key=_start) - 1
        return at >= 0 and self.runs[at][0] <= lo and self.runs[at][1] >= last

    def unseen(self, first: int, last: int) -> list[tuple[int, int]]:
        """The runs of ``first..last`` not seen, in order."""
        out: list[tuple[int, int]] = []
        at = max(first, self.hwm + 1)
        for a, b in self.runs:
            if at > last:
                break
            if b < at:
                continue
            if a > at:
                out.append((at, min(a - 1, last)))
            at = b + 1
        if at <= last:
            out.append((at, last))
        return out

    def add(self, first: int, last: int) -> None:
        if last <= self.hwm:
            return
        first = max(first, self.hwm + 1)
        runs = self.runs
        # Merge with every run that overlaps or touches first..last.
        i = bisect.bisect_left(runs, (first, first))
        if i > 0 and runs[i - 1][1] >= first - 1:
            i -= 1
        j = i
        while j < len(runs) and runs[j][0] <= last + 1:
            first, last = min(first, runs[j][0]), max(last, runs[j][1])
            j += 1
        runs[i:j] = [(first, last)]
        if runs[0][0] == self.hwm + 1:
            self.hwm = runs.pop(0)[1]
        while len(runs) > self.max_runs:
            self.hwm = runs.pop(0)[1]  # give up the oldest gap (see the module's note)
