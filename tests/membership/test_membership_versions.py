"""Protocol versions: the one two nodes agree on, the hello forms each peer is sent, and
the refusal of a peer with none in common (counted by the caller, logged sparingly)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.membership.versions import (
    OVERLAY,
    RELAY_TREE,
    SPOKEN,
    UNLISTED,
    HelloForms,
    PeerVersions,
    Refusal,
    negotiate,
    spoken,
)

version_lists = st.lists(st.integers(1, 10), max_size=5)


@given(mine=version_lists, theirs=version_lists)
def test_two_nodes_use_the_highest_version_both_speak(mine: list[int], theirs: list[int]) -> None:
    agreed = negotiate(mine, theirs)
    assert agreed == negotiate(theirs, mine)
    if agreed is None:
        assert not set(mine) & set(theirs)
    else:
        assert agreed in mine and agreed in theirs
        assert all(v <= agreed for v in set(mine) & set(theirs))


def test_a_hello_without_versions_speaks_the_first_one() -> None:
    assert UNLISTED == (1,) and SPOKEN[0] == 1  # so this build and v0.1.0 agree on 1
    peers = PeerVersions(log_interval_ms=1000)
    assert peers.forms("old") is HelloForms.BOTH  # not heard yet
    assert peers.heard("old", 4, None, 0) == 1
    assert peers.forms("old") is HelloForms.UNLISTED  # it refuses the form with the list
    assert peers.heard("new", 4, SPOKEN, 0) == max(SPOKEN)
    assert peers.forms("new") is HelloForms.LISTED
    assert peers.agreements() == {"new": max(SPOKEN), "old": 1}


def test_the_copy_without_versions_does_not_lower_what_the_listed_hello_said() -> None:
    peers = PeerVersions(log_interval_ms=1000)
    assert peers.heard("b", 4, SPOKEN, 0) == 2
    assert peers.heard("b", 4, None, 0) == 2  # the same life's copy for older nodes
    assert peers.heard("b", 3, (1,), 0) == 2  # an older life's hello, overtaken
    assert peers.heard("b", 5, None, 0) == 1  # a new life, of the old build (a downgrade)
    assert peers.forms("b") is HelloForms.UNLISTED
    # The copy may arrive first: the listed hello of the same life then raises it.
    assert peers.heard("c", 1, None, 0) == 1
    assert peers.heard("c", 1, SPOKEN, 0) == 2


def test_a_peer_with_no_common_version_is_refused_and_logged_sparingly() -> None:
    peers = PeerVersions(log_interval_ms=1000)
    first = peers.heard("future", 1, (7, 8), 0)
    assert isinstance(first, Refusal) and first.log_now
    reason = first.reason()
    assert "future" in reason and "[7, 8]" in reason and str(list(SPOKEN)) in reason
    assert peers.refused("future") and peers.agreed("future") is None
    again = peers.heard("future", 1, (7, 8), 999)
    assert isinstance(again, Refusal) and not again.log_now  # within the interval
    # Its copy without versions (same life) does not let it in.
    assert isinstance(peers.heard("future", 1, None, 1000), Refusal)
    later = peers.heard("future", 1, (7, 8), 2000)
    assert isinstance(later, Refusal) and later.log_now
    assert peers.agreements() == {"future": None}
    # A new life that speaks a common version is let in; forgetting judges afresh.
    assert peers.heard("future", 2, (2, 7), 2001) == 2 and not peers.refused("future")
    peers.forget("future")
    assert peers.forms("future") is HelloForms.BOTH and not peers.refused("future")


@pytest.mark.parametrize("theirs", [(), (0,), (3, 4)])
def test_no_common_version_with_a_build_that_speaks_only_others(theirs: tuple[int, ...]) -> None:
    assert negotiate(SPOKEN, theirs) is None


def test_nodes_of_the_two_membership_modes_share_no_version_and_say_so() -> None:
    assert negotiate(spoken(overlay=True), spoken(overlay=False)) is None
    overlay = PeerVersions(log_interval_ms=1000, spoken=spoken(overlay=True))
    mesh = PeerVersions(log_interval_ms=1000, spoken=spoken(overlay=False))
    for peers, theirs in ((overlay, spoken(overlay=False)), (mesh, spoken(overlay=True))):
        refusal = peers.heard("other", 1, theirs, 0)
        assert isinstance(refusal, Refusal) and refusal.other_mode
        reason = refusal.reason()
        assert "membership mode" in reason and "full mesh" in reason and "overlay" in reason
    # A node of tag v0.1.0 (no list: version 1) is a full-mesh node to an overlay one.
    old = overlay.heard("old", 1, None, 0)
    assert isinstance(old, Refusal) and old.other_mode
    # A later build's version is no mode of this one: refused as before, not as a mode.
    future = overlay.heard("future", 1, (99,), 0)
    assert isinstance(future, Refusal) and not future.other_mode
    assert "membership mode" not in future.reason()
    # Two overlay nodes agree on the overlay's version.
    assert PeerVersions(1000, spoken(overlay=True)).heard("b", 1, spoken(True), 0) == RELAY_TREE
    # An overlay node of tag v0.2.0 (version 3, flooding) is one this build links to.
    assert PeerVersions(1000, spoken(overlay=True)).heard("c", 1, (OVERLAY,), 0) == OVERLAY
