"""The transport's one exception class.

It is raised only by calls made on the application thread (start, connect_peer, key loading)
and only for conditions the caller can act on: a bind that failed, missing CURVE keys, a
transport already closed. Nothing that arrives from the network ever raises; bad frames are
dropped and counted (see ``Transport.stats``).
"""

from __future__ import annotations


class TransportError(Exception):
    """A transport call could not be carried out; the message names the value at fault."""
