"""Test support shipped beside the product, never used by it.

What lives here: the deterministic simulator (``simulator``) and the in-memory replica it
drives (``memory``), real ``crdtstore serve`` clusters on loopback (``localcluster``), and
the network faults a test injects into a node (``faults``, and ``serve``, which runs
``crdtstore serve`` with them installed), and a network of membership protocols for
thousands of nodes in one process (``netsim``), and the whole node protocol on it
(``nodesim``: membership, overlay and a relaying sync engine per node).

Rule: nothing in the product's runtime path (node, replicator, storage, sync, membership,
transport, bindings) imports this package; only ``crdtstore demo``, tests, benchmarks and
the chaos suite do. ``make test`` checks it (import-linter).
"""
