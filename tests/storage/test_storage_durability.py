"""When a commit is on disk: each durable write waits for the flush of its meta page, and
one flush covers every commit finished before it (Environment.commit / make_durable)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.settings import NodeSettings
from crdtstore.storage.environment import Environment


@pytest.fixture(params=["sync", "async"])
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Environment]:
    e = Environment(tmp_path / "e", NodeSettings(durability=request.param), Counter())
    e.flushes = 0  # type: ignore[attr-defined]
    real = e.sync

    def counted() -> None:
        e.flushes += 1  # type: ignore[attr-defined]
        real()

    e.sync = counted  # type: ignore[method-assign]
    yield e
    e.close()


def commit_one(env: Environment, key: bytes | None) -> int:
    env.gate.enter()
    try:
        txn = env.begin_write()
        if key is not None:
            txn.put(key, b"v")
        return env.commit(txn, dirty=key is not None)
    finally:
        env.gate.exit()


def test_a_write_returns_after_one_flush(env: Environment) -> None:
    env.write(lambda txn: txn.put(b"a", b"1"))
    assert env.flushes == (1 if env.settings.durability == "sync" else 0)  # type: ignore[attr-defined]


def test_a_later_commit_makes_the_earlier_durable_and_one_flush_covers_many(
    env: Environment,
) -> None:
    sync = env.settings.durability == "sync"
    t1, t2, t3 = (commit_one(env, k) for k in (b"a", b"b", b"c"))
    assert t1 < t2 < t3
    env.make_durable(t1)  # t2's commit flushed its data, and t1's meta page with it
    env.make_durable(t2)
    assert env.flushes == 0  # type: ignore[attr-defined]
    env.make_durable(t3)  # nothing after it: its meta page needs a flush of its own
    env.make_durable(t3)
    env.make_durable(t1)
    assert env.flushes == (1 if sync else 0)  # type: ignore[attr-defined]


def test_a_commit_that_changed_nothing_flushed_nothing_for_the_one_before(
    env: Environment,
) -> None:
    t1 = commit_one(env, b"a")
    commit_one(env, None)  # LMDB flushes nothing for it: t1's meta page is not on disk
    env.make_durable(t1)
    assert env.flushes == (1 if env.settings.durability == "sync" else 0)  # type: ignore[attr-defined]
