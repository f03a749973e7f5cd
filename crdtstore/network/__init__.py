"""The parts of a node's network role that the replicator's thread moves work between.

:mod:`crdtstore.replicator` is the thread: it waits for frames and deadlines and hands
each to its owner. The owners live here, one concern a module, each a class handed what
it needs and owning its state:

- :mod:`.records`: this node's own member record, and the replicated records of the
  others (read, introduced by hellos, told to the membership protocol, pruned);
- :mod:`.links`: which members this node is linked to, what the sync engine and its relay
  are told of them, and the topic links kept with topics;
- :mod:`.hellos`: the hello exchange that starts every link (protocol versions, clocks,
  the sender's record) and refuses a member with no version in common;
- :mod:`.clock_watch`: members' clock offsets, judged against ``max_clock_drift_ms``;
- :mod:`.status`: the status snapshot, ``status.json`` and the answer to a status query;
- :mod:`.leave`: the graceful leave, confirmed by peers' digests.

Invariant shared by all: their state is the replicator thread's, except where a module's
header names a lock and the other threads that read under it.
"""
