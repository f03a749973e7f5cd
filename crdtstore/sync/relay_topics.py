"""The relay's PUB/SUB topic layout, and which neighbours carry a scoped topic.

Topics (publisher and namespace each end in NUL, so no name is a prefix of another):

    d<publisher>\\0<namespace>\\0<hop><path>[r]   a batch ``publisher`` relays (data)
    h<publisher>\\0<namespace>\\0                  its "have" notices

ZeroMQ SUB subscriptions are per socket and match by prefix, so a topic has to name its
publisher for a subscriber to treat two publishers differently on one socket.

``<hop>`` names the neighbour the publisher got the batch from (:func:`hop_mark`, four
hex digits of a hash of its id), or is ``-`` for the publisher's own batches. A PUB
cannot leave one subscriber out of a publication, so without it every batch would come
straight back to the neighbour that sent it (an echo: twice the bytes on every tree
link, and a duplicate that Plumtree would answer by pruning the link that just worked).
A subscriber ``Y`` of ``X``'s data instead subscribes to every ``d<X>\\0<ns>\\0`` + hop
*except its own mark* (:func:`data_subscriptions`: a prefix set that spells "anything
but this string", 4 * 15 + 1 prefixes): ZeroMQ's own filter on ``X``'s side drops the
echo. Two neighbours of ``X`` with the same mark (a 16-bit hash: with 5 neighbours each,
about one such pair per 6,500 nodes) do not get each other's batches from ``X``: each still hears
``X``'s have notices and fetches what it lacks, so a collision costs latency, never a
batch.

``<path>`` (eight hex digits) is the heaviest :func:`edge_weight` on the path the batch
took from its origin to the publisher: what lets the relay prune only links that are
the heaviest on a cycle (see :mod:`crdtstore.sync.relay`). A trailing ``r`` marks a
batch that came off a repair (a neighbour fetched it because the tree had not brought it
in time) and every relay of it after that: its path is not known, and its copies may
meet the tree's own, so such a duplicate prunes nothing.

Scoped topics (:func:`topic_links`). A node subscribes only to the namespaces it holds
and does not relay others, so a namespace's relay graph is the overlay restricted to its
holders, which is not connected when they are few (10% of 1,000 nodes on a 5-regular
overlay average half a holder-neighbour each). The rule: a namespace held by every live
member (the membership namespace, say) uses the overlay as it is (connected). Otherwise
each holder also links to its successor and predecessor on a ring of the holders ordered
by a hash of (namespace, id), which connects every holder whenever the member tables
agree (every node holds every member record, topics included), plus ``chords`` holders
picked by hash, which keep the ring's diameter near log n. Both ends compute the same
links from the member table, so a link needs no handshake and is symmetric. The cost:
per scoped namespace a holder keeps about ``2 + 2 * chords`` more connections, and a
non-holder receives none of its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from crdtstore.errors import DecodeError, InvalidValue

DATA = b"d"
HAVE = b"h"
REPAIRED = b"r"
OWN = "-"
"""The hop of a batch the publisher originated."""
HOP_DIGITS = 4
PATH_DIGITS = 8
_HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Topic:
    kind: bytes
    """:data:`DATA` or :data:`HAVE`."""
    publisher: str
    namespace: str
    hop: str
    """A data topic's hop mark (:func:`hop_mark` or :data:`OWN`); "" for a have topic."""
    path_max: int = 0
    """A data topic's heaviest edge weight on the batch's path (see the module's note)."""
    repaired: bool = False
    """A data topic's batch came off a repair (see the module's note)."""


def _name(what: str, value: str) -> bytes:
    raw = value.encode()
    if not raw or b"\x00" in raw:
        raise InvalidValue(f"a {what} in a topic must be non-empty and hold no NUL: {value!r}")
    return raw


def _namespace(value: str) -> bytes:
    """A namespace as a topic spells it: a name may hold NUL, the topics' separator, so
    ``%`` and NUL are escaped (``%25``, ``%00``); the escaped name ends at the next NUL,
    and no escaped name is a prefix of another's with the NUL after it."""
    raw = value.encode()
    if not raw:
        raise InvalidValue("a namespace in a topic must be non-empty")
    return raw.replace(b"%", b"%25").replace(b"\x00", b"%00")


def _unescape(raw: bytes) -> bytes:
    out = raw.replace(b"%00", b"\x00").replace(b"%25", b"%")
    if out.replace(b"%", b"%25").replace(b"\x00", b"%00") != raw:  # a stray % or bad escape
        raise DecodeError(f"badly escaped namespace in a topic: {raw[:80]!r}")
    return out


def hop_mark(node_id: str) -> str:
    """The mark a publisher puts on a batch it got from ``node_id``."""
    digest = hashlib.blake2b(node_id.encode(), digest_size=HOP_DIGITS // 2).digest()
    return digest.hex()


def data_topic(
    publisher: str, namespace: str, hop: str, path_max: int = 0, repaired: bool = False
) -> bytes:
    """``hop``: :func:`hop_mark` or :data:`OWN`; ``path_max`` below 2**32."""
    return (
        data_prefix(publisher, namespace)
        + hop.encode()
        + b"%0*x" % (PATH_DIGITS, path_max)
        + (REPAIRED if repaired else b"")
    )


def data_prefix(publisher: str, namespace: str) -> bytes:
    return DATA + _name("publisher", publisher) + b"\0" + _namespace(namespace) + b"\0"


def have_topic(publisher: str, namespace: str) -> bytes:
    return HAVE + _name("publisher", publisher) + b"\0" + _namespace(namespace) + b"\0"


def have_prefix(publisher: str) -> bytes:
    """Every have notice of ``publisher``, of whatever namespace (a node holding every
    namespace learns of new ones from them)."""
    return HAVE + _name("publisher", publisher) + b"\0"


def data_subscriptions(publisher: str, namespace: str, me: str) -> tuple[bytes, ...]:
    """Prefixes matching every data topic of ``publisher`` in ``namespace`` but those
    marked with ``me``'s hop: the batches ``publisher`` got from ``me`` stay there."""
    base = data_prefix(publisher, namespace)
    mark = hop_mark(me)
    prefixes = [base + OWN.encode()]
    for i, own_digit in enumerate(mark):
        prefixes += [(base + (mark[:i] + d).encode()) for d in _HEX if d != own_digit]
    return tuple(prefixes)


def parse_topic(raw: bytes) -> Topic:
    """The parts of a received topic; :class:`DecodeError` if it is not one of ours."""
    kind = raw[:1]
    parts = raw[1:].split(b"\0")
    if kind not in (DATA, HAVE) or len(parts) != 3 or not parts[0] or not parts[1]:
        raise DecodeError(f"not a relay topic: {raw[:80]!r}")
    try:
        publisher, hop = parts[0].decode(), parts[2].decode()
        namespace = _unescape(parts[1]).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"relay topic is not UTF-8: {raw[:80]!r}") from exc
    if kind == HAVE:
        if hop:
            raise DecodeError(f"a have topic ends at its namespace: {raw[:80]!r}")
        return Topic(kind, publisher, namespace, hop)
    repaired = hop.endswith(REPAIRED.decode())
    hop = hop.removesuffix(REPAIRED.decode())
    mark, path = hop[:-PATH_DIGITS], hop[-PATH_DIGITS:]
    if mark != OWN and (len(mark) != HOP_DIGITS or mark.strip(_HEX)):
        raise DecodeError(f"bad hop mark {mark!r} in a data topic")
    if len(path) != PATH_DIGITS or path.strip(_HEX):
        raise DecodeError(f"bad path weight {path!r} in a data topic")
    return Topic(kind, publisher, namespace, mark, int(path, 16), repaired)


RANK_BITS = 12


def edge_weight(a: str, b: str) -> int:
    """The weight of the link between ``a`` and ``b``, the same seen from both ends, and
    never 0 (the path weight of a batch that has not travelled yet).

    The relay's tree is the minimum spanning tree of these weights, so they shape it.
    The high bits are the lower of the two ends' ranks (a hash of the id): every node
    hangs off its lowest-ranked neighbour, and the tree is shallow (at 200 simulated
    nodes it halved the time to reach every node against plain random weights). The low
    bits, a hash of the pair, make weights distinct, which the pruning rule needs."""
    low, high = sorted((a, b))
    rank = min(_node_rank(a), _node_rank(b))
    pair_bits = 4 * PATH_DIGITS - RANK_BITS
    digest = hashlib.blake2b(f"{low}\0{high}".encode(), digest_size=8).digest()
    pair = int.from_bytes(digest, "big") >> (64 - pair_bits)
    return (rank << pair_bits | pair) or 1


def _node_rank(node_id: str) -> int:
    digest = hashlib.blake2b(node_id.encode(), digest_size=8, person=b"relay-rank").digest()
    return int.from_bytes(digest, "big") >> (64 - RANK_BITS)


def _rank(namespace: str, node_id: str, salt: int = 0) -> bytes:
    return hashlib.blake2b(f"{namespace}\0{node_id}\0{salt}".encode(), digest_size=8).digest()


def topic_links(namespace: str, me: str, holders: Collection[str], chords: int = 1) -> set[str]:
    """The holders of ``namespace`` that ``me`` links to for it (besides its overlay
    neighbours), when not every live member holds it: ring neighbours and chords."""
    if me not in holders or len(holders) < 2:
        return set()
    ring = sorted(holders, key=lambda n: _rank(namespace, n))
    n = len(ring)
    at = ring.index(me)
    links = {ring[(at + 1) % n], ring[(at - 1) % n]}

    def picks(node: str) -> set[str]:
        out: set[str] = set()
        for j in range(chords):
            pick = ring[int.from_bytes(_rank(namespace, node, j + 1), "big") % n]
            if pick != node:
                out.add(pick)
        return out

    links |= picks(me)
    links |= {other for other in ring if other != me and me in picks(other)}
    links.discard(me)
    return links
