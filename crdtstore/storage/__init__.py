"""The LMDB replica of a node directory (see :mod:`crdtstore.storage.replica`)."""

from crdtstore.storage.journal import Change
from crdtstore.storage.local import Committed, LocalWrite
from crdtstore.storage.replica import LMDBReplica
from crdtstore.storage.role import NetworkRole

__all__ = ["Change", "Committed", "LMDBReplica", "LocalWrite", "NetworkRole"]
