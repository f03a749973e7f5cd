"""ZeroMQ I/O for crdtstore: opaque frames between nodes, no knowledge of CRDTs.

Invariants of the package:
- It imports nothing from ``crdtstore``; only pyzmq and the standard library.
- One I/O thread per ``Transport`` owns every ZeroMQ socket; application threads talk to
  it through inproc pipes (``transport.transport`` explains the threading contract).
- Every frame from the network is untrusted: wrong shape or size is dropped and counted,
  never raised, and never stops the I/O thread.
- Importing the package, its settings or its fault seam loads no pyzmq: the names that
  need it (``Transport``, the CURVE helpers) load on first use, so a process that only
  builds a node's settings (a local-only node) never pays pyzmq's import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transport.counters import COUNTER_NAMES
from transport.delivery import Delivery
from transport.errors import TransportError
from transport.faults import FrameKind, TransportFaults
from transport.settings import TransportSettings

if TYPE_CHECKING:
    from transport.security import CurveKeys, generate_keypair, load_keys, load_public_key
    from transport.transport import Transport

_LAZY = {
    "CurveKeys": "transport.security",
    "generate_keypair": "transport.security",
    "load_keys": "transport.security",
    "load_public_key": "transport.security",
    "Transport": "transport.transport",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'transport' has no attribute {name!r}")


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
