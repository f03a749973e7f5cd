"""Pure CRDT values: dots, causal contexts, hybrid clocks, OR-Set and LWW-map.

Nothing here reads a clock, does I/O, logs or keeps global state. Every mutator returns a
delta; ``join`` is the only merge.
"""

from typing import Any

from crdtstore.crdt.dotmap import DotMap, Key, check_key, join_entry
from crdtstore.crdt.dots import CausalContext, Dot
from crdtstore.crdt.hlc import HybridClock, check_drift, make_timestamp, physical_ms
from crdtstore.crdt.lwwmap import LWWMap, winner
from crdtstore.crdt.orset import ORSet

CRDT_TYPES: dict[str, type[DotMap[Any]]] = {ORSet.type_name: ORSet, LWWMap.type_name: LWWMap}

__all__ = [
    "CRDT_TYPES",
    "CausalContext",
    "Dot",
    "DotMap",
    "HybridClock",
    "Key",
    "LWWMap",
    "ORSet",
    "check_drift",
    "check_key",
    "join_entry",
    "make_timestamp",
    "physical_ms",
    "winner",
]
