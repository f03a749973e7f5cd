"""The one exception hierarchy of crdtstore.

Every error the package raises on purpose derives from :class:`Error`, so a caller can
catch the whole family at once and a specific class when it cares which limit was hit.
Messages name the offending value and the limit.
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error crdtstore raises on purpose."""


class DecodeError(Error):
    """Bytes (from the network or from disk) are not a valid crdtstore encoding."""


class InvalidValue(Error, TypeError):
    """An API argument has a type or shape the store cannot hold."""


class TypeMismatch(Error, TypeError):
    """A namespace was opened as a different CRDT type than the one it holds."""


class ValueTooLarge(Error, ValueError):
    """An encoded key or value exceeds the configured size limit."""


class ClockDriftError(Error, ValueError):
    """A remote hybrid-logical-clock timestamp is further ahead of local time than allowed."""


class StorageError(Error):
    """The LMDB replica cannot be opened, read or written (full disk, permissions, ...)."""


class IdentityMismatch(StorageError):
    """A data directory was reopened with a node id other than the one it was created with."""


class ClosedError(Error):
    """The node (or one of its handles) was used after ``close()``."""


class RoleHeld(Error):
    """Another process holds the directory's network role: it, not this one, serves it."""


class NotReplicated(Error):
    """A namespace outside the node's declared topics was written to."""
