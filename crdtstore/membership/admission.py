"""Admission and trust: who may enter this node's views, and which updates it believes.

Admission (who may become a neighbour, and what a neighbour is trusted with). Without
CURVE keys a node cannot tell a stranger from a brand-new node at its first message,
and the full mesh does not try: it connects to whoever says hello, and takes from its
PUB only batches of that node's own origin. The overlay keeps that bar:
- a Join, Neighbor or NeighborReply is taken only from the node it names (the
  connection's identity, as the full mesh's hello is); a ForwardJoin only from a
  neighbour (a walk is passed on by neighbours; a stranger cannot push itself into the
  views of nodes it never spoke to); a Join or Neighbor of a life that the replicated
  record says is past (left, or a lower incarnation) is refused. Each refusal is counted
  (``admission_refused_*``) and changes nothing;
- anyone else is admitted, as a joiner must be (its record can only replicate over a
  link), but a neighbour is a *member link* only while it is connected at the addresses
  and key of its replicated member record (:meth:`Admission.recorded`). The
  runtime accepts relayed batches of any origin only from member links; from any other
  neighbour, as the full mesh from any publisher, only batches of its own origin.
- a Disconnect is taken only in its sender's own name; a Shuffle only from a neighbour
  or a live member (walks pass along links, which may be one-sided for a while), never
  from a stranger; a ShuffleReply only from a member and only as the one answer to this
  node's last shuffle, no larger than what it sent.

Trust of membership updates (a Gossip, the piggyback of a Ping or an Ack, a table
exchange's entries, an Ack's incarnation, the contact of a Join, Neighbor, ForwardJoin
or Shuffle). Every byte from the network is untrusted: one forged frame must not kill a
member nor take its incarnation where it cannot refute. SWIM (and memberlist, whose
``suspectNode`` and ``deadNode`` take any incarnation not below the one held, and adopt
it) leaves that to a cluster-wide key; without one, the rules are:
- updates are taken only from a neighbour or a member in the table (at any status), not
  from a stranger that merely connected (``updates_refused_stranger``); from a stranger,
  only what it says of this node (a seed tells a refused joiner its past life), which at
  worst makes this node refute;
- an update is believed only up to ``max_incarnation_jump`` above the incarnation of
  its member's replicated record (0 if none): the member's own word, carried by the
  replication with its origin checks. Nothing said on this channel raises that base,
  not even in the member's name (a sender's id is a claim: ``Delivery.peer`` is a
  routing id any client may choose unless CURVE is on). One exception: the refutation
  of what this node holds (alive, one above the suspicion or death it holds) is
  believed at any height, as it can only follow an accusation this node believed.
  With the table as the base instead, a forged "alive" raised it, and an accusation
  above what the member itself would refute followed (Hypothesis found it). What is
  refused is counted (``updates_refused_incarnation``) and logged at most every
  ``log_interval_ms``;
- what is said of this node is believed up to ``max_incarnation_jump + 1`` above its
  incarnation: one more than any other node holds of it (an accusation at the bound
  and a refutation of it), so this node refutes every accusation another believes, and
  they believe its refutation (one above what they hold). A node that did not believe
  the accusation, and so holds an older life, learns the new one from the record this
  node writes on refuting (``Refuted``), which raises its base;
- an accusation (suspect, dead, left) is believed only below the wire's bound
  (:data:`MAX_INCARNATION`), so that its refutation, one above, can always be written;
  a member's incarnation climbs at most ``max_incarnation_jump + 2`` per forged frame,
  so an incarnation space of 2**63 takes 2**46 of them to exhaust;
- an indirect probe (PingReq) is run only for a live member or a neighbour, only on a
  member this node knows (at any status: the requester may know of a newer life), at
  the addresses it holds (not the request's), and at most ``max_relayed_probes`` at a
  time per requester; its ack is passed on only if it comes from that target
  (``acks_refused`` otherwise). An ack answers one of this node's probes only from its
  target or from a helper it asked.

Invariant: every refusal here is counted under its reason and changes nothing; the only
thing a refusal sends is a refused past life's reply (:attr:`Admission.replies`). What
only a forger or a bug sends is also logged, at most once per reason per
``log_interval_ms``; what ordinary churn brings too (news of a join still in flight, a
walk from a link just dropped, a request from a member held dead here or about a member
not heard of yet) is counted only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace

from crdtstore.codec import MAX_SEQ
from crdtstore.membership.commands import Command, Send
from crdtstore.membership.overlay import Overlay
from crdtstore.membership.protocol_settings import ProtocolSettings
from crdtstore.membership.table import MemberTable
from crdtstore.membership.wire import Contact, Gossip, Status, Update
from crdtstore.sync.rejections import Rejections

MAX_INCARNATION = MAX_SEQ
"""The wire's bound of an incarnation. An accusation is believed only below it, so the
refutation above it (one more) can always be written."""


class Admission:
    """The admission and trust rules of one node, over its table and overlay (shared
    with the protocol, read only here) and the member records it was told of."""

    def __init__(
        self,
        overlay: Overlay,
        table: MemberTable,
        settings: ProtocolSettings,
        stats: Counter[str],
        refuse: Rejections,
    ) -> None:
        """``refuse`` counts and logs what only a forger or a bug sends; what ordinary
        churn also brings (a join's news still in flight) is counted in ``stats`` only."""
        self._overlay = overlay
        self._table = table
        self._settings = settings
        self._stats = stats
        self._refuse = refuse
        self.records: dict[str, tuple[Contact, bool]] = {}
        """Member -> (contact, left) of its replicated record, newest life (see learn())."""
        self.replies: list[Command] = []
        """Replies to refused past lives, sent with the protocol's next answer."""

    def learn(self, contact: Contact, left: bool) -> None:
        """``contact``'s member record, read from replicated state."""
        held = self.records.get(contact.node_id)
        if held is None or contact.incarnation >= held[0].incarnation:
            self.records[contact.node_id] = (contact, left)

    def forget(self, node_id: str) -> None:
        self.records.pop(node_id, None)

    def admissible(self, sender: str | None, claimed: Contact, kind: str, now_ms: int) -> bool:
        """Whether ``claimed`` may enter the views through a message of ``sender`` (None:
        passed on by a neighbour, so no identity to hold it to). See the module's notes."""
        if sender is not None and claimed.node_id != sender:
            self._refuse(
                "admission_refused_identity",
                now_ms,
                f"{sender!r} said {kind} as {claimed.node_id!r}",
            )
            return False
        if not self.credible(Update(claimed, Status.ALIVE), sender or "a neighbour", now_ms):
            return False
        held = self.records.get(claimed.node_id)
        if held is not None:
            record, left = held
            if record.incarnation > claimed.incarnation or (
                left and record.incarnation >= claimed.incarnation
            ):
                self._refuse(
                    f"admission_refused_past_life_{kind}",
                    now_ms,
                    f"{claimed.node_id} at incarnation {claimed.incarnation}, its record at "
                    f"{record.incarnation}{' (left)' if left else ''}",
                )
                if sender is not None:
                    # Tell it which life the record holds, as over: a node restarted on a
                    # fresh directory under an old id (or after a leave) starts low and
                    # knows no better; it refutes above that life, and its next join
                    # passes. Unanswered, it was shut out for as long as the record stood.
                    past = Update(replace(claimed, incarnation=record.incarnation), Status.DEAD)
                    self.replies.append(Send(claimed, Gossip((past,))))
                return False
        return True

    def recorded(self, contact: Contact) -> bool:
        """Whether ``contact`` is its member's replicated record (same addresses and key,
        a life not left): a link to it is a member link, trusted to relay any origin's
        batches. A newcomer, or a node that says a member's name from elsewhere, is not."""
        held = self.records.get(contact.node_id)
        if held is None or held[1]:
            return False
        record = held[0]
        return (record.router, record.pub, record.public_key) == (
            contact.router,
            contact.pub,
            contact.public_key,
        )

    def trusted(self, updates: Iterable[Update], sender: str, now_ms: int) -> Iterator[Update]:
        """The updates of one frame from ``sender`` that this node believes, each judged
        as it comes (after the ones before it were applied: a refutation of a suspicion
        in the same frame is one)."""
        updates = tuple(updates)
        me = self._overlay.me.node_id
        if updates and not self.known_sender(sender):
            # A stranger is heard only about this node (a seed it never met tells a
            # refused joiner its past life): at worst this node refutes, within the bound.
            # A new member may probe this node before news of its join arrives here, so
            # this is counted, not logged.
            mine = tuple(u for u in updates if u.node_id == me)
            if len(mine) < len(updates):
                self._stats["updates_refused_stranger"] += 1
            updates = mine
        for update in updates:
            if self.credible(update, sender, now_ms):
                yield update

    def known_sender(self, sender: str) -> bool:
        """A neighbour or a member in the table (at any status: the two sides of a healed
        partition hold each other dead, and exchange tables to learn better)."""
        return sender in self._overlay.active or sender in self._table

    def refuse_request(self, reason: str, sender: str, now_ms: int, detail: str) -> None:
        """Refuse a request (a probe for another, a shuffle): logged if ``sender`` is a
        stranger, counted only if it is a member (churn: it is held dead here, or knows
        a member this node has not heard of yet)."""
        if self.known_sender(sender):
            self._stats[reason] += 1
        else:
            self._refuse(reason, now_ms, detail)

    def live_member(self, node_id: str) -> bool:
        """A neighbour, or a member this node holds alive or suspect: who may ask it to
        probe for them or walk a shuffle through it."""
        if node_id in self._overlay.active:
            return True
        entry = self._table.get(node_id)
        return entry is not None and entry.status in (Status.ALIVE, Status.SUSPECT)

    def recorded_incarnation(self, node_id: str) -> int:
        """The incarnation of ``node_id``'s replicated record (0 if none): the member's
        own word, as the replication carries it (origin-checked). Nothing said over this
        channel raises it, so a forger cannot walk the bound upwards."""
        held = self.records.get(node_id)
        return 0 if held is None else held[0].incarnation

    def credible(self, update: Update, sender: str, now_ms: int) -> bool:
        """The incarnation rule (see the module's notes)."""
        node_id, incarnation = update.node_id, update.incarnation
        if update.status is not Status.ALIVE and incarnation >= MAX_INCARNATION:
            limit = MAX_INCARNATION - 1  # its refutation, one above, could not be written
        elif node_id == self._overlay.me.node_id:
            limit = self._overlay.me.incarnation + self._settings.max_incarnation_jump + 1
        else:
            limit = self.recorded_incarnation(node_id) + self._settings.max_incarnation_jump
            entry = self._table.get(node_id)
            if (
                update.status is Status.ALIVE
                and entry is not None
                and entry.status is not Status.ALIVE
                and incarnation == entry.contact.incarnation + 1
            ):
                limit = incarnation  # the refutation of what this node holds, passed on
        if incarnation <= limit:
            return True
        jump = self._settings.max_incarnation_jump
        known = self.recorded_incarnation(node_id)
        self._refuse(
            "updates_refused_incarnation",
            now_ms,
            f"{sender!r} says {update.node_id!r} is {update.status.name.lower()} at "
            f"incarnation {incarnation}; {known} recorded here, {jump} above it believed",
        )
        return False
