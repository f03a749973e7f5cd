"""``crdt-inspect``: read a node directory without changing it.

The command line: arguments to a report (:mod:`.reports`, :mod:`.status`), printed by
:mod:`.render`. Invariant: a damaged directory is what the inspector is for, so no
command ends in a traceback: a corrupt row is listed in its place (exit status 1), and
anything else corrupt (a garbage ``data.mdb`` included) ends the command with one line
saying what and where (exit status 2). A reader that has gone (``| head``) ends it
quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from crdtstore.errors import Error
from crdtstore.inspect.render import emit
from crdtstore.inspect.reports import diff, dump, show, summary
from crdtstore.inspect.snapshot import Snapshot
from crdtstore.inspect.status import live_status, remote_status
from crdtstore.version import package_version


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
