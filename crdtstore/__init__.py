"""crdtstore: a replicated state store with no centre.

The public surface: :func:`open` a node directory, get namespace views from the
:class:`Node` (``lww_map``, ``or_set``), batch with ``node.transaction()``, follow changes
with ``node.watch`` / ``node.changes``; every error derives from :class:`Error`.
"""

from crdtstore.errors import (
    ClockDriftError,
    ClosedError,
    DecodeError,
    Error,
    IdentityMismatch,
    InvalidValue,
    NotReplicated,
    RoleHeld,
    StorageError,
    TypeMismatch,
    ValueTooLarge,
)
from crdtstore.node import LWWMapView, Node, ORSetView, open
from crdtstore.settings import NodeSettings
from crdtstore.storage.journal import Change

__all__ = [
    "Change",
    "ClockDriftError",
    "ClosedError",
    "DecodeError",
    "Error",
    "IdentityMismatch",
    "InvalidValue",
    "LWWMapView",
    "Node",
    "NodeSettings",
    "NotReplicated",
    "ORSetView",
    "RoleHeld",
    "StorageError",
    "TypeMismatch",
    "ValueTooLarge",
    "open",
]
