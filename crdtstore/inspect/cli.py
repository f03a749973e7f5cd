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

Tables take the width they need when the output is not a terminal (a pipe, a file), so
nothing is cut to 80 columns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmdb

from crdtstore.crdt import CausalContext, Dot
from crdtstore.crdt.hlc import logical, physical_ms
from crdtstore.errors import DecodeError, Error, StorageError
from crdtstore.storage import layout
from crdtstore.storage.member_watch import pid_running
from crdtstore.storage.reads import count_live
from crdtstore.storage.rows import winning_value
from crdtstore.storage.tables import table_bytes
from crdtstore.version import package_version


class Snapshot:
    """One read transaction over a node directory opened read-only."""

    def __init__(self, path: str) -> None:
        if not (Path(path) / "data.mdb").exists():
            raise SystemExit(f"crdt-inspect: {path} is not a node directory (no data.mdb)")
        try:
            # map_size=0 adopts the size recorded in the file.
            self.env = lmdb.open(
                path,
                readonly=True,
                lock=True,
                max_dbs=len(layout.TABLES) + 1,
                map_size=0,
                subdir=True,
                create=False,
            )
        except lmdb.Error as exc:
            raise StorageError(f"{path}: data.mdb is not a readable LMDB file: {exc}") from None
        try:
            meta = self.env.open_db(b"meta", create=False)
            with self.env.begin() as txn:
                fmt = txn.get(layout.META_FORMAT, db=meta)
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(f"{path}: not a node directory's LMDB file: {exc}") from None
        version = layout.read_u64(fmt) if fmt is not None and len(fmt) == 8 else fmt
        if version != layout.FORMAT_VERSION:
            self.env.close()
            raise SystemExit(
                f"crdt-inspect: {path} has storage format {version!r}; this build reads "
                f"{layout.FORMAT_VERSION} (opening it with crdtstore migrates an older one)"
            )
        try:
            self.dbs = {
                name: self.env.open_db(name.encode(), create=False) for name in layout.TABLES
            }
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(f"{path}: a table is missing or damaged: {exc}") from None
        self.txn = self.env.begin()

    def close(self) -> None:
        self.txn.abort()
        self.env.close()

    def meta(self, key: bytes) -> bytes | None:
        data: bytes | None = self.txn.get(key, db=self.dbs["meta"])
        return data

    def namespaces(self) -> dict[str, tuple[int, str]]:
        out = {}
        for name, data in self.txn.cursor(db=self.dbs["namespaces"]):
            ns_id, type_name = layout.unpack_stored(data)
            out[bytes(name).decode()] = (int(ns_id), str(type_name))
        return out

    def table_bytes(self) -> dict[str, int]:
        """Bytes of pages each table holds (see :mod:`crdtstore.storage.tables`)."""
        return {name: table_bytes(self.txn, db) for name, db in self.dbs.items()}

    def context(self, ns_id: int) -> CausalContext:
        data = self.txn.get(layout.context_key(ns_id), db=self.dbs["logorder"])
        return CausalContext() if data is None else layout.unpack_context(data)

    def raw_rows(self, ns_id: int) -> Iterator[tuple[bytes, bytes]]:
        """``(row key, row)`` of every live row, undecoded."""
        prefix = layout.ns_prefix(ns_id)
        with self.txn.cursor(db=self.dbs["state"]) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[:4] == prefix:
                yield bytes(cur.key()), bytes(cur.value())
                ok = cur.next()

    def rows(self, ns_id: int, stamped: bool) -> Iterator[tuple[Any, list[list[Any]]]]:
        """``(key, dots)`` of every live row; DecodeError at a corrupt one."""
        for rkey, data in self.raw_rows(ns_id):
            yield read_row(rkey, data, stamped)

    def log(self, ns_id: int) -> dict[str, dict[str, int]]:
        prefix = layout.ns_prefix(ns_id)
        out: dict[str, dict[str, int]] = {}
        with self.txn.cursor(db=self.dbs["log"]) as cur:
            ok = cur.set_range(prefix)
            while ok and cur.key()[:4] == prefix:
                last, origin, encoded = layout.unpack_log(cur.value())
                first = layout.log_first(cur.key())
                info = out.setdefault(
                    origin, {"batches": 0, "first": first, "last": last, "bytes": 0}
                )
                info["batches"] += 1
                info["first"] = min(info["first"], first)
                info["last"] = max(info["last"], last)
                info["bytes"] += len(encoded)
                ok = cur.next()
        return out


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): to_json(v) for k, v in value.items()}
    return value


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time."""
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_row(rkey: bytes, data: bytes, stamped: bool) -> tuple[Any, list[list[Any]]]:
    """The key and dots of a state row; DecodeError, naming the row, if it is corrupt."""
    ekey = layout.row_ekey(rkey)
    try:
        key = layout.unpack_stored(ekey)
        return key, layout.checked_dots(layout.row_dots(data), stamped)
    except DecodeError as exc:
        raise DecodeError(f"row of encoded key {bytes(ekey).hex()}: {exc}") from exc


def context_json(ctx: CausalContext) -> dict[str, Any]:
    return {"vv": dict(sorted(ctx.vv.items())), "cloud": [list(d) for d in sorted(ctx.cloud)]}


def dots_json(dots: list[list[Any]]) -> list[dict[str, Any]]:
    out = []
    for d in sorted(dots, key=lambda d: (d[0], d[1])):
        item: dict[str, Any] = {"replica": d[0], "seq": d[1]}
        if len(d) == 4:
            item.update(
                timestamp=d[2],
                wall_ms=physical_ms(d[2]),
                time=iso_ms(physical_ms(d[2])),
                logical=logical(d[2]),
                value=to_json(d[3]),
            )
        out.append(item)
    return out


def summary(snap: Snapshot) -> dict[str, Any]:
    fmt = snap.meta(layout.META_FORMAT)
    node_id = snap.meta(layout.META_NODE_ID)
    info, stat = snap.env.info(), snap.env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    namespaces = {}
    for name, (ns_id, type_name) in sorted(snap.namespaces().items()):
        size = sum(len(rkey) + len(data) for rkey, data in snap.raw_rows(ns_id))
        namespaces[name] = {
            "type": type_name,
            "entries": count_live(snap.txn, snap.dbs["buckets"], ns_id),
            "bytes": size,
            "context": context_json(snap.context(ns_id)),
            "log": snap.log(ns_id),
        }
    with snap.txn.cursor(db=snap.dbs["journal"]) as cur:
        jfirst = layout.read_u64(cur.key()) if cur.first() else 0
        jlast = layout.read_u64(cur.key()) if cur.last() else 0
    return {
        "node_id": None if node_id is None else bytes(node_id).decode(),
        "format_version": None if fmt is None else layout.read_u64(fmt),
        "namespaces": namespaces,
        "journal": {"first": jfirst, "last": jlast},
        "tables": snap.table_bytes(),
        "map": {
            "map_size": info["map_size"],
            "used_bytes": used,
            "fill_pct": round(100.0 * used / info["map_size"], 2),
        },
    }


def namespace(snap: Snapshot, name: str) -> tuple[int, str]:
    found = snap.namespaces().get(name)
    if found is None:
        raise SystemExit(f"crdt-inspect: no namespace {name!r}")
    return found


def dump(snap: Snapshot, name: str) -> dict[str, Any]:
    """Every entry; a corrupt row is listed by its encoded key and what is wrong with it
    (``{"key": {"bytes": hex}, "error": ...}``), and the dump goes on."""
    ns_id, type_name = namespace(snap, name)
    stamped = type_name == "lww_map"
    entries = []
    for rkey, data in snap.raw_rows(ns_id):
        try:
            key, dots = read_row(rkey, data, stamped)
        except DecodeError as exc:
            error = f"namespace {name!r}: {exc}"
            entries.append({"key": to_json(bytes(layout.row_ekey(rkey))), "error": error})
            continue
        item: dict[str, Any] = {"key": to_json(key), "dots": dots_json(dots)}
        if stamped:
            item["value"] = to_json(winning_value(dots))
        entries.append(item)
    return {"namespace": name, "type": type_name, "entries": entries}


def show(snap: Snapshot, name: str, key: Any) -> dict[str, Any]:
    ns_id, type_name = namespace(snap, name)
    ekey = layout.pack_key(key)
    rkey = layout.row_key(ns_id, layout.hash_encoded_key(ekey), ekey)
    data = snap.txn.get(rkey, db=snap.dbs["state"])
    out: dict[str, Any] = {"namespace": name, "type": type_name, "key": to_json(key)}
    stamped = type_name == "lww_map"
    try:
        dots = read_row(rkey, bytes(data), stamped)[1] if data is not None else []
    except DecodeError as exc:
        out.update(present=True, error=f"namespace {name!r}: {exc}")
        return out
    out.update(present=bool(dots), dots=dots_json(dots))
    if stamped:
        out["value"] = to_json(winning_value(dots)) if dots else None
    return out


def diff(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Entries whose live dots differ, each dot explained from the other side's context."""
    out = []
    ns_a, ns_b = a.namespaces(), b.namespaces()
    for name in sorted(ns_a.keys() | ns_b.keys()):
        sides = []
        for snap, names in ((a, ns_a), (b, ns_b)):
            found = names.get(name)
            rows = (
                {}
                if found is None
                else {
                    layout.pack_key(k): (k, d)
                    for k, d in snap.rows(found[0], found[1] == "lww_map")
                }
            )
            ctx = CausalContext() if found is None else snap.context(found[0])
            sides.append((rows, ctx))
        (rows_a, ctx_a), (rows_b, ctx_b) = sides
        for ekey in sorted(rows_a.keys() | rows_b.keys()):
            key = (rows_a.get(ekey) or rows_b[ekey])[0]
            dots_a = {Dot(d[0], d[1]) for d in rows_a.get(ekey, (None, []))[1]}
            dots_b = {Dot(d[0], d[1]) for d in rows_b.get(ekey, (None, []))[1]}
            if dots_a == dots_b:
                continue
            reasons = []
            for here, other, other_ctx, side, other_side in (
                (dots_a, dots_b, ctx_b, "a", "b"),
                (dots_b, dots_a, ctx_a, "b", "a"),
            ):
                for dot in sorted(here - other):
                    why = (
                        f"removed on {other_side}"
                        if dot in other_ctx
                        else f"not yet seen by {other_side}"
                    )
                    reasons.append({"live_on": side, "dot": list(dot), "reason": why})
            out.append({"namespace": name, "key": to_json(key), "dots": reasons})
    return {"differences": out}


def parse_key(args: argparse.Namespace) -> Any:
    if args.int:
        return int(args.key)
    if args.hex:
        return bytes.fromhex(args.key)
    return args.key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdt-inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--version", action="version", version=f"crdt-inspect {package_version()}")
    parser.add_argument("directory", help="a node directory, or 'diff' to compare two")
    sub = parser.add_subparsers(dest="command")
    p_dump = sub.add_parser("dump", help="every entry of a namespace")
    p_dump.add_argument("namespace")
    p_dump.add_argument("--json", action="store_true", dest="json_sub")
    p_show = sub.add_parser("show", help="one key with its dots and timestamps")
    p_show.add_argument("namespace")
    p_show.add_argument("key")
    kind = p_show.add_mutually_exclusive_group()
    kind.add_argument("--int", action="store_true", help="KEY is an integer")
    kind.add_argument("--hex", action="store_true", help="KEY is bytes, in hex")
    p_show.add_argument("--json", action="store_true", dest="json_sub")
    p_status = sub.add_parser(
        "status", help="the running node's members, per-peer lag and counters (status.json)"
    )
    p_status.add_argument("--json", action="store_true", dest="json_sub")
    p_status.add_argument(
        "--connect",
        metavar="ADDR",
        help="ask the node serving ADDR (its ROUTER) over the network; DIRECTORY is then "
        "only a label",
    )
    p_status.add_argument("--secret-key", help="with --connect and CURVE: this client's key")
    p_status.add_argument("--server-key", help="with --connect and CURVE: the node's .key")
    p_status.add_argument("--timeout", type=float, default=5.0)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    try:
        code = run(argv, as_json)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except Error as exc:  # a corrupt directory: what and where, not a traceback
        print(f"crdt-inspect: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (``| head``) has gone: stop quietly. Python would report the failed
        # flush of stdout at exit, so point stdout at nothing first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def run(argv: list[str], as_json: bool) -> int:
    if argv and argv[0] == "diff":
        dparser = argparse.ArgumentParser(prog="crdt-inspect diff")
        dparser.add_argument("dir_a")
        dparser.add_argument("dir_b")
        dargs = dparser.parse_args(argv[1:])
        a, b = Snapshot(dargs.dir_a), Snapshot(dargs.dir_b)
        try:
            return emit(diff(a, b), as_json, "diff")
        finally:
            a.close()
            b.close()
    if argv[:1] == ["status"] and "--connect" in argv:
        argv = ["-", *argv]  # asking over the network: there is no directory to name
    args = build_parser().parse_args(argv)
    if args.command == "status":
        status = live_status(args.directory) if args.connect is None else remote_status(args)
        return emit(status, as_json, "status")
    snap = Snapshot(args.directory)
    try:
        if args.command == "dump":
            return emit(dump(snap, args.namespace), as_json, "dump")
        if args.command == "show":
            return emit(show(snap, args.namespace, parse_key(args)), as_json, "show")
        return emit(summary(snap), as_json, "summary")
    finally:
        snap.close()


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


if __name__ == "__main__":
    sys.exit(main())
