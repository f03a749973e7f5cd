"""The public API: ``crdtstore.open()``, :class:`Node` and its namespace views.

- :mod:`.api`: ``open()`` and :class:`Node`, the directory opened in this process;
- :mod:`.views`: :class:`LWWMapView` and :class:`ORSetView`, what its namespaces read as;
- :mod:`.members`: the member view of a process without the network role;
- :mod:`.role`: claiming the network role and starting the replicator.

Each module states its invariants at its top; the names here are the ones
``crdtstore`` re-exports (DESIGN.md's public contract).
"""

from crdtstore.node.api import Node, open, start_replicator
from crdtstore.node.views import LWWMapView, ORSetView

__all__ = ["LWWMapView", "Node", "ORSetView", "open", "start_replicator"]
