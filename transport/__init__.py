"""ZeroMQ I/O for crdtstore: opaque frames between nodes, no knowledge of CRDTs.

Invariants of the package:
- It imports nothing from ``crdtstore``; only pyzmq and the standard library.
- One I/O thread per ``Transport`` owns every ZeroMQ socket; application threads talk to
  it through inproc pipes (``transport.transport`` explains the threading contract).
- Every frame from the network is untrusted: wrong shape or size is dropped and counted,
  never raised, and never stops the I/O thread.
"""

from transport.counters import COUNTER_NAMES
from transport.delivery import Delivery
from transport.errors import TransportError
from transport.faults import FrameKind, TransportFaults
from transport.security import CurveKeys, generate_keypair, load_keys, load_public_key
from transport.settings import TransportSettings
from transport.transport import Transport

__all__ = [
    "COUNTER_NAMES",
    "CurveKeys",
    "Delivery",
    "FrameKind",
    "Transport",
    "TransportError",
    "TransportFaults",
    "TransportSettings",
    "generate_keypair",
    "load_keys",
    "load_public_key",
]
