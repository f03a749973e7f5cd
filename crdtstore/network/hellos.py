"""The hello exchange that starts every link: protocol versions, clocks, the sender's record.

A link starts with a ``Hello`` both ways: each side says which protocol versions it
speaks (:class:`~crdtstore.membership.versions.PeerVersions` agrees one, or refuses the
member), its clock reading (the answer tells the other its offset), and its member record,
which is *introduced* (:mod:`.records`) until the replicated one catches up. The answer
also brings the engine's digest, so the newcomer learns at once what to fetch.

There is one membership mode. A node of an earlier release's full mesh (protocol
versions 1 and 2) shares no version with this one and is refused at its hello, with a
logged reason naming both modes; it is answered with our own hello once per hello of its
own (never a reply to a reply, or two refusing nodes would answer each other for ever),
so that it logs why too. A seed that never answers our joins is sent our hello for the
same reason (``for_seed``, on the overlay's thread).

Invariants: a hello is acted on only from the connection named like its sender (or a
seed's, before the seed's id is known); a hello of a life that has left is ignored; a
refused member is disconnected and nothing it sends is acted on until a hello of it says
otherwise. Our hello is sent only once this node has a record (addresses to give).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from crdtstore.errors import DecodeError
from crdtstore.membership.messages import Hello
from crdtstore.membership.protocol import SEED_PREFIX
from crdtstore.membership.versions import HASHED_DIGESTS, PeerVersions, Refusal
from crdtstore.network.clock_watch import ClockWatch
from crdtstore.network.links import PeerLinks
from crdtstore.network.records import MemberRecords, OwnRecord
from crdtstore.sync.engine import SyncEngine
from crdtstore.sync.messages import decode_message, encode_message
from crdtstore.sync.outgoing import Outgoing

# The replicator's voice, as before this module was split out of it: log filters name it.
log = logging.getLogger("crdtstore.replicator")

CHANNEL_MEMBERS = b"M"
"""The first byte of a direct frame for the hello exchange."""


class HelloExchange:
    """Sends this node's hellos and acts on members' hellos, on the replicator's thread
    (``for_seed`` excepted)."""

    def __init__(
        self,
        *,
        node_id: str,
        own: OwnRecord,
        versions: PeerVersions,
        records: MemberRecords,
        links: PeerLinks,
        clocks: ClockWatch,
        engine: SyncEngine,
        send: Callable[[bytes, bytes], None],
        emit: Callable[[Sequence[Outgoing]], None],
        clock: Callable[[], int],
        stats: Counter[str],
    ) -> None:
        """``send(peer, frame)`` sends one direct frame; ``emit`` what the engine answers."""
        self.node_id = node_id
        self._own = own
        self.versions = versions
        self._records = records
        self._links = links
        self._clocks = clocks
        self._engine = engine
        self._send = send
        self._emit = emit
        self._clock = clock
        self._stats = stats

    # -- ours ----------------------------------------------------------------------------

    def _hello(self, *, reply: bool, offset_ms: int | None = None) -> Hello:
        own = self._own.record
        assert own is not None  # callers check: a node without a record has no addresses
        return Hello(
            own.node_id,
            own.router,
            own.pub,
            own.public_key,
            reply,
            incarnation=own.incarnation,
            topics=own.topics,
            started_at_ms=own.started_at_ms,
            clock_ms=self._clock(),
            offset_ms=offset_ms,
            versions=self.versions.spoken,
        )

    def _frame(self, *, reply: bool, offset_ms: int | None = None) -> bytes:
        """Always the form with the version list: the form without it is for v0.1.0
        nodes, which speak version 1 alone and are refused here anyway."""
        return CHANNEL_MEMBERS + encode_message(self._hello(reply=reply, offset_ms=offset_ms))

    def greet(self, node_id: str) -> None:
        """Our hello to ``node_id``, whose link just started (none before our record)."""
        if self._own.record is not None:
            self._send(node_id.encode(), self._frame(reply=False))

    def for_seed(self) -> bytes | None:
        """On the overlay's thread: our hello for a seed that has not answered our joins
        (a seed of an earlier release's full mesh drops them unread, but refuses a hello
        with a reason, and answers with its own, so that both nodes log why)."""
        if self._own.record is None:
            return None
        return self._frame(reply=False)

    # -- theirs --------------------------------------------------------------------------

    def on_message(self, peer: str | None, body: bytes, now: int) -> None:
        """A frame of the ``M`` channel: a hello, or rejected (counted)."""
        try:
            msg = decode_message(body)
        except DecodeError as exc:
            self._stats["rejected_membership"] += 1
            log.debug("membership: undecodable message from %r: %s", peer, exc)
            return
        if isinstance(msg, Hello) and peer:
            self._on_hello(peer, msg, now)
        else:
            self._stats["rejected_membership"] += 1

    def _on_hello(self, peer: str, msg: Hello, now: int) -> None:
        if msg.node_id == self.node_id:
            return
        if peer != msg.node_id and not peer.startswith(SEED_PREFIX):
            self._stats["rejected_hello_identity"] += 1
            return
        record = msg.record()
        held = self._records.get(msg.node_id)
        if (
            record is not None
            and held is not None
            and held.left
            and held.incarnation >= record.incarnation
        ):
            # Sent by a life that has left since (a hello may overtake the leave):
            # only a new life, at a higher incarnation, comes back.
            self._stats["hellos_after_leave"] += 1
            return
        agreed = self.versions.heard(msg.node_id, msg.incarnation, msg.versions, now)
        if isinstance(agreed, Refusal):
            self._refuse(agreed)
            if agreed.other_mode and not msg.reply and self._own.record is not None:
                # Our hello back, once per hello of theirs (see the module): a node of
                # the earlier release's full mesh then logs why, too, instead of waiting
                # on in silence.
                self._send(peer.encode(), self._frame(reply=True))
            return
        if msg.versions is None and self.versions.listed(msg.node_id):
            return  # its copy for older nodes, of the hello with versions acted on
        self._set_digest_form(msg.node_id)
        self._links.relink_due = True  # the version agreed with it may have changed
        if not msg.reply:
            self._links.pin_back(record)
        offset = None
        if msg.clock_ms is not None:
            offset = msg.clock_ms - now
            self._clocks.heard(msg.node_id, msg.clock_ms, now)
        if msg.reply:
            self._clocks.told(msg.node_id, msg.offset_ms)
        if record is not None:
            # Not "heard" for the failure detector: the protocol's probes are.
            self._records.introduce(record)
        if not msg.reply and self._own.record is not None:
            self._send(msg.node_id.encode(), self._frame(reply=True, offset_ms=offset))
            self._emit(self._engine.greet(msg.node_id))

    def _set_digest_form(self, node_id: str) -> None:
        """Tell the engine which digests ``node_id`` reads; one not heard yet (a record led
        here) gets the form every version reads."""
        agreed = self.versions.agreed(node_id)
        self._engine.set_digest_form(node_id, hashed=(agreed or 0) >= HASHED_DIGESTS)

    def _refuse(self, refusal: Refusal) -> None:
        """A member with no protocol version in common: no connection, nothing it sends
        is acted on, until a hello of it says otherwise."""
        self._stats["refused_versions"] += 1
        if refusal.other_mode:
            self._stats["refused_membership_mode"] += 1
        if refusal.log_now:
            log.warning(
                "%s (%d refused hellos so far)", refusal.reason(), self._stats["refused_versions"]
            )
        self._links.disconnect(refusal.node_id)
