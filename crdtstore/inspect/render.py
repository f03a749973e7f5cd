"""How ``crdt-inspect`` prints a report: JSON for scripts, rich tables for people, and
the exit status (1: replicas differ, or a row is corrupt).

Tables take the width they need when the output is not a terminal (a pipe, a file), so
nothing is cut to 80 columns. rich is imported only to print a table.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PIPED_WIDTH = 4096
"""Columns rich may use when the output is not a terminal: tables take the width they need
(rich would cut them to 80 columns)."""


def exit_status(result: dict[str, Any], kind: str) -> int:
    """1 when replicas differ (diff) or a row is corrupt (dump, show), else 0."""
    if kind == "diff":
        return 1 if result["differences"] else 0
    if kind == "dump":
        return 1 if any("error" in e for e in result["entries"]) else 0
    if kind == "show":
        return 1 if "error" in result else 0
    return 0


def emit(result: dict[str, Any], as_json: bool, kind: str) -> int:
    status = exit_status(result, kind)
    for e in result.get("entries", ()) if kind == "dump" else ():
        if "error" in e:
            print(f"crdt-inspect: corrupt row: {e['error']}", file=sys.stderr)
    if kind == "show" and "error" in result:
        print(f"crdt-inspect: corrupt row: {result['error']}", file=sys.stderr)
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return status
    if kind == "show":  # one entry: JSON reads better than any table
        print(json.dumps(result, indent=2, sort_keys=True))
        return status
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
    if kind == "summary":
        console.print(
            f"node [bold]{escape(str(result['node_id']))}[/]  format v{result['format_version']}"
            f"  map {result['map']['used_bytes']}/{result['map']['map_size']} bytes "
            f"({result['map']['fill_pct']}%)  journal rows "
            f"{result['journal']['first']}..{result['journal']['last']}"
        )
        console.print(f"bytes per table: {tables_line(result['tables'])}", highlight=False)
        table = Table(
            "namespace",
            "type",
            "entries",
            "bytes",
            "version vector",
            "cloud",
            "delta log (origin: first..last, batches, bytes)",
        )
        for name, ns in result["namespaces"].items():
            logs = "\n".join(
                f"{o}: {i['first']}..{i['last']}, {i['batches']}, {i['bytes']}"
                for o, i in sorted(ns["log"].items())
            )
            table.add_row(
                escape(name),
                ns["type"],
                str(ns["entries"]),
                str(ns["bytes"]),
                json.dumps(ns["context"]["vv"]),
                str(len(ns["context"]["cloud"])),
                logs,
            )
        console.print(table)
    elif kind == "dump":
        title = escape(f"{result['namespace']} ({result['type']})")
        table = Table("key", "value", "dots (replica:seq @HLC = time)", title=title)
        for e in result["entries"]:
            key = escape(json.dumps(e["key"]))
            if "error" in e:
                table.add_row(key, "[red]corrupt row[/]", escape(e["error"]))
                continue
            dots = "\n".join(
                f"{d['replica']}:{d['seq']}"
                + (f" @{d['timestamp']} = {d['time']}" if "timestamp" in d else "")
                for d in e["dots"]
            )
            table.add_row(key, escape(json.dumps(e.get("value", True))), escape(dots))
        console.print(table)
    elif kind == "status":
        emit_status(console, result)
    elif not result["differences"]:
        console.print("identical")
    else:
        table = Table("namespace", "key", "live on", "dot", "why")
        for d in result["differences"]:
            for r in d["dots"]:
                table.add_row(
                    escape(d["namespace"]),
                    escape(json.dumps(d["key"])),
                    r["live_on"],
                    f"{r['dot'][0]}:{r['dot'][1]}",
                    r["reason"],
                )
        console.print(table)
    return status


def tables_line(tables: dict[str, int]) -> str:
    return ", ".join(f"{name} {size}" for name, size in tables.items())


def emit_status(console: Any, status: dict[str, Any]) -> None:
    from rich.table import Table

    # The node's readings against the node's clock (which may be off), not ours.
    now = int(status["written_at_ms"]) + int(status["age_ms"])
    if not status["pid_alive"]:
        state = f"[red]NOT RUNNING: no process {status['pid']}[/]"
    elif status["stale"]:
        state = f"[red]STALE: process {status['pid']} runs, but {status['stale_reason']}[/]"
    else:
        state = "[green]live[/]"
    console.print(
        f"node [bold]{status['node_id']}[/] pid {status['pid']}  router {status['router']}  "
        f"pub {status['pub']}  {state} (written {status['age_ms']} ms ago)"
    )
    if "tables" in status:
        console.print(f"bytes per table: {tables_line(status['tables'])}", highlight=False)
    failures = status.get("sync", {}).get("local_storage_failures", 0)
    if failures:
        map_full = status.get("storage", {}).get("map_full", 0)
        console.print(
            f"[red]storage: {failures} local storage failures ({map_full} with the map full "
            "at max_map_size): what peers send is not stored here; see the node's log[/]"
        )
    for line in clock_lines(status):
        console.print(line, highlight=False)
    members = Table(
        "member",
        "status",
        "incarnation",
        "last heard",
        "this node behind it by (seqs)",
        "clock",
        "topics",
        "router",
    )
    for m in status["members"]:
        heard = "-" if m["last_heard_ms"] is None else f"{now - m['last_heard_ms']} ms ago"
        members.add_row(
            m["node_id"] + (" (self)" if m["is_self"] else ""),
            m["status"],
            str(m["incarnation"]),
            heard,
            str(status["peer_lag"].get(m["node_id"], "-")),
            clock_cell(m),
            "all" if m["topics"] is None else ", ".join(m["topics"]),
            m["router"],
        )
    console.print(members)
    behind = status.get("behind", {})
    if behind:
        lagging = Table(
            "namespace", "behind since", "seqs missing", "last progress", title="behind peers"
        )
        for ns, b in sorted(behind.items()):
            lagging.add_row(
                ns,
                f"{(now - b['since']) / 1000:.1f} s ago",
                str(b["missing"]),
                f"{(now - b['progress_at']) / 1000:.1f} s ago",
            )
        console.print(lagging)
    else:
        console.print("namespaces: in step with every peer's last digest")
    counters = Table("layer", "counter", "value", title="counters (non-zero)")
    for layer in ("sync", "transport", "replicator", "storage"):
        for name, value in sorted(status.get(layer, {}).items()):
            if value:
                counters.add_row(layer, name, str(value))
    console.print(counters)


def clock_cell(member: dict[str, Any]) -> str:
    """A member's clock offset from the node's, flagged when its clock is the one off."""
    offset = member.get("clock_offset_ms")
    text = "-" if offset is None else f"{offset:+d} ms"
    return f"[red]{text} OFF[/]" if member.get("clock_off") else text


def clock_lines(status: dict[str, Any]) -> list[str]:
    """What is wrong with clocks, as the node sees it (nothing when nothing is)."""
    clock = status.get("clock")
    if not clock:
        return []
    limit = clock["max_clock_drift_ms"]
    out = []
    for node_id, offset in sorted(clock["told"].items()):
        direction = "ahead of" if offset > 0 else "behind"
        out.append(
            f"[red]clock: {node_id} says this node's clock is {abs(offset)} ms {direction} "
            f"its own (limit {limit} ms)[/]"
        )
    off = clock["off"]
    if off:
        median = "the median of the clocks it knows"
        out.append(f"[red]clock OFF (more than {limit // 2} ms from {median}): {', '.join(off)}[/]")
        known = {m["node_id"] for m in status["members"] if m.get("clock_offset_ms") is not None}
        if set(off) >= known:
            out.append(f"[red]  {len(known)} clocks cannot tell which one is wrong[/]")
    return out
