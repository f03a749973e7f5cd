"""Membership messages on the wire: the forms of this version and of the one before read,
nothing else does, and each added field is checked as strictly as the old ones."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import FORMAT_VERSION, pack
from crdtstore.errors import DecodeError
from crdtstore.membership.messages import MAX_OFFSET_MS, Hello
from crdtstore.membership.versions import MAX_VERSION, MAX_VERSIONS
from crdtstore.sync.messages import decode_message, encode_message

ADDR = "tcp://127.0.0.1:7101"
PUB = "tcp://127.0.0.1:40001"

offsets = st.integers(-MAX_OFFSET_MS, MAX_OFFSET_MS)
readings = st.integers(0, 1 << 62)


def wire(kind: str, *fields: Any) -> bytes:
    return pack([FORMAT_VERSION, kind, *fields])


@given(
    incarnation=st.integers(0, 1 << 62),
    topics=st.none() | st.lists(st.sampled_from(["cfg", "jobs", "x" * 255]), max_size=4),
    clock=readings,
    offset=st.none() | offsets,
    reply=st.booleans(),
)
def test_a_hello_carries_its_record_and_clock(
    incarnation: int, topics: list[str] | None, clock: int, offset: int | None, reply: bool
) -> None:
    hello = Hello(
        "b",
        ADDR,
        PUB,
        None,
        reply,
        incarnation=incarnation,
        topics=None if topics is None else tuple(topics),
        started_at_ms=clock - 1 if clock else 0,
        clock_ms=clock,
        offset_ms=offset,
    )
    assert decode_message(encode_message(hello)) == hello
    record = hello.record()
    assert record is not None and (record.node_id, record.incarnation) == ("b", incarnation)
    assert (record.router, record.pub, record.topics) == (ADDR, PUB, hello.topics)


@given(
    versions=st.lists(st.integers(1, MAX_VERSION), min_size=1, max_size=MAX_VERSIONS, unique=True)
)
def test_a_hello_lists_the_versions_its_sender_speaks(versions: list[int]) -> None:
    hello = Hello("b", ADDR, PUB, None, False, 3, None, 1, 2, None, versions=tuple(versions))
    data = encode_message(hello)
    assert decode_message(data) == hello
    # Without the list it is the ten-field form a v0.1.0 node reads, and nothing more.
    plain = Hello("b", ADDR, PUB, None, False, 3, None, 1, 2, None)
    assert decode_message(encode_message(plain)).versions is None
    assert encode_message(plain) == wire("hello", "b", ADDR, PUB, None, False, 3, None, 1, 2, None)


def test_the_forms_of_earlier_nodes_still_read_and_are_written_without_the_new_fields() -> None:
    old_hello = wire("hello", "b", ADDR, PUB, None, False)
    hello = decode_message(old_hello)
    assert hello == Hello("b", ADDR, PUB, None, False)
    assert hello.record() is None  # no incarnation: nothing to judge a past life by
    assert encode_message(hello) == old_hello


def test_a_heartbeat_of_the_removed_full_mesh_is_refused_as_an_unknown_kind() -> None:
    # Both forms a v0.2.0 full-mesh node published (with and without a clock reading).
    for fields in (["a", 3, {}], ["a", 3, {}, 7, {"b": -9}]):
        with pytest.raises(DecodeError, match="heartbeat"):
            decode_message(wire("heartbeat", *fields))


HELLO = ["b", ADDR, PUB, None, True, 2, ["cfg"], 5, 7, -9]


def but(fields: list[Any], index: int, value: Any) -> list[Any]:
    """``fields`` with the one at ``index`` replaced by ``value``."""
    return [value if i == index else f for i, f in enumerate(fields)]


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("hello", HELLO[:4]),
        ("hello", HELLO[:6]),  # an added field alone
        ("hello", HELLO[:9]),
        ("hello", [*HELLO, None]),  # an unknown field more
        ("hello", but(HELLO, 5, None)),  # a new form lacking its incarnation
        ("hello", but(HELLO, 5, True)),
        ("hello", but(HELLO, 6, "cfg")),  # topics not a list
        ("hello", but(HELLO, 6, [""])),  # an empty namespace
        ("hello", but(HELLO, 6, ["cfg"] * 1025)),
        ("hello", but(HELLO, 7, -1)),  # started before the epoch
        ("hello", but(HELLO, 8, None)),  # no clock reading
        ("hello", but(HELLO, 8, -7)),
        ("hello", but(HELLO, 9, 1.5)),
        ("hello", but(HELLO, 9, MAX_OFFSET_MS + 1)),
        ("hello", [*HELLO, [1, 2], None]),  # an unknown field beyond the versions
        ("hello", [*HELLO, []]),  # speaks nothing
        ("hello", [*HELLO, [0]]),
        ("hello", [*HELLO, [1, 1]]),
        ("hello", [*HELLO, ["2"]]),
        ("hello", [*HELLO, [MAX_VERSION + 1]]),
        ("hello", [*HELLO, list(range(1, MAX_VERSIONS + 2))]),
        ("hello", [*HELLO[:5], [1, 2]]),  # versions without the record before them
    ],
)
def test_each_broken_rule_is_refused(kind: str, fields: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode_message(wire(kind, *fields))


def test_the_hand_made_baselines_are_valid() -> None:
    assert decode_message(wire("hello", *HELLO)).offset_ms == -9
    assert decode_message(wire("hello", *HELLO, [1, MAX_VERSION])).versions == (1, MAX_VERSION)
