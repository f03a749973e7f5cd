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
- a Disconnect is taken only in its sender's own name, a Shuffle only from a neighbour
  (walks are passed on by neighbours), a ShuffleReply only from a member and only as the
  one answer to this node's last shuffle, no larger than what it sent.

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
- an update is believed only up to ``max_incarnation_jump`` above the highest
  incarnation this node knows of its member: the table's, or the member's replicated
  record (its own word, checked by origin), 0 for a member it knows neither way. Each
  update of a frame is judged against what was known before the frame, so one frame
  raises a member's incarnation by one bound at most; what is refused is counted
  (``updates_refused_incarnation``) and logged at most every ``log_interval_ms``;
- an accusation (suspect, dead, left) is believed only below the wire's bound
  (:data:`MAX_INCARNATION`), so that its refutation, one above, can always be written.
  Together: whatever a member is accused of and believed, it refutes above it, and its
  refutation (one above what was believed) is believed too. Only a lagging node (one
  that had not taken the accusation either) may refuse the refutation's jump, and it
  holds the member alive meanwhile; its record brings the base up.
- an indirect probe (PingReq) is run only for a live member or a neighbour, only on a
  live member this node knows, at the addresses it holds (not the request's), and at
  most ``max_relayed_probes`` at a time per requester; its ack is passed on only if it
  comes from that target (``acks_refused`` otherwise). An ack answers one of this
  node's probes only from its target or from a helper it asked.

Invariant: every refusal here is counted under its reason and changes nothing; the only
thing a refusal sends is a refused past life's reply (:attr:`Admission.replies`).
"""

from __future__ import annotations

from collections.abc import Iterable
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
        refuse: Rejections,
    ) -> None:
        self._overlay = overlay
        self._table = table
        self._settings = settings
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

    def trusted(self, updates: Iterable[Update], sender: str, now_ms: int) -> list[Update]:
        """The updates of one frame from ``sender`` that this node believes."""
        updates = tuple(updates)
        me = self._overlay.me.node_id
        if updates and not self.known_sender(sender):
            # A stranger is heard only about this node (a seed it never met tells a
            # refused joiner its past life): at worst this node refutes, within the bound.
            mine = tuple(u for u in updates if u.node_id == me)
            if len(mine) < len(updates):
                self._refuse(
                    "updates_refused_stranger",
                    now_ms,
                    f"{len(updates) - len(mine)} from {sender!r}, not a member known here",
                )
            updates = mine
        # Judged against what was known before the frame: one frame climbs one bound.
        known = {u.node_id: self.known_incarnation(u.node_id) for u in updates}
        return [u for u in updates if self.credible(u, sender, now_ms, known[u.node_id])]

    def known_sender(self, sender: str) -> bool:
        """A neighbour or a member in the table (at any status: the two sides of a healed
        partition hold each other dead, and exchange tables to learn better)."""
        return sender in self._overlay.active or sender in self._table

    def known_incarnation(self, node_id: str) -> int:
        me = self._overlay.me
        if node_id == me.node_id:
            return me.incarnation
        entry = self._table.get(node_id)
        held = self.records.get(node_id)
        return max(
            0 if entry is None else entry.contact.incarnation,
            0 if held is None else held[0].incarnation,
        )

    def credible(self, update: Update, sender: str, now_ms: int, known: int | None = None) -> bool:
        """The incarnation rule (see the module's notes): at most ``max_incarnation_jump``
        above what is known, and an accusation below the wire's bound, so that its
        refutation can be written."""
        if known is None:
            known = self.known_incarnation(update.node_id)
        incarnation, jump = update.incarnation, self._settings.max_incarnation_jump
        if incarnation <= known + jump and (
            update.status is Status.ALIVE or incarnation < MAX_INCARNATION
        ):
            return True
        self._refuse(
            "updates_refused_incarnation",
            now_ms,
            f"{sender!r} says {update.node_id!r} is {update.status.name.lower()} at "
            f"incarnation {incarnation}; {known} known here, {jump} above it believed",
        )
        return False
