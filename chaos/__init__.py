"""A fault suite of crdtstore's own (issue 18): real ``crdtstore serve`` nodes in network
namespaces, clients recording a history, a seeded schedule of network and process faults,
and a checker of the history against every replica's final state.

Test machinery, not product: the wheel does not ship this package (``pyproject.toml``
includes only ``crdtstore``, ``transport`` and ``bindings``). ``python -m chaos.run
--help`` is the entry point; ``make chaos`` the long run; ``tests/chaos`` the short one.

Modules: ``net`` (namespaces, bridge and every network fault, by tc), ``delayer`` (the
userspace delay line the kernel lacks), ``client`` (a writer process and its history),
``history`` (the record format), ``schedule`` (the seeded fault plan), ``processes``
(nodes and clients as OS processes), ``checker`` (what must hold at the end), ``run`` (the
command line that ties them together).
"""
