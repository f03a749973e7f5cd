"""``members [--watch]`` and ``leave``: the cluster as the directory's role holder sees it.

``members`` reads the member view the role holder keeps in the directory (its failure
detector's statuses), as ``node.members()`` does in any process sharing it, and says when
that view is stale. ``--watch`` then streams each status change as one JSON line.

``leave`` asks the ``crdtstore serve`` holding the directory's role to announce a
graceful leave and stop: it sends that process ``SIGUSR1``. The signal is sent only once
two facts agree: a process holds the role lock now (a shared-lock probe), and the pid the
holder wrote into the lock is the one ``serve`` wrote into ``serve.pid``. An embedding
application holding the role (which may not handle ``SIGUSR1``) or a stale pid file is
therefore never signalled. The command returns once the holder gave the role up, which
the kernel does when the process exits, so "left" is said only when it is true.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

from crdtstore.cli.exits import OK, RUNTIME, USAGE, CliError
from crdtstore.cli.local import directory, stop_on_signals
from crdtstore.cli.output import dumps, emit
from crdtstore.storage.role import NetworkRole, held_elsewhere

SERVE_PID_FILE = "serve.pid"
LEAVE_SIGNAL = signal.SIGUSR1
LEAVE_POLL_S = 0.1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("members", parents=[common], help="members and their live status")
    p.add_argument("--watch", action="store_true", help="then stream status changes")
    p.add_argument(
        "--connect",
        metavar="ADDR",
        help="ask the node serving ADDR (its ROUTER, tcp://HOST:PORT) instead of --data",
    )
    p.add_argument("--secret-key", help="with --connect and CURVE: this client's .key_secret")
    p.add_argument("--server-key", help="with --connect and CURVE: the node's public .key")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for --connect")
    p.set_defaults(run=members)

    p = sub.add_parser(
        "leave", parents=[common], help="make the node serving --data leave the cluster and stop"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for it to stop (default 60)"
    )
    p.set_defaults(run=leave)


def member_json(member: Any) -> dict[str, Any]:
    return dataclasses.asdict(member)


def remote_members(args: argparse.Namespace) -> int:
    from crdtstore.status_query import QueryError, ask_status

    if args.watch:
        raise CliError(USAGE, "--watch reads a directory: use --data, not --connect")
    try:
        status = ask_status(args.connect, args.timeout, args.secret_key, args.server_key)
    except QueryError as exc:
        raise CliError(RUNTIME, str(exc)) from None
    rows = [m for m in status["members"] if isinstance(m, dict)]
    if args.json:
        emit(dumps({"members": rows, "stale": None, "holder_pid": status.get("pid")}))
    else:
        try:
            print_table(rows, None)
        except (KeyError, TypeError) as exc:
            raise CliError(RUNTIME, f"malformed member in the reply: {exc}") from None
    return OK


def members(args: argparse.Namespace) -> int:
    if args.connect is not None:
        return remote_members(args)
    stop = stop_on_signals() if args.watch else None
    with directory(args) as node:
        handle = None
        if stop is not None:
            # Subscribed before the snapshot is read: no change falls between the two.
            handle = node.watch_members(
                lambda c: emit(
                    dumps(
                        {
                            "event": "change",
                            "node_id": c.node_id,
                            "old": None if c.old is None else c.old.value,
                            "new": c.new.value,
                            "incarnation": c.incarnation,
                        }
                    )
                )
            )
        view = node.member_view()
        if args.json or stop is not None:
            if stop is not None:
                for m in view.members:
                    emit(dumps({"event": "member", **member_json(m)}))
            else:
                emit(
                    dumps(
                        {
                            "members": [member_json(m) for m in view.members],
                            "stale": view.stale,
                            "holder_pid": view.holder_pid,
                            "holder_router": view.holder_router,
                        }
                    )
                )
        else:
            print_table([member_json(m) for m in view.members], view.stale)
        if stop is not None:
            assert handle is not None
            try:
                stop.wait()
            finally:
                handle.cancel()
    return OK


def print_table(rows: list[dict[str, Any]], stale: str | None) -> None:
    now = time.time() * 1000
    header = ("NODE", "STATUS", "INC", "ROUTER", "LAST HEARD")
    lines = [header]
    for m in rows:
        heard = m.get("last_heard_ms")
        ago = "-" if not isinstance(heard, int) else f"{max(0.0, (now - heard) / 1000):.1f}s ago"
        name = str(m["node_id"]) + (" (self)" if m.get("is_self") else "")
        lines.append((name, str(m["status"]), str(m["incarnation"]), m["router"] or "-", ago))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        emit("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    if stale is not None:
        emit(f"(view stale: {stale})")


def serving_pid(data: Path) -> int:
    """The pid of the ``crdtstore serve`` holding ``data``'s role (CliError if none)."""
    if not held_elsewhere(data):
        raise CliError(RUNTIME, f"{data}: no process serves this directory")
    holder, _ = NetworkRole(data).holder()
    try:
        recorded = int((data / SERVE_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        recorded = None
    if holder is None or holder != recorded:
        raise CliError(
            RUNTIME,
            f"{data}: the role holder (pid {holder or '?'}) is not a `crdtstore serve`; "
            "have that process call node.leave()",
        )
    return holder


def leave(args: argparse.Namespace) -> int:
    data: Path | None = args.data
    if data is None:
        raise CliError(USAGE, "--data DIR (or CRDTSTORE_DATA) is required")
    pid = serving_pid(data)
    try:
        os.kill(pid, LEAVE_SIGNAL)
    except OSError as exc:
        raise CliError(RUNTIME, f"cannot signal pid {pid}: {exc}") from None
    deadline = time.monotonic() + args.timeout
    role = NetworkRole(data)
    # Gone once the lock is free or held by another process (a standby that took over).
    while held_elsewhere(data) and role.holder()[0] == pid:
        if time.monotonic() > deadline:
            raise CliError(RUNTIME, f"pid {pid} was asked to leave but still serves {data}")
        time.sleep(LEAVE_POLL_S)  # the polling interval of a bounded wait
    if args.json:
        emit(dumps({"left": True, "pid": pid}))
    else:
        emit(f"pid {pid} left the cluster and stopped")
    return OK
