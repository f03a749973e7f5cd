"""The one seam through which tests inject network faults into a transport.

A ``Transport`` built without a ``TransportFaults`` (the default, and always in
production) runs no fault code beyond one ``is None`` test per frame. Tests hand one in
(``crdtstore.testing.faults`` builds them, also inside ``crdtstore serve`` processes) to
lose outgoing frames or to cut the node off from chosen peers, as a real network would.

Rule: both methods are called on the I/O thread, once per frame, so an implementation
must be cheap and must not block (poll a file on a timer, not on every call) and must
not touch the transport.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, Protocol

FrameKind = Literal["publish", "direct"]
"""``publish``: a frame for our PUB socket; ``direct``: one for a peer's DEALER/ROUTER."""


class TransportFaults(Protocol):
    """What a faulty network does to one transport's frames."""

    def drop_outgoing(self, kind: FrameKind) -> bool:
        """Whether to lose this outgoing frame (counted ``publish_dropped`` or
        ``send_dropped``, as the network's own losses are)."""
        ...

    def blocked_peers(self) -> Collection[bytes]:
        """Peers cut off from us: every direct frame to or from them, and every publication
        that arrives from them, is dropped (counted ``partition_dropped``)."""
        ...
