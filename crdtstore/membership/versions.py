"""The protocol versions this build speaks, and which one it uses with each peer.

A cluster upgrades one node at a time, so two builds must agree on what to say to each
other. Every hello lists the versions its sender speaks; two nodes use the highest one
both speak, per peer, and a peer with none in common is refused: not connected, its
frames ignored, the reason logged (by the caller, at most every ``log_interval_ms`` per
peer) and counted. No clock is read here.

The versions (this build speaks 3 and 4; 1 and 2 are named so a refusal can say what
the peer runs):

1. The protocol of tag ``v0.1.0``, whose hellos carry no version list: every digest
   carries each namespace's whole version vector.
2. Hashed digests: an idle digest carries per namespace a hash and total of its version
   vector, and the full vector is asked for only when a hash differs (see
   :mod:`crdtstore.sync.digests`).
3. The overlay membership mode (:mod:`crdtstore.membership.protocol`: neighbours,
   probing, relayed deltas), with the digests of version 2. Tag ``v0.2.0``: every node
   republishes each new batch on the namespace's own topic (flooding).
4. Version 3 with deltas relayed along a tree (:mod:`crdtstore.sync.relay`, Plumtree on
   publisher-named topics). A version-4 node links to a version-3 neighbour in that
   neighbour's form (:mod:`crdtstore.sync.relaying`), so the two mix during an upgrade.

A version names a whole protocol, membership mode included. Releases up to v0.2.0 also
ran a full-mesh mode (every node connected to every other, all-to-all heartbeats), which
speaks 1 and 2; this build has only the overlay, and speaks 3 and 4. So a full-mesh node
(any v0.1.0 node, or a v0.2.0 node run with ``--full-mesh``) shares no version with this
one and is refused by the rule above, with a logged reason that names both modes, instead
of the full-mesh node waiting for heartbeats this node never sends while this node waits
for a join answer that never comes. (A hello without the list, tag v0.1.0's, is heard as
version 1: refused, which it is, a full-mesh node.) A full-mesh cluster upgrades through
v0.2.0, moving to the overlay there; see the README.

Hellos of this build always carry the list (a v0.1.0 node, which refuses that form, is
refused here anyway). A hello without the list cannot lower what a hello with it said at
the same life (incarnation) of its sender: it is that sender's copy for older nodes (a
v0.2.0 node sends both forms to a node it has not heard yet).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from crdtstore.sync.relaying import TREE

HASHED_DIGESTS = 2
"""The first version in which digests carry hashes of version vectors."""

OVERLAY = 3
"""The overlay membership mode's first version."""

RELAY_TREE = TREE
"""The overlay's version with deltas relayed along a tree."""

SPOKEN: tuple[int, ...] = (OVERLAY, RELAY_TREE)
"""The versions this build speaks, oldest first."""

FULL_MESH: tuple[int, ...] = (1, HASHED_DIGESTS)
"""The versions of the full-mesh mode of releases up to v0.2.0: never spoken here, named
so that a refusal says what the peer runs."""


def mode_of(versions: Collection[int]) -> str | None:
    """The membership mode whose versions ``versions`` are ("overlay", "full mesh"),
    None for versions of neither alone (a later build's, or a mix)."""
    if versions and set(versions) <= set(SPOKEN):
        return "overlay"
    if versions and set(versions) <= set(FULL_MESH):
        return "full mesh"
    return None


UNLISTED: tuple[int, ...] = (1,)
"""What a node whose hello has no version list speaks (tag v0.1.0)."""

MAX_VERSION = 0xFFFF
MAX_VERSIONS = 64
"""Bounds of a hello's version list on the wire."""


def negotiate(mine: Collection[int], theirs: Collection[int]) -> int | None:
    """The highest version both sides speak; None if they share none."""
    common = set(mine) & set(theirs)
    return max(common) if common else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A peer with no version in common: what to log, and whether to log it now."""

    node_id: str
    theirs: tuple[int, ...]
    mine: tuple[int, ...]
    log_now: bool

    @property
    def other_mode(self) -> bool:
        """The peer runs an earlier release's full mesh, or this node does (a refusal
        made by such a node; not a version of a later build)."""
        theirs, mine = mode_of(self.theirs), mode_of(self.mine)
        return theirs is not None and mine is not None and theirs != mine

    def reason(self) -> str:
        why = "none in common"
        if self.other_mode:
            why = (
                f"it runs the {mode_of(self.theirs)} membership mode, this node the "
                f"{mode_of(self.mine)} one; every node of a cluster must run the same mode "
                "(the full mesh was removed after v0.2.0: move a full-mesh cluster to the "
                "overlay on v0.2.0 first, see the README)"
            )
        return (
            f"refusing member {self.node_id}: it speaks protocol versions "
            f"{list(self.theirs)}, this node speaks {list(self.mine)}, {why} "
            "(not connected; its frames are ignored until it says hello in a common version)"
        )


@dataclass(slots=True)
class _Heard:
    incarnation: int
    versions: tuple[int, ...]
    listed: bool  # its hello carried the list
    agreed: int | None


class PeerVersions:
    """Per peer: the versions its hellos said it speaks, and the one agreed with it."""

    def __init__(self, log_interval_ms: int, spoken: tuple[int, ...] = SPOKEN) -> None:
        self.spoken = spoken
        self._log_interval_ms = log_interval_ms
        self._heard: dict[str, _Heard] = {}
        self._logged_at: dict[str, int] = {}

    def heard(
        self, node_id: str, incarnation: int | None, versions: tuple[int, ...] | None, now_ms: int
    ) -> int | Refusal:
        """A hello of ``node_id`` at ``incarnation`` listing ``versions`` (None: a hello
        without the list). The version agreed with it, or the refusal to act on."""
        life = incarnation or 0
        known = self._heard.get(node_id)
        if versions is None and known is not None and known.listed and known.incarnation >= life:
            pass  # the copy of its hello for older nodes: what the listed one said stands
        elif known is None or life >= known.incarnation:
            theirs = UNLISTED if versions is None else versions
            agreed = negotiate(self.spoken, theirs)
            known = _Heard(life, theirs, versions is not None, agreed)
            self._heard[node_id] = known
        # else: a hello of an older life, overtaken by a newer one; the newer one stands
        if known.agreed is not None:
            return known.agreed
        last = self._logged_at.get(node_id)
        log_now = last is None or now_ms - last >= self._log_interval_ms
        if log_now:
            self._logged_at[node_id] = now_ms
        return Refusal(node_id, known.versions, self.spoken, log_now)

    def agreed(self, node_id: str) -> int | None:
        """The version agreed with ``node_id``; None before its first hello, or if refused."""
        known = self._heard.get(node_id)
        return None if known is None else known.agreed

    def refused(self, node_id: str) -> bool:
        """Whether ``node_id``'s last hello shared no version with this node."""
        known = self._heard.get(node_id)
        return known is not None and known.agreed is None

    def listed(self, node_id: str) -> bool:
        """Whether ``node_id``'s hellos carry the version list (then one without it, at
        the same life, is its copy for older nodes, already acted on in the listed form)."""
        known = self._heard.get(node_id)
        return known is not None and known.listed

    def agreements(self) -> dict[str, int | None]:
        """Peer -> the version agreed (None: refused), for status and inspection."""
        return {n: h.agreed for n, h in sorted(self._heard.items())}

    def forget(self, node_id: str) -> None:
        """A member pruned for good: its next hello is judged afresh."""
        self._heard.pop(node_id, None)
        self._logged_at.pop(node_id, None)
