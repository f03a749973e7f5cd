"""Protocol versions: the one two nodes agree on, and the refusal of a peer with none in
common (counted by the caller, logged sparingly), a full-mesh node of an earlier release
above all (it is told which mode it runs, and how to upgrade)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstore.membership.versions import (
    FULL_MESH,
    OVERLAY,
    RELAY_TREE,
    SPOKEN,
    UNLISTED,
    PeerVersions,
    Refusal,
    negotiate,
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


def test_this_build_speaks_the_overlays_versions_only() -> None:
    assert SPOKEN == (OVERLAY, RELAY_TREE) == (3, 4)
    assert negotiate(SPOKEN, FULL_MESH) is None and negotiate(SPOKEN, UNLISTED) is None
    peers = PeerVersions(log_interval_ms=1000)
    assert peers.spoken == SPOKEN
    assert peers.heard("flood", 1, (OVERLAY,), 0) == OVERLAY  # a v0.2.0 overlay node
    assert peers.heard("new", 1, SPOKEN, 0) == RELAY_TREE
    assert peers.agreements() == {"flood": OVERLAY, "new": RELAY_TREE}


def test_the_copy_without_versions_does_not_lower_what_the_listed_hello_said() -> None:
    # A v0.2.0 node sends a node it has not heard yet its hello in both forms.
    peers = PeerVersions(log_interval_ms=1000)
    assert not peers.listed("b")
    assert peers.heard("b", 4, SPOKEN, 0) == RELAY_TREE
    assert peers.listed("b")
    assert peers.heard("b", 4, None, 0) == RELAY_TREE  # the same life's copy for older nodes
    assert peers.heard("b", 3, (3,), 0) == RELAY_TREE  # an older life's hello, overtaken
    # A new life of a v0.1.0 build (a downgrade): refused, as the full mesh it runs.
    refusal = peers.heard("b", 5, None, 0)
    assert isinstance(refusal, Refusal) and refusal.other_mode and not peers.listed("b")
    # The copy may arrive first: refused; the listed hello of the same life lets it in.
    assert isinstance(peers.heard("c", 1, None, 0), Refusal)
    assert peers.heard("c", 1, SPOKEN, 0) == RELAY_TREE and not peers.refused("c")


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
    assert peers.heard("future", 2, (4, 7), 2001) == 4 and not peers.refused("future")
    peers.forget("future")
    assert not peers.listed("future") and not peers.refused("future")


@pytest.mark.parametrize("theirs", [(), (0,), (1, 2), (5, 6)])
def test_no_common_version_with_a_build_that_speaks_only_others(theirs: tuple[int, ...]) -> None:
    assert negotiate(SPOKEN, theirs) is None


@pytest.mark.parametrize(
    "theirs", [None, (1,), FULL_MESH], ids=["v0.1.0", "full-mesh-1", "full-mesh-v0.2.0"]
)
def test_a_full_mesh_node_is_refused_with_the_modes_and_the_upgrade_path(
    theirs: tuple[int, ...] | None,
) -> None:
    refusal = PeerVersions(log_interval_ms=1000).heard("mesh", 1, theirs, 0)
    assert isinstance(refusal, Refusal) and refusal.other_mode
    reason = refusal.reason()
    assert "it runs the full mesh membership mode, this node the overlay one" in reason
    assert "v0.2.0" in reason and "README" in reason


def test_a_later_builds_version_is_refused_as_a_version_not_as_a_mode() -> None:
    future = PeerVersions(log_interval_ms=1000).heard("future", 1, (99,), 0)
    assert isinstance(future, Refusal) and not future.other_mode
    assert "membership mode" not in future.reason()
    # A mix of modes' versions is no mode either (nothing in common, though: refused).
    mixed = PeerVersions(log_interval_ms=1000).heard("mixed", 1, (2, 99), 0)
    assert isinstance(mixed, Refusal) and not mixed.other_mode
    # Two nodes of this build agree on the tree relay's version; a v0.2.0 overlay node
    # (version 3, flooding) is one this build links to.
    assert PeerVersions(1000).heard("b", 1, SPOKEN, 0) == RELAY_TREE
    assert PeerVersions(1000).heard("c", 1, (OVERLAY,), 0) == OVERLAY
