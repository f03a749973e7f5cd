"""The subtle cases of OR-Set and LWW-map semantics, one named example each.

Replicas apply their own deltas at once (``state.join(delta)``), like the store does; a
"message" is a delta or a whole state handed to another replica's ``join``.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from crdtstore.crdt import Dot, DotMap, LWWMap, ORSet

V = TypeVar("V", ORSet, LWWMap)

T0 = 1_000 << 16  # an HLC timestamp; the tests pick timestamps to force an order


def join(value: V, *others: DotMap[Any]) -> V:
    """``value.join(o1).join(o2)...``, keeping the concrete type for the type checker."""
    for other in others:
        value = cast(V, value.join(other))
    return value


def test_concurrent_add_wins_over_remove() -> None:
    a = ORSet()
    a = join(a, a.add("a", "x"))
    b = join(ORSet(), a)
    # Concurrently: a removes x (it saw a:1), b adds x again (dot b:1, unseen by a).
    removed = a.remove("a", "x")
    a = join(a, removed)
    added = b.add("b", "x")
    b = join(b, added)
    assert "x" not in a and "x" in b
    a, b = join(a, added), join(b, removed)
    assert a == b
    assert "x" in a and set(a.dots("x")) == {Dot("b", 1)}


def test_remove_of_element_both_sides_saw_is_not_lost() -> None:
    a = ORSet()
    for element in ("x", "y"):
        a = join(a, a.add("a", element))
    b = join(ORSet(), a)  # both sides have seen x and y
    a = join(a, a.remove("a", "x"))
    # A naive repair compares contexts and ships "entries the peer has not seen": a has
    # nothing b has not seen (its remove left no entry behind), so it would ship nothing.
    unseen = {k: e for k, e in a.entries.items() if any(d not in b.context for d in e)}
    assert unseen == {}
    assert "x" in b
    # Joining a's state (its entries *and* its context) makes b drop x: a has seen
    # x's dot and no longer holds it, so it was removed there.
    b = join(b, a)
    assert "x" not in b and "y" in b
    assert b == a
    assert "x" not in b.entries, "a removed element must leave no tombstone entry"


def test_add_after_remove_on_the_same_replica_is_a_new_dot() -> None:
    s = ORSet()
    s = join(s, s.add("a", 7))
    s = join(s, s.remove("a", 7))
    late = join(ORSet(), s.add("a", 7))  # a replica that never saw the first add
    s = join(s, s.add("a", 7))
    assert 7 in s and set(s.dots(7)) == {Dot("a", 3)}
    assert join(late, s) == join(s, late)


def test_lww_concurrent_puts_resolved_by_timestamp_then_replica() -> None:
    base = LWWMap()
    # Three concurrent puts of "k": "a" and "c" at the same timestamp, "b" earlier.
    puts = [
        base.put("a", "k", "from a", T0 + 5),
        base.put("b", "k", "from b", T0 + 1),
        base.put("c", "k", "from c", T0 + 5),
    ]
    merged = [LWWMap(), LWWMap(), LWWMap()]
    for i, order in enumerate([(0, 1, 2), (2, 1, 0), (1, 2, 0)]):
        for j in order:
            merged[i] = join(merged[i], puts[j])
    assert merged[0] == merged[1] == merged[2]
    # Highest timestamp wins; between "a" and "c" at equal timestamps, the greater id.
    assert merged[0].get("k") == "from c"
    assert merged[0].timestamp("k") == T0 + 5
    # All three concurrent writes are kept, so that a later delete can reveal the others.
    assert len(merged[0].dots("k")) == 3


def test_lww_delete_of_winner_reveals_concurrent_write_everywhere() -> None:
    a, b, c = LWWMap(), LWWMap(), LWWMap()
    put_a = a.put("a", "k", "A", T0 + 9)  # the winner
    put_b = b.put("b", "k", "B", T0 + 1)  # concurrent, loses
    a, b = join(a, put_a), join(b, put_b)
    # c sees only a's write and deletes it: its delete observed a:1, not b:1.
    c = join(c, put_a)
    assert c.get("k") == "A"
    deleted = c.delete("c", "k")
    c = join(c, deleted)
    assert "k" not in c
    # Every replica ends with b's write, whatever order the three messages arrive in.
    replicas = [
        join(a, put_b, deleted),
        join(b, deleted, put_a),
        join(c, put_b),
        join(LWWMap(), deleted, put_b, put_a),
    ]
    for r in replicas:
        assert r == replicas[0]
        assert r.get("k") == "B"
        assert dict(r.items()) == {"k": "B"}


def test_lww_delete_leaves_no_tombstone() -> None:
    m = LWWMap()
    m = join(m, m.put("a", "k", "v", T0))
    m = join(m, m.put("a", "other", 1, T0 + 1))
    before = m.context
    deleted = m.delete("a", "k")
    m = join(m, deleted)
    assert "k" not in m.entries  # no entry at all, not an empty or marked one
    assert "k" not in m and m.get("k") is None and dict(m.items()) == {"other": 1}
    # The context grew by the delete's own dot, and nothing else.
    assert set(m.context) - set(before) == {Dot("a", 3)}
    # The delta does list the key (empty): a receiver must visit it to drop the dots.
    assert deleted.is_delta and dict(deleted.entries) == {"k": {}}
    assert set(deleted.context) == {Dot("a", 1), Dot("a", 3)}


def test_put_concurrent_with_delete_survives() -> None:
    a = LWWMap()
    a = join(a, a.put("a", "k", "old", T0))
    b = join(LWWMap(), a)
    deleted = a.delete("a", "k")  # observed a:1 only
    a = join(a, deleted)
    # b writes concurrently with an *older* timestamp: it still survives the delete.
    put = b.put("b", "k", "new", T0 - 500)
    b = join(b, put)
    a, b = join(a, put), join(b, deleted)
    assert a == b
    assert a.get("k") == "new"
    assert set(a.dots("k")) == {Dot("b", 1)}


def test_put_replaces_every_write_it_observed() -> None:
    a = join(LWWMap(), LWWMap().put("a", "k", 1, T0))
    b = join(LWWMap(), LWWMap().put("b", "k", 2, T0))
    both = join(a, b)
    assert len(both.dots("k")) == 2
    resolved = join(both, both.put("c", "k", 3, T0 - 1))  # observes both; timestamp irrelevant
    assert resolved.get("k") == 3
    assert len(resolved.dots("k")) == 1
    assert join(a, resolved) == resolved == join(b, resolved)
