"""``crdt-inspect``: read a node directory without changing it.

The environment is opened read-only with LMDB's locking on (``readonly=True, lock=True``),
which is safe while the node runs in another process: each command reads one consistent
snapshot. ``--json`` prints plain, stable JSON for scripts (bytes become
``{"bytes": "<hex>"}``, non-string map keys become their ``repr``); without it, rich tables.

Commands: ``crdt-inspect DIR`` (summary), ``crdt-inspect DIR dump NS``,
``crdt-inspect DIR show NS KEY``, ``crdt-inspect DIR status`` (live: members, lag and
counters of the running node, from the ``status.json`` it refreshes) and
``crdt-inspect diff DIR_A DIR_B``.

A damaged directory is what the inspector is for: ``dump`` and ``show`` list a corrupt row
by its namespace, encoded key and what is wrong with it, go on, and exit with status 1;
anything else corrupt (a garbage ``data.mdb`` included) ends the command with one line
saying what and where (exit status 2), not a traceback. ``diff`` exits 1 when the
replicas differ, 0 (saying "identical") when they do not, like diff(1).

Modules: :mod:`.snapshot` (the read-only transaction), :mod:`.reports` (summary, dump,
show, diff), :mod:`.status` (the live status), :mod:`.render` (tables, JSON, exit status),
:mod:`.cli` (the command line). ``python -m crdtstore.inspect`` runs the command.
"""

from crdtstore.inspect.cli import build_parser, main, parse_key, run
from crdtstore.inspect.render import emit, emit_status, exit_status
from crdtstore.inspect.reports import diff, dump, namespace, show, summary, to_json
from crdtstore.inspect.snapshot import Snapshot, read_row
from crdtstore.inspect.status import live_status, pid_alive, remote_status, stale_reason

__all__ = [
    "Snapshot",
    "build_parser",
    "diff",
    "dump",
    "emit",
    "emit_status",
    "exit_status",
    "live_status",
    "main",
    "namespace",
    "parse_key",
    "pid_alive",
    "read_row",
    "remote_status",
    "run",
    "show",
    "stale_reason",
    "summary",
    "to_json",
]
