"""``crdtstore drop NS --data DIR``: drop a namespace everywhere, from a node's directory.

Like the embedded API, it needs no server: it writes the drop into the directory (the
namespace's rows go at once) and the process holding the directory's network role, if
one runs, replicates it. Exit status: 0 dropped, 1 the namespace does not exist here
(nothing dropped), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``drop`` subcommand, on ``build_parser``'s subparsers."""
    drop = sub.add_parser(
        "drop",
        help="remove a namespace on every node (a replicated drop of what this node has seen)",
    )
    drop.add_argument("namespace")
    drop.add_argument("--data", type=Path, required=True, help="the node's data directory")
    drop.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import crdtstore

    data: Path = args.data
    if not (data / "data.mdb").is_file():
        print(f"crdtstore drop: {data} is not a node directory (no data.mdb)", file=sys.stderr)
        return 2
    try:
        with crdtstore.open(data) as node:
            dropped = node.drop(args.namespace)
    except crdtstore.Error as exc:
        print(f"crdtstore drop: {exc}", file=sys.stderr)
        return 2
    if not dropped:
        print(
            f"crdtstore drop: nothing to drop: no namespace {args.namespace!r} in {data}, "
            "or nothing written there since its last drop",
            file=sys.stderr,
        )
        return 1
    print(f"dropped {args.namespace!r}")
    return 0
