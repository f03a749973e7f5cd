"""Membership messages on the wire: the forms of this version and of the one before read,
nothing else does, and each added field is checked as strictly as the old ones."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import FORMAT_VERSION, pack
from crdtstore.errors import DecodeError
from crdtstore.membership.messages import Heartbeat, Hello
from crdtstore.sync.messages import decode_message, encode_message

ADDR = "tcp://127.0.0.1:7101"
PUB = "tcp://127.0.0.1:40001"


def wire(kind: str, *fields: Any) -> bytes:
    return pack([FORMAT_VERSION, kind, *fields])


@given(
    incarnation=st.integers(0, 1 << 62),
    topics=st.none() | st.lists(st.sampled_from(["cfg", "jobs", "x" * 255]), max_size=4),
    started=st.integers(0, 1 << 62),
    reply=st.booleans(),
)
def test_a_hello_carries_its_record(
    incarnation: int, topics: list[str] | None, started: int, reply: bool
) -> None:
    hello = Hello(
        "b",
        ADDR,
        PUB,
        None,
        reply,
        incarnation=incarnation,
        topics=None if topics is None else tuple(topics),
        started_at_ms=started,
    )
    assert decode_message(encode_message(hello)) == hello
    record = hello.record()
    assert record is not None and (record.node_id, record.incarnation) == ("b", incarnation)
    assert (record.router, record.pub, record.topics) == (ADDR, PUB, hello.topics)


def test_the_forms_of_earlier_nodes_still_read_and_are_written_without_the_new_fields() -> None:
    old_hello = wire("hello", "b", ADDR, PUB, None, False)
    hello = decode_message(old_hello)
    assert hello == Hello("b", ADDR, PUB, None, False)
    assert hello.record() is None  # no incarnation: nothing to judge a past life by
    assert encode_message(hello) == old_hello
    old_beat = wire("heartbeat", "a", 3, {"c": 2})
    assert decode_message(old_beat) == Heartbeat("a", 3, {"c": 2})


HELLO = ["b", ADDR, PUB, None, True, 2, ["cfg"], 5]


def but(fields: list[Any], index: int, value: Any) -> list[Any]:
    """``fields`` with the one at ``index`` replaced by ``value``."""
    return [value if i == index else f for i, f in enumerate(fields)]


@pytest.mark.parametrize(
    "fields",
    [
        HELLO[:4],
        HELLO[:6],  # an added field alone
        HELLO[:7],
        [*HELLO, None],  # an unknown field more
        but(HELLO, 5, None),  # a new form lacking its incarnation
        but(HELLO, 5, True),
        but(HELLO, 6, "cfg"),  # topics not a list
        but(HELLO, 6, [""]),  # an empty namespace
        but(HELLO, 6, ["cfg"] * 1025),
        but(HELLO, 7, -1),  # started before the epoch
        but(HELLO, 7, None),
    ],
)
def test_each_broken_rule_is_refused(fields: list[Any]) -> None:
    with pytest.raises(DecodeError):
        decode_message(wire("hello", *fields))


def test_the_hand_made_baseline_is_valid() -> None:
    assert decode_message(wire("hello", *HELLO)).incarnation == 2
