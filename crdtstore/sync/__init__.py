"""The replication protocol, sans I/O: the sync engine, its messages and settings.

Nothing here imports ``zmq`` or ``lmdb`` or reads a clock; see :mod:`crdtstore.sync.engine`.
"""
