"""The directory's member view (``DIR/members.mdb``) and the watcher that follows it.

Real LMDB files; the clock and "is the holder's process running" are parameters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtstore.membership import MemberStatus, StatusChange
from crdtstore.membership.observed import Observation, ViewStamp
from crdtstore.storage import member_view
from crdtstore.storage.layout import pack_stored
from crdtstore.storage.member_view import ROW_PREFIX, STAMP_KEY, MemberViewStore
from crdtstore.storage.member_watch import MemberWatcher

ALIVE, SUSPECT, DEAD, LEFT, UNKNOWN = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
    MemberStatus.UNKNOWN,
)


def stamp(at: int, stopped: bool = False) -> ViewStamp:
    return ViewStamp(7, "a", "tcp://127.0.0.1:1", at, 1000, stopped)


def seen(status: MemberStatus, incarnation: int = 1, at: int = 0) -> Observation:
    return Observation(status, incarnation, at, at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MemberViewStore]:
    view = MemberViewStore.open_for_writing(tmp_path, Counter())
    yield view
    view.close()


def test_a_write_replaces_the_whole_view(store: MemberViewStore) -> None:
    assert store.read() == (None, {})
    store.write(stamp(10), {"b": seen(ALIVE), "c": seen(DEAD, 2, 5)})
    store.write(stamp(20), {"b": seen(SUSPECT, 1, 15)})
    assert store.read() == (stamp(20), {"b": seen(SUSPECT, 1, 15)})


def test_a_write_puts_only_the_rows_that_changed_and_a_new_handle_puts_all(
    store: MemberViewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {f"n{i}": seen(ALIVE, 1, i) for i in range(50)}
    puts: list[bytes] = []
    begin = MemberViewStore._begin

    def counting(self: MemberViewStore, write: bool = False) -> object:
        txn = begin(self, write)
        if not write:
            return txn

        class Counted:  # the transaction, with its puts recorded
            def __getattr__(self, name: str) -> object:
                return getattr(txn, name)

            def __enter__(self) -> Counted:
                txn.__enter__()
                return self

            def __exit__(self, *exc: object) -> None:
                txn.__exit__(*exc)

            def put(self, key: bytes, value: bytes) -> bool:
                puts.append(bytes(key))
                return bool(txn.put(key, value))

        return Counted()

    monkeypatch.setattr(MemberViewStore, "_begin", counting)
    store.write(stamp(10), members)
    assert len(puts) == 51  # every row, and the stamp
    puts.clear()
    changed = dict(members, n7=seen(SUSPECT, 1, 20))
    del changed["n9"]
    store.write(stamp(20), changed)
    assert sorted(puts) == [ROW_PREFIX + b"n7", STAMP_KEY]  # the one changed row, the stamp
    assert store.read() == (stamp(20), changed)
    # Another handle knows nothing of what this one wrote: it puts every row, and drops
    # rows it does not want (here n3, which only the first handle's write holds).
    puts.clear()
    other = MemberViewStore(tmp_path, Counter())
    try:
        fewer = {k: v for k, v in changed.items() if k != "n3"}
        other.write(stamp(30), fewer)
        assert len(puts) == len(fewer) + 1
        assert store.read() == (stamp(30), fewer)
    finally:
        other.close()


def test_the_change_log_keeps_the_newest_changes_in_order(
    store: MemberViewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_view, "CHANGES_KEPT", 5)
    for i in range(1, 9):
        store.write(stamp(i), {}, [(f"n{i}", None, ALIVE, i)])
    last, changes = store.changes_after(0)
    assert last == store.last_seq() == 8
    assert [(c.seq, c.node_id, c.incarnation) for c in changes] == [
        (s, f"n{s}", s) for s in range(4, 9)
    ]
    assert store.changes_after(6)[1][0].seq == 7


def test_a_damaged_entry_costs_the_reader_that_entry_only(store: MemberViewStore) -> None:
    store.write(stamp(10), {"b": seen(ALIVE), "c": seen(DEAD)})
    assert store._env is not None
    with store._env.begin(write=True) as txn:
        txn.put(ROW_PREFIX + b"c", pack_stored(["sleepy", 1, 0, 0]))
    assert store.read() == (stamp(10), {"b": seen(ALIVE)})
    with store._env.begin(write=True) as txn:
        txn.put(STAMP_KEY, b"\xc1")
    assert store.read()[0] is None  # no stamp: the view reads as stale
    assert store._stats["member_view_corrupt"] == 3  # each read counts what it skipped


def test_a_file_lmdb_cannot_open_is_replaced_by_its_writer(tmp_path: Path) -> None:
    (tmp_path / member_view.VIEW_FILE).write_bytes(b"not an lmdb file" * 512)
    stats: Counter[str] = Counter()
    view = MemberViewStore.open_for_writing(tmp_path, stats)
    try:
        view.write(stamp(1), {"b": seen(ALIVE)})
        assert view.read() == (stamp(1), {"b": seen(ALIVE)})
        assert stats["member_view_replaced"] == 1
    finally:
        view.close()


def test_handles_in_one_process_share_one_environment(store: MemberViewStore) -> None:
    other = MemberViewStore(Path(store.path).parent, Counter())
    assert other._env is store._env
    other.close()
    store.write(stamp(1), {"b": seen(ALIVE)})  # still open for the remaining handle
    assert store.read()[1] == {"b": seen(ALIVE)}


class Holder:
    """Whether the view's writer runs, as the watcher asks it."""

    def __init__(self) -> None:
        self.running = True

    def __call__(self, pid: int) -> bool:
        return self.running


def watcher(tmp_path: Path, holder: Holder) -> MemberWatcher:
    return MemberWatcher(str(tmp_path), Counter(), 0.05, lambda: 0, holder)


def changes(w: MemberWatcher, now: int) -> list[tuple[str, MemberStatus | None, MemberStatus]]:
    return [(c.node_id, c.old, c.new) for c in w.poll(now)]


def test_the_watcher_reports_each_logged_change_even_when_the_rows_moved_back(
    store: MemberViewStore, tmp_path: Path
) -> None:
    store.write(stamp(0), {"b": seen(ALIVE)}, [("b", None, ALIVE, 1)])
    w = watcher(tmp_path, Holder())
    assert changes(w, 0) == [("b", None, ALIVE)]  # what subscribe() takes as its baseline
    # Between two polls b was suspected and cleared: the rows say alive, as before.
    store.write(stamp(100), {"b": seen(SUSPECT)}, [("b", ALIVE, SUSPECT, 1)])
    store.write(stamp(200), {"b": seen(ALIVE)}, [("b", SUSPECT, ALIVE, 1)])
    assert changes(w, 250) == [("b", ALIVE, SUSPECT), ("b", SUSPECT, ALIVE)]
    assert changes(w, 300) == []


def test_the_watcher_reports_unknown_while_the_view_is_stale_then_catches_up(
    store: MemberViewStore, tmp_path: Path
) -> None:
    store.write(stamp(0), {"b": seen(ALIVE), "c": seen(LEFT)})
    holder = Holder()
    w = watcher(tmp_path, holder)
    w.poll(0)
    holder.running = False  # the role holder was killed
    assert changes(w, 100) == [("b", ALIVE, UNKNOWN)]  # c left: that stays true
    assert changes(w, 200) == []
    # A new holder: its detector took b for dead meanwhile, and logged it before this poll.
    holder.running = True
    store.write(stamp(5000), {"b": seen(DEAD, 1, 4000), "c": seen(LEFT)}, [("b", ALIVE, DEAD, 1)])
    assert changes(w, 5000) == [("b", UNKNOWN, DEAD)]
    # A view that is not rewritten goes stale by its age alone.
    assert changes(w, 5000 + 3001) == [("b", DEAD, UNKNOWN)]


def test_the_watcher_catches_up_from_the_rows_when_it_fell_behind_the_log(
    store: MemberViewStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_view, "CHANGES_KEPT", 2)
    store.write(stamp(0), {"b": seen(ALIVE)})
    w = watcher(tmp_path, Holder())
    w.poll(0)
    for i, status in enumerate([SUSPECT, ALIVE, SUSPECT, DEAD], start=1):
        store.write(stamp(i), {"b": seen(status)}, [("b", None, status, 1)])
    reported = w.poll(10)
    assert reported[-1] == StatusChange("b", SUSPECT, DEAD, 1)
