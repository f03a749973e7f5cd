"""A replica that cannot store what it receives: a real LMDB directory whose map is full
at its ``max_map_size``. The engine counts and logs a local storage failure naming the
cause, never invalid input, and repair fetches what was lost once there is room."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pytest

from crdtstore.errors import StorageError
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica
from crdtstore.storage.replica import wall_ms
from crdtstore.sync.engine import Outgoing, Publish, SyncEngine
from crdtstore.sync.outgoing import PublishTopic
from crdtstore.sync.relay_topics import data_topic, edge_weight, hop_mark, parse_topic
from crdtstore.sync.relaying import TREE
from crdtstore.sync.settings import SyncSettings

SYNC = SyncSettings(digest_interval_ms=200, repair_grace_ms=300, repair_timeout_ms=500)
FULL_AT = 512 * 1024
VALUE = "v" * 1000
INCOMING = 40
"""Keys of the writer's batch, of ``VALUE`` each: more than the full map has room for."""


def filled(path: Path) -> LMDBReplica:
    """A replica whose map is full at ``max_map_size``: filled by its own writes, 50 keys
    a commit and then one, until a commit fails."""
    r = LMDBReplica(path, "r", NodeSettings(map_size=FULL_AT, max_map_size=FULL_AT))
    n = 0
    for per_commit in (50, 1):
        while True:
            w = r.begin_local()
            try:
                for _ in range(per_commit):
                    w.put("fill", n, VALUE)
                    n += 1
                w.commit()
            except StorageError:
                w.abort()
                break
    return r


def writer(path: Path) -> tuple[LMDBReplica, bytes]:
    """A writer replica and its one batch of ``INCOMING`` keys."""
    w = LMDBReplica(path, "w")
    local = w.begin_local()
    for i in range(INCOMING):
        local.put("cfg", f"k{i}", VALUE)
    local.commit()
    (raw,) = w.log_batches("cfg", "w", 1, INCOMING) or []
    return w, raw


def refused(engine: SyncEngine) -> dict[str, int]:
    """The engine's counts of input it refused as bad."""
    return {
        k: v for k, v in engine.stats.items() if v and (k.startswith("rejected") or "error" in k)
    }


@pytest.mark.parametrize("grouped", [True, False], ids=["group-commit", "alone"])
def test_a_batch_a_full_replica_cannot_store_is_a_local_failure_not_invalid_input(
    tmp_path: Path, grouped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    w, raw = writer(tmp_path / "w")
    r = filled(tmp_path / "r")
    try:
        engine = SyncEngine("r", r, SYNC)
        engine.add_peer("w")
        with caplog.at_level(logging.WARNING, logger="crdtstore.sync.engine"):
            if grouped:
                engine.on_messages([("", raw, "w")], wall_ms())
            else:
                engine.on_message("", raw, wall_ms(), "w")
        assert engine.stats["local_storage_failures"] == 1
        assert refused(engine) == {}
        assert r.context("cfg").max_seq("w") == 0  # not applied: repair will ask again
        (record,) = caplog.records
        assert record.levelno == logging.ERROR
        message = record.getMessage()
        assert "local storage failure" in message and "max_map_size" in message
        assert "not the sender's fault" in message
    finally:
        r.close()
        w.close()


def exchange(engines: dict[str, SyncEngine], node: str, out: Iterable[Outgoing], now: int) -> None:
    """Deliver what ``node``'s engine sent, and what that brings, until nothing is sent."""
    pending = [(node, item) for item in out]
    while pending:
        sender, item = pending.pop(0)
        if isinstance(item, Publish):
            targets = [(n, "", sender) for n in engines if n != sender]
        else:
            targets = [(item.peer, sender, None)]
        for target, peer, publisher in targets:
            replies = engines[target].on_message(peer, item.data, now, publisher)
            pending.extend((target, reply) for reply in replies)


def test_what_a_full_replica_could_not_store_is_repaired_once_there_is_room(
    tmp_path: Path,
) -> None:
    w, raw = writer(tmp_path / "w")
    r = filled(tmp_path / "r")
    engine = SyncEngine("r", r, SYNC)
    engine.add_peer("w")
    start = wall_ms()  # the writer's stamps are of the wall clock: so is the engines' time
    engine.on_messages([("", raw, "w")], start)
    assert engine.stats["local_storage_failures"] == 1
    r.close()

    # The operator raises max_map_size and restarts the node.
    r = LMDBReplica(tmp_path / "r", "r", NodeSettings(map_size=FULL_AT, max_map_size=64 * FULL_AT))
    try:
        engines = {"r": SyncEngine("r", r, SYNC), "w": SyncEngine("w", w, SYNC)}
        engines["r"].add_peer("w")
        engines["w"].add_peer("r")
        for now in range(start + 1_000, start + 10_000, 100):
            for name, engine in engines.items():
                exchange(engines, name, engine.on_tick(now), now)
            if r.context("cfg") == w.context("cfg"):
                break
        assert r.context("cfg") == w.context("cfg")
        assert r.read_range("cfg", 0, 1 << 64).entries == w.read_range("cfg", 0, 1 << 64).entries
        assert refused(engines["r"]) == {}
    finally:
        r.close()
        w.close()


def test_a_relayed_batch_the_replica_could_not_store_is_passed_on_once(tmp_path: Path) -> None:
    # In the overlay mode a node passes on each new batch it hears. One that joined a group
    # commit and then failed to apply is still missing from the context, so each copy from
    # another neighbour would look new again if the context decided: it would go round
    # every cycle of the overlay for ever. The relay's own record of what it saw decides.
    w, raw = writer(tmp_path / "w")
    r = filled(tmp_path / "r")
    try:
        engine = SyncEngine("r", r, SYNC, relay=True)
        now = wall_ms()
        neighbours = ["n1", "n2", "n3"]
        for n in neighbours:
            engine.link(n, TREE, None)
        out: list[Outgoing] = []
        for n in neighbours:  # the same batch, from three neighbours in turn
            topic = data_topic(n, "cfg", hop_mark("w"), edge_weight("w", n))
            out += engine.on_messages([("", raw, n, topic)], now)
        assert engine.stats["local_storage_failures"] == 1
        relayed = [o for o in out if isinstance(o, PublishTopic) and o.data == raw]
        assert len(relayed) == 1
        assert parse_topic(relayed[0].topic).publisher == "r"
        assert engine.stats["relay_duplicates"] == 2
    finally:
        r.close()
        w.close()
