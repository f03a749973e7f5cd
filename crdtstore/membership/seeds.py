"""Whether a joining node's seeds answer, and when to say that one does not.

A node joins by greeting its seeds until one answers. A wrong address, or a seed that is
down, answers nothing, and ZeroMQ retries the connection without a word: the node ran
alone, looking healthy, for as long as the seed stayed unreachable. This keeps, per seed,
when it was first greeted and whether it ever answered; a seed silent for ``patience_ms``
is unanswered (counted at each greeting), and warned about at most every
``warn_every_ms``. No clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SeedWatch:
    patience_ms: int
    warn_every_ms: int
    _first_greeted: dict[str, int] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)
    _warned_at: dict[str, int] = field(default_factory=dict)

    def greeted(self, seed: str, now_ms: int) -> int | None:
        """Record a greeting of ``seed``; how long it has been silent, if that is past
        ``patience_ms`` (None while it answered or may still answer)."""
        first = self._first_greeted.setdefault(seed, now_ms)
        silent = now_ms - first
        if seed in self._answered or silent < self.patience_ms:
            return None
        return silent

    def should_warn(self, seed: str, now_ms: int) -> bool:
        """Whether to log the silence of ``seed`` now (at most every ``warn_every_ms``)."""
        last = self._warned_at.get(seed)
        if last is not None and now_ms - last < self.warn_every_ms:
            return False
        self._warned_at[seed] = now_ms
        return True

    def answered(self, seed: str) -> None:
        self._answered.add(seed)
