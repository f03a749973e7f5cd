"""LMDB replicas for the simulator: the replica production runs, under simulated time.

:class:`SimLMDBReplica` is an :class:`~crdtstore.storage.LMDBReplica` in a directory of its
own, reading time only from the simulator's clock, with the two methods the simulator
writes and reads through (:class:`~crdtstore.testing.simulator.SimReplica`). Everything the
sync engine calls (batch apply, the delta log, fingerprints, ranges, contexts) is the
production code unchanged.

Local writes: ``mutate`` computes the delta with the pure CRDT values and applies it as an
own batch through the receive path, exactly as ``MemoryReplica`` does, so both replicas
see the same schedule of dots and stamps. The Node API's own write path (the kernel's
``LocalWrite``) is held to the same pure values by tests/storage/test_storage_kernel.py.

Durability is ``async``: a simulated crash keeps the replica object (as a directory would
be kept), so nothing here needs an fsync per write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crdtstore.crdt import CRDT_TYPES, DotMap
from crdtstore.errors import InvalidValue
from crdtstore.settings import NodeSettings
from crdtstore.storage import LMDBReplica
from crdtstore.sync.fingerprint import HASH_SPACE
from crdtstore.sync.messages import DeltaBatch, encode_message
from crdtstore.sync.settings import SyncSettings
from crdtstore.testing.simulator import ReplicaFactory, SimReplica


class SimLMDBReplica(LMDBReplica):
    """An LMDB replica the simulator can write through and read back."""

    def mutate(
        self, namespace: str, type_name: str, fn: Callable[[DotMap[Any]], DotMap[Any]]
    ) -> DeltaBatch:
        self.ensure_namespace(namespace, type_name)
        state = self.value(namespace)
        delta = fn(state)
        dot = state.context.next_dot(self.node_id)
        if type(delta) is not type(state) or not delta.is_delta or dot not in delta.context:
            raise InvalidValue(f"mutation must return a {type_name} delta consuming {dot}")
        batch = DeltaBatch(namespace, self.node_id, dot.seq, dot.seq, delta)
        if not self.apply_batch(batch, encode_message(batch)):
            raise AssertionError(f"own batch {dot} was not applied")
        return batch

    def value(self, namespace: str) -> DotMap[Any]:
        whole = self.read_range(namespace, 0, HASH_SPACE)
        kind = CRDT_TYPES[self.namespaces()[namespace]]
        return kind({k: e for k, e in whole.entries.items() if e}, whole.context)


def lmdb_replicas(root: Path, settings: SyncSettings) -> tuple[ReplicaFactory, list[LMDBReplica]]:
    """A factory of LMDB replicas under ``root`` (one directory per node) whose clock-drift
    bound is ``settings``', and the list of those it opened, for the caller to close."""
    opened: list[LMDBReplica] = []
    node_settings = NodeSettings(durability="async", sync=settings)

    def make(node_id: str, now_ms: Callable[[], int]) -> SimReplica:
        replica = SimLMDBReplica(root / node_id, node_id, node_settings, now_ms=now_ms)
        opened.append(replica)
        return replica

    return make, opened
