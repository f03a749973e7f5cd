"""``crdt-inspect DIR status``: the running node's live status, from the ``status.json``
it refreshes (or asked over its ROUTER with ``--connect``).

Invariants: the file's age is taken from the file's time, not the node's reading, since
the node's clock may be the one that is off; a status is stale when old or when its
writer's process is gone, and a stale one says why when the writer still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from crdtstore.inspect.snapshot import Snapshot
from crdtstore.storage.member_watch import pid_running


def remote_status(args: argparse.Namespace) -> dict[str, Any]:
    """The status a running node answers over its ROUTER (``status_query``)."""
    from crdtstore.status_query import QueryError, ask_status

    try:
        status = ask_status(args.connect, args.timeout, args.secret_key, args.server_key)
    except QueryError as exc:
        raise SystemExit(f"crdt-inspect: {exc}") from None
    status["age_ms"] = 0  # asked now: as fresh as it gets
    status["stale"] = False
    return status


STALE_AFTER_MS = 5_000
"""A status file older than this is reported as stale: its node has probably stopped."""


def pid_alive(pid: object) -> bool:
    """Whether the status file's writer, process ``pid``, is there (the file is in a local
    directory, so its writer ran on this host). A pid taken again by another process reads
    as alive: the file's age still tells that one."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    return pid_running(pid)


FULL_BELOW_BYTES = 1 << 20
"""Free space under which a file system counts as full: a status file, a commit's pages,
no longer fit."""


def stale_reason(directory: Path, full_below: int = FULL_BELOW_BYTES) -> str:
    """Why a node whose process runs may not have refreshed its status file: its file
    system full (less than ``full_below`` bytes free), or else its own failure."""
    try:
        fs = os.statvfs(directory)
    except OSError as exc:
        return f"cannot check {directory}'s file system: {exc}"
    free = fs.f_bavail * fs.f_frsize
    if free < full_below:
        return f"the file system of {directory} is full ({free} bytes free): it cannot write"
    return "it has stopped writing it: stuck or failing (see its log)"


def live_status(path: str) -> dict[str, Any]:
    """The status the node holding the network role last wrote into ``path``."""
    file = Path(path) / "status.json"
    try:
        status: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        written_ns = file.stat().st_mtime_ns
    except FileNotFoundError:
        raise SystemExit(
            f"crdt-inspect: {path} has no status.json (no node with --bind has run here)"
        ) from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"crdt-inspect: cannot read {file}: {exc}") from None
    # By the file's time, not the node's reading (written_at_ms): the node's clock may
    # be the one that is off, and a node behind would read as stopped.
    age = (time.time_ns() - written_ns) // 1_000_000
    status["age_ms"] = age
    status["pid_alive"] = alive = pid_alive(status.get("pid"))
    status["stale"] = age > STALE_AFTER_MS or not alive
    if status["stale"] and alive:
        status["stale_reason"] = stale_reason(Path(path))
    if (Path(path) / "data.mdb").exists():
        snap = Snapshot(path)
        try:
            status["tables"] = snap.table_bytes()
        finally:
            snap.close()
    return status
