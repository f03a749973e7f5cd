"""Forged and hostile frames against one node's membership protocol, driven on the
sans-I/O protocol a message at a time (see the trust notes of
:mod:`crdtstore.membership.protocol`): each frame is refused, counted, and changes
nothing; a member accused at any incarnation can still refute."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from crdtstore.codec import MAX_SEQ
from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.protocol import (
    Command,
    MembershipProtocol,
    ProtocolSettings,
    Refuted,
    Send,
)
from crdtstore.membership.wire import (
    Ack,
    Contact,
    Disconnect,
    ForwardJoin,
    Gossip,
    Neighbor,
    Ping,
    PingReq,
    Shuffle,
    ShuffleReply,
    Status,
    TableSync,
    Update,
)
from crdtstore.sync.messages import decode_message, encode_message

NOW = 1_000
SETTINGS = ProtocolSettings()
JUMP = SETTINGS.max_incarnation_jump


def contact(node_id: str, incarnation: int = 1, host: str | None = None) -> Contact:
    host = host or node_id
    return Contact(node_id, f"tcp://{host}:1", f"tcp://{host}:2", None, incarnation)


def node(node_id: str, *members: str, neighbours: tuple[str, ...] = ()) -> MembershipProtocol:
    """``node_id`` knowing ``members`` (from their records) and linked to ``neighbours``."""
    proto = MembershipProtocol(contact(node_id), SETTINGS, random.Random(1), NOW)
    for member in (*members, *neighbours):
        proto.learn(contact(member), NOW)
    for neighbour in neighbours:
        proto.on_message(neighbour, Neighbor(contact(neighbour), high=True), NOW)
    assert proto.neighbours() == sorted(neighbours)
    return proto


def sent(commands: list[Command], kind: type) -> list[Send]:
    return [c for c in commands if isinstance(c, Send) and isinstance(c.msg, kind)]


def held(proto: MembershipProtocol, node_id: str) -> tuple[MemberStatus, int] | None:
    row = proto.member(node_id)
    return None if row is None else (row[0], row[1])


# -- membership updates (finding 1) ---------------------------------------------------------


def test_a_strangers_gossip_changes_nothing() -> None:
    x = node("x", "v", neighbours=("a",))
    for status in (Status.SUSPECT, Status.DEAD, Status.LEFT):
        out = x.on_message("mallory", Gossip((Update(contact("v", 2), status),)), NOW)
        assert sent(out, Gossip) == []
    assert held(x, "v") == (MemberStatus.ALIVE, 1)
    assert held(x, "mallory") is None
    assert x.stats["updates_refused_stranger"] == 3


def test_a_strangers_table_entries_and_piggyback_change_nothing() -> None:
    x = node("x", "v")
    dead_v = (Update(contact("v", 5), Status.DEAD),)
    x.on_message("mallory", TableSync(dead_v, reply=True), NOW)
    out = x.on_message("mallory", Ping(1, dead_v, NOW), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1)
    # The ping is still answered (a member this node has not heard of yet probes it).
    assert [s.to for s in sent(out, Ack)] == ["mallory"]
    assert x.stats["updates_refused_stranger"] == 2


def test_an_accusation_far_above_the_known_incarnation_is_refused_from_a_member() -> None:
    x = node("x", "v", neighbours=("a",))
    for status in (Status.SUSPECT, Status.DEAD, Status.LEFT, Status.ALIVE):
        x.on_message("a", Gossip((Update(contact("v", MAX_SEQ), status),)), NOW)
        x.on_message("a", Gossip((Update(contact("v", 2 + JUMP), status),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1)
    assert x.stats["updates_refused_incarnation"] == 8
    # Within the bound, SWIM's precedence as before.
    x.on_message("a", Gossip((Update(contact("v", 1 + JUMP), Status.SUSPECT),)), NOW)
    assert held(x, "v") == (MemberStatus.SUSPECT, 1 + JUMP)


def test_one_frame_raises_a_members_incarnation_by_the_bound_at_most() -> None:
    """Each update of a frame is judged against what was known before the frame: 256
    updates in a row do not climb 256 bounds."""
    x = node("x", "v", neighbours=("a",))
    ladder = tuple(Update(contact("v", 1 + k * JUMP), Status.ALIVE) for k in range(1, 5))
    x.on_message("a", Gossip(ladder), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1 + JUMP)


def test_an_accusation_of_me_far_above_my_incarnation_is_not_refuted_to_it() -> None:
    v = node("v", neighbours=("a",))
    out = v.on_message("a", Gossip((Update(contact("v", MAX_SEQ), Status.DEAD),)), NOW)
    out += v.on_message("a", Gossip((Update(contact("v", 3 + JUMP), Status.DEAD),)), NOW)
    assert [c for c in out if isinstance(c, Refuted)] == []
    assert v.incarnation == 1 and v.stats["updates_refused_incarnation"] == 2
    # One above what any other node may believe of it (see the next tests) is refuted.
    out = v.on_message("a", Gossip((Update(contact("v", 2 + JUMP), Status.DEAD),)), NOW)
    assert Refuted(3 + JUMP) in out


def test_a_third_party_cannot_walk_the_bound_up_with_forged_alives() -> None:
    """The base is what v itself vouched for: "alive" said by others raises the table,
    not the base, so an accusation above what v would refute is never believed."""
    x = node("x", "v", neighbours=("a",))
    x.on_message("a", Gossip((Update(contact("v", 1 + JUMP), Status.ALIVE),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1 + JUMP)
    x.on_message("a", Gossip((Update(contact("v", 2 + JUMP), Status.SUSPECT),)), NOW)
    x.on_message("a", Gossip((Update(contact("v", 1 + 2 * JUMP), Status.ALIVE),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1 + JUMP)
    assert x.stats["updates_refused_incarnation"] == 2


def test_the_refutation_of_a_held_suspicion_is_believed_from_anyone() -> None:
    x = node("x", "v", neighbours=("a", "b"))
    x.on_message("a", Gossip((Update(contact("v", 1 + JUMP), Status.SUSPECT),)), NOW)
    # v's refutation, passed on by b: one above the suspicion x holds.
    x.on_message("b", Gossip((Update(contact("v", 2 + JUMP), Status.ALIVE),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 2 + JUMP)


def test_what_is_said_in_a_members_own_name_does_not_raise_the_base() -> None:
    """A sender's id is a claim (a routing id, without CURVE): v's "own" word beyond the
    bound is refused like anyone's, and what v said within it does not raise the base."""
    x = node("x", "v", neighbours=("a",))
    x.on_message("v", Gossip((Update(contact("v", 5 * JUMP), Status.ALIVE),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1)
    x.on_message("v", Gossip((Update(contact("v", 1 + JUMP), Status.ALIVE),)), NOW)
    x.on_message("a", Gossip((Update(contact("v", 2 + JUMP), Status.SUSPECT),)), NOW)
    assert held(x, "v") == (MemberStatus.ALIVE, 1 + JUMP)
    assert x.stats["updates_refused_incarnation"] == 2


def test_a_contact_passed_on_at_an_incredible_incarnation_is_refused() -> None:
    """A forward-join's joiner or a shuffle's origin is a third party's word."""
    x = node("x", "v", neighbours=("a",))
    out = x.on_message("a", ForwardJoin(contact("v", MAX_SEQ), 0), NOW)
    out += x.on_message("a", Shuffle(contact("v", 2 + JUMP), 0, ()), NOW)
    assert sent(out, object) == []
    assert x.neighbours() == ["a"] and held(x, "v") == (MemberStatus.ALIVE, 1)
    assert x.stats["updates_refused_incarnation"] == 2


def test_the_incarnation_bound_counts_from_the_replicated_record() -> None:
    """A member's record is its own word (replicated state, checked by origin): a life
    far above what the table held, once recorded, is the base the bound counts from."""
    x = node("x", "v", neighbours=("a",))
    x.learn(contact("v", 10 * JUMP), NOW)
    x.on_message("a", Gossip((Update(contact("v", 11 * JUMP), Status.SUSPECT),)), NOW)
    assert held(x, "v") == (MemberStatus.SUSPECT, 11 * JUMP)


def test_a_relayed_ack_cannot_lift_a_suspect_beyond_the_bound() -> None:
    x = node("x", neighbours=("v", "a", "h"))
    x.on_message("a", Gossip((Update(contact("v"), Status.SUSPECT),)), NOW)
    assert held(x, "v") == (MemberStatus.SUSPECT, 1)
    later = NOW + SETTINGS.probe_interval_ms
    [ping] = [s.msg for s in sent(x.tick(later), Ping) if s.to == contact("v")][:1]
    assert isinstance(ping, Ping)
    asked = x.tick(later + SETTINGS.probe_timeout_ms)  # v silent: helpers are asked
    helpers = {s.to.node_id for s in sent(asked, PingReq) if isinstance(s.to, Contact)}
    assert helpers
    helper = sorted(helpers)[0]
    x.on_message(helper, Ack(ping.seq, MAX_SEQ), later + SETTINGS.probe_timeout_ms + 5)
    assert held(x, "v") == (MemberStatus.SUSPECT, 1)
    assert x.stats["updates_refused_incarnation"] == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from([Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT]),
            st.one_of(
                st.integers(0, 3 * JUMP),
                st.integers(0, MAX_SEQ),
                st.integers(MAX_SEQ - 3, MAX_SEQ),
            ),
            st.booleans(),  # sent to v itself rather than to x
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_member_accused_at_any_incarnation_refutes_and_is_alive_again(
    accusations: list[tuple[Status, int, bool]],
) -> None:
    """Whatever a member (a) says of v, to x or to v, x's view reaches v, v refutes
    above it, and x takes the refutation (and v's record): v is alive at x again, at
    v's own incarnation, which stays encodable and rises by at most the bound (plus two)
    per frame."""
    x = node("x", "v", neighbours=("a",))
    v = node("v", "a", neighbours=("x",))
    now = NOW
    for frame, (status, incarnation, to_v) in enumerate(accusations, 1):
        now += 10
        said = Gossip((Update(contact("v", incarnation), status),))
        (v if to_v else x).on_message("a", said, now)
        held_at_x = x.table.get("v")
        assert held_at_x is not None
        v.on_message("x", Gossip((held_at_x.update,)), now)
        assert 1 <= v.incarnation <= min(MAX_SEQ, 1 + frame * (JUMP + 2))
        alive = v.table.get("v")
        assert alive is not None and alive.status is Status.ALIVE
        frame_bytes = encode_message(Gossip((alive.update,)))
        assert decode_message(frame_bytes) == Gossip((alive.update,))
        x.on_message("v", Gossip((alive.update,)), now)
        # The record v writes on refuting (replicated state) reaches x too.
        x.learn(v.me, now)
        status_at_x, incarnation_at_x = held(x, "v") or (None, None)
        assert status_at_x is MemberStatus.ALIVE
        # An ALIVE said by a (not v) may stand above v's own; anything else v refuted.
        assert incarnation_at_x is not None and incarnation_at_x >= v.incarnation


@given(
    st.lists(
        st.tuples(
            st.sampled_from([Status.ALIVE, Status.SUSPECT, Status.DEAD]),
            st.integers(0, 4 * JUMP),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_whatever_x_is_told_v_refutes_what_x_then_suspects_itself(
    told: list[tuple[Status, int]],
) -> None:
    """x holds whatever third parties made it believe; v then falls silent to x, x
    suspects it at the incarnation it holds, and v (hearing that) refutes in a form x
    believes, even passed on by another: no entry a forger can plant is beyond v's
    refutation."""
    x = node("x", "v", neighbours=("a", "v"))
    v = node("v", neighbours=("x",))
    for status, incarnation in told:
        x.on_message("a", Gossip((Update(contact("v", incarnation), status),)), NOW)
    # Neither v nor a answers; x probes v (a neighbour, or watched after a random probe)
    # until it suspects it, within a bound of the protocol's own timers.
    until = NOW + 10 * (SETTINGS.random_probe_interval_ms + SETTINGS.suspect_after_ms)
    while (entry := x.table.get("v")) is not None and entry.status is Status.ALIVE:
        due = x.next_deadline()
        assert due <= until, "x never suspected the silent v"
        x.tick(due)
    assert entry is not None
    until = max(until, x.next_deadline())
    out = v.on_message("x", Gossip((entry.update,)), until)
    assert [c for c in out if isinstance(c, Refuted)], (entry.update, v.incarnation)
    alive = v.table.get("v")
    assert alive is not None
    x.learn(contact("b"), until)
    x.on_message("b", Gossip((alive.update,)), until + 1)  # passed on by a third node
    assert held(x, "v") == (MemberStatus.ALIVE, v.incarnation)


def test_with_no_jump_bound_the_ceiling_still_leaves_room_to_refute() -> None:
    loose = ProtocolSettings(max_incarnation_jump=MAX_SEQ)
    v = MembershipProtocol(contact("v"), loose, random.Random(1), NOW)
    v.learn(contact("a"), NOW)
    v.on_message("a", Gossip((Update(contact("v", MAX_SEQ), Status.DEAD),)), NOW)
    assert v.incarnation == 1  # refuting it would need an incarnation the wire refuses
    out = v.on_message("a", Gossip((Update(contact("v", MAX_SEQ - 1), Status.DEAD),)), NOW)
    assert Refuted(MAX_SEQ) in out
    alive = v.table.get("v")
    assert alive is not None
    assert decode_message(encode_message(Gossip((alive.update,)))) == Gossip((alive.update,))


# -- indirect probes (finding 2) ------------------------------------------------------------


def test_a_ping_req_from_a_stranger_sends_nothing() -> None:
    h = node("h", "t")
    out = h.on_message("mallory", PingReq(7, contact("t")), NOW)
    assert sent(out, Ping) == []
    assert h.stats["ping_reqs_refused"] == 1


def test_a_ping_req_for_a_target_not_a_member_sends_nothing() -> None:
    h = node("h", neighbours=("r",))
    out = h.on_message("r", PingReq(7, contact("anywhere", host="victim.example")), NOW)
    assert sent(out, Ping) == []
    assert h.stats["ping_reqs_refused"] == 1
    # A member held dead is pinged still (the requester may know of a newer life).
    h.learn(contact("d"), NOW)
    h.on_message("r", Gossip((Update(contact("d"), Status.DEAD),)), NOW)
    assert [s.to for s in sent(h.on_message("r", PingReq(8, contact("d")), NOW), Ping)][:1] == [
        contact("d")
    ]


def test_a_ping_req_probes_the_target_at_its_known_addresses_only() -> None:
    h = node("h", "t", neighbours=("r",))
    out = h.on_message("r", PingReq(7, contact("t", host="victim.example")), NOW)
    pings = sent(out, Ping)
    assert pings and {s.to for s in pings} == {contact("t")}


def test_relayed_probes_per_requester_are_bounded() -> None:
    h = node("h", "t", neighbours=("r",))
    pinged = 0
    for seq in range(3 * SETTINGS.max_relayed_probes):
        pinged += bool(sent(h.on_message("r", PingReq(seq, contact("t")), NOW), Ping))
    assert pinged == SETTINGS.max_relayed_probes
    assert h.stats["ping_reqs_refused"] == 2 * SETTINGS.max_relayed_probes


def test_a_forged_ack_for_a_relayed_probe_is_not_passed_on() -> None:
    """h probes t for r; m (a member, not t) answers in t's place: nothing reaches r, and
    t's own answer still does."""
    h = node("h", "t", "m", neighbours=("r",))
    [ping] = [s.msg for s in sent(h.on_message("r", PingReq(7, contact("t")), NOW), Ping)][:1]
    assert isinstance(ping, Ping)
    out = h.on_message("m", Ack(ping.seq, 1), NOW + 5)
    assert sent(out, Ack) == []
    assert h.stats["acks_refused"] == 1
    out = h.on_message("t", Ack(ping.seq, 1), NOW + 6)
    assert [(s.to, s.msg.seq) for s in sent(out, Ack)][:1] == [("r", 7)]


def test_an_ack_from_a_helper_not_asked_does_not_answer_a_probe() -> None:
    x = node("x", neighbours=("t", "h"))
    pings = {s.to: s.msg for s in sent(x.tick(NOW + SETTINGS.probe_interval_ms), Ping)}
    ping = pings[contact("t")]
    assert isinstance(ping, Ping)
    # The probe is still direct: no helper was asked, so h's word is not t's.
    x.on_message("h", Ack(ping.seq, 1), NOW + 1)
    assert x.stats["acks_refused"] == 1


# -- the overlay's views --------------------------------------------------------------------


def test_a_disconnect_in_a_neighbours_name_is_refused() -> None:
    x = node("x", neighbours=("a", "b"))
    x.on_message("mallory", Disconnect("a"), NOW)
    x.on_message("b", Disconnect("a"), NOW)
    assert x.neighbours() == ["a", "b"]
    assert x.stats["admission_refused_identity"] == 2
    x.on_message("a", Disconnect("a"), NOW)
    assert x.neighbours() == ["b"]


def test_a_shuffle_from_a_stranger_is_refused() -> None:
    x = node("x", "m", neighbours=("a",))
    sample = tuple(contact(f"ghost{i}") for i in range(8))
    out = x.on_message("mallory", Shuffle(contact("mallory"), 0, sample), NOW)
    assert sent(out, ShuffleReply) == []
    assert not any(n.startswith("ghost") for n in x.overlay.passive)
    assert held(x, "mallory") is None
    assert x.stats["admission_refused_shuffle"] == 1
    # A live member's walk is taken (a link may be one-sided for a while).
    out = x.on_message("m", Shuffle(contact("m"), 0, sample), NOW)
    assert [s.to for s in sent(out, ShuffleReply)] == [contact("m")]


def test_an_unasked_shuffle_reply_changes_nothing() -> None:
    x = node("x", "m", neighbours=("a",))
    before = dict(x.overlay.passive)
    ghosts = tuple(contact(f"ghost{i}") for i in range(64))
    x.on_message("m", ShuffleReply(ghosts), NOW)
    assert x.overlay.passive == before
    assert x.stats["shuffle_replies_refused"] == 1
