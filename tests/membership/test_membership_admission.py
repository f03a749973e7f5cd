"""Who may become a neighbour in the overlay mode, and which neighbours are trusted to
relay (see the admission notes of :mod:`crdtstore.membership.protocol`): driven on the
sans-I/O protocol directly, a message at a time, so each refusal is seen alone."""

from __future__ import annotations

import random

from crdtstore.membership.protocol import (
    SEED_PREFIX,
    Command,
    MembershipProtocol,
    NeighbourUp,
    ProtocolSettings,
    Send,
)
from crdtstore.membership.wire import Contact, ForwardJoin, Join, Neighbor, NeighborReply

NOW = 1_000


def contact(node_id: str, incarnation: int = 1, port: int = 1) -> Contact:
    return Contact(
        node_id, f"tcp://{node_id}:{port}", f"tcp://{node_id}:{port + 1}", None, incarnation
    )


def node(node_id: str, seeds: tuple[Contact, ...] = ()) -> MembershipProtocol:
    return MembershipProtocol(contact(node_id), ProtocolSettings(), random.Random(1), NOW, seeds)


def sends(commands: list[Command]) -> list[tuple[str, object]]:
    out = []
    for c in commands:
        if isinstance(c, Send):
            out.append((c.to if isinstance(c.to, str) else c.to.node_id, c.msg))
    return out


def refusals(proto: MembershipProtocol) -> dict[str, int]:
    return {k: v for k, v in proto.stats.items() if k.startswith("admission_refused")}


def test_a_join_in_another_nodes_name_is_refused_and_changes_nothing() -> None:
    seed = node("s")
    out = seed.on_message("mallory", Join(contact("n1")), NOW)
    assert sends(out) == [] and seed.neighbours() == []
    assert seed.status("n1") is None and seed.status("mallory") is None
    assert refusals(seed) == {"admission_refused_identity": 1}


def test_a_neighbor_request_or_reply_in_another_nodes_name_is_refused() -> None:
    seed = node("s")
    assert sends(seed.on_message("mallory", Neighbor(contact("n1"), high=True), NOW)) == []
    reply = NeighborReply(contact("n1"), accepted=True)
    assert sends(seed.on_message("mallory", reply, NOW)) == []
    assert seed.neighbours() == [] and seed.status("n1") is None
    assert refusals(seed) == {"admission_refused_identity": 2}


def test_a_forward_join_from_a_non_neighbour_is_refused() -> None:
    seed = node("s")
    # With no neighbour, a walk's end takes the joiner in: had it come from a neighbour.
    out = seed.on_message("mallory", ForwardJoin(contact("n1"), 0), NOW)
    assert sends(out) == [] and seed.neighbours() == [] and seed.status("n1") is None
    assert refusals(seed) == {"admission_refused_forward_join": 1}
    seed.on_message("a", Join(contact("a")), NOW)
    out = seed.on_message("a", ForwardJoin(contact("n1"), 0), NOW)
    assert ("n1", NeighborReply(seed.me, accepted=True)) in sends(out)
    assert seed.neighbours() == ["a", "n1"]


def test_a_join_of_a_life_the_record_says_is_past_is_refused() -> None:
    seed = node("s")
    seed.learn(contact("n1", incarnation=3), NOW, left=True)
    for incarnation in (3, 2):
        replies = sends(seed.on_message("n1", Join(contact("n1", incarnation)), NOW))
        # Refused, and told which life the record holds (see the next test).
        assert [(to, type(msg).__name__) for to, msg in replies] == [("n1", "Gossip")]
    assert refusals(seed) == {"admission_refused_past_life_join": 2}
    assert seed.neighbours() == []
    # Its next life comes back.
    seed.on_message("n1", Join(contact("n1", incarnation=4)), NOW)
    assert seed.neighbours() == ["n1"]


def test_a_node_restarted_on_a_fresh_directory_under_an_old_id_gets_back_in() -> None:
    """Its record says incarnation 3 (it restarted before); its disk was replaced, so it
    starts at 1, below that record. Refused, it is told of the life the record holds,
    refutes above it, and its next join is taken."""
    seed = node("s")
    seed.learn(contact("n1", incarnation=3), NOW)
    fresh = node("n1", seeds=(contact("s"),))
    assert fresh.me.incarnation == 1
    refused = seed.on_message("n1", Join(fresh.me), NOW)
    assert seed.neighbours() == []
    [(to, told)] = sends(refused)
    assert to == "n1"
    fresh.on_message("s", told, NOW + 1)
    assert fresh.me.incarnation == 4
    seed.on_message("n1", Join(fresh.me), NOW + 2)
    assert seed.neighbours() == ["n1"]


def test_a_brand_new_node_joins_through_its_seed_and_is_a_member_link_once_recorded() -> None:
    seed = node("s")
    alias = Contact(SEED_PREFIX + seed.me.router, seed.me.router, seed.me.router, None, 0)
    new = node("n1", seeds=(alias,))
    # The new node's join reaches the seed (delivered by hand, under the new node's id).
    [(to, join)] = [s for s in sends(new.tick(NOW)) if isinstance(s[1], Join)]
    assert to == alias.node_id
    out = seed.on_message("n1", join, NOW)
    assert NeighbourUp(new.me) in out
    [reply] = [m for to, m in sends(out) if to == "n1" and isinstance(m, NeighborReply)]
    assert NeighbourUp(seed.me) in new.on_message("s", reply, NOW)
    assert seed.neighbours() == ["n1"] and new.neighbours() == ["s"]
    assert refusals(seed) == {} and refusals(new) == {}
    # A newcomer: linked, but not trusted to relay others' batches until its replicated
    # record (the one it publishes itself, in its own origin) is known here.
    assert not seed.recorded(new.me)
    seed.learn(new.me, NOW)
    assert seed.recorded(new.me)
    # Its name at other addresses (another process saying it is n1) is not its record.
    assert not seed.recorded(contact("n1", port=7))
    # Nor is a life that has left.
    seed.learn(new.me, NOW, left=True)
    assert not seed.recorded(new.me)
