"""``get``, ``put``, ``del``, ``add``, ``remove``, ``ls`` and ``watch`` on a node directory.

Each command opens the directory as the embedded API does (``crdtstore.open(DIR)``, no
bind): it reads and writes LMDB directly, and the directory's role holder, if one runs,
replicates the writes. No server is needed, and none is asked.

A namespace's type is the directory's record of it (``node.namespaces()``), so ``get``
and ``ls`` work on either type; a read never creates a namespace. ``put``/``del`` act on
LWW-maps, ``add``/``remove`` on OR-Sets; using one on the other type is refused (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crdtstore
from crdtstore.cli.exits import NOT_FOUND, OK, RUNTIME, USAGE, CliError
from crdtstore.cli.output import dumps, emit, parse_key, parse_value

LWW = "lww_map"
ORSET = "or_set"
DATA_FILE = "data.mdb"
WATCH_POLL_S = 0.2
"""How often ``watch`` looks up from its feed to notice a stop signal."""

BAD_INPUT = (
    crdtstore.InvalidValue,
    crdtstore.TypeMismatch,
    crdtstore.ValueTooLarge,
    crdtstore.NotReplicated,
    crdtstore.ClockDriftError,
)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The data commands, each with ``--data`` and ``--json`` from ``common``."""
    key_help = "a string, or JSON with --json-key"
    json_key = argparse.ArgumentParser(add_help=False)
    json_key.add_argument(
        "--json-key", action="store_true", help="parse KEY/ELEM as JSON (an integer key)"
    )
    create = argparse.ArgumentParser(add_help=False)
    create.add_argument(
        "--create", action="store_true", help="create the node directory if it does not exist"
    )

    p = sub.add_parser("get", parents=[common, json_key], help="print one key's value (JSON)")
    p.add_argument("namespace")
    p.add_argument("key", help=key_help)
    p.set_defaults(run=get)

    p = sub.add_parser("put", parents=[common, json_key, create], help="set a key (LWW-map)")
    p.add_argument("namespace")
    p.add_argument("key", help=key_help)
    p.add_argument("value", help="JSON: 42, true, null, '\"text\"', '{\"a\": [1, 2]}'")
    p.set_defaults(run=put)

    p = sub.add_parser("del", parents=[common, json_key], help="delete a key (LWW-map)")
    p.add_argument("namespace")
    p.add_argument("key", help=key_help)
    p.set_defaults(run=delete)

    p = sub.add_parser("add", parents=[common, json_key, create], help="add to an OR-Set")
    p.add_argument("namespace")
    p.add_argument("element", help=key_help)
    p.set_defaults(run=add)

    p = sub.add_parser("remove", parents=[common, json_key], help="remove from an OR-Set")
    p.add_argument("namespace")
    p.add_argument("element", help=key_help)
    p.set_defaults(run=remove)

    p = sub.add_parser("ls", parents=[common], help="list a namespace (or every namespace)")
    p.add_argument("namespace", nargs="?")
    p.add_argument("--prefix", help="only keys (elements) that are strings starting so")
    p.set_defaults(run=ls)

    p = sub.add_parser(
        "watch", parents=[common], help="stream a namespace's changes, one JSON line each"
    )
    p.add_argument("namespace")
    p.add_argument("--prefix", help="only keys (elements) that are strings starting so")
    p.set_defaults(run=watch)


@contextmanager
def directory(args: argparse.Namespace, create: bool = False) -> Iterator[crdtstore.Node]:
    """The node directory ``--data``, opened without bind; only ``--create`` makes one, so
    a mistyped path is an error rather than a new node nobody serves."""
    data: Path | None = args.data
    if data is None:
        raise CliError(USAGE, "--data DIR (or CRDTSTORE_DATA) is required")
    if not (data / DATA_FILE).is_file() and not create:
        raise CliError(
            RUNTIME,
            f"{data}: not a node directory (start one with `crdtstore serve --data {data}`, "
            "or pass --create)",
        )
    try:
        node = crdtstore.open(data)
    except crdtstore.Error as exc:
        raise CliError(RUNTIME, f"cannot open {data}: {exc}") from None
    try:
        yield node
    except BAD_INPUT as exc:
        raise CliError(USAGE, str(exc)) from None
    except crdtstore.Error as exc:
        raise CliError(RUNTIME, str(exc)) from None
    finally:
        node.close()


def _type_of(node: crdtstore.Node, namespace: str, wanted: str | None = None) -> str | None:
    """The namespace's type (None if it does not exist); refuses one not of ``wanted``."""
    kind = node.namespaces().get(namespace)
    if wanted is not None and kind is not None and kind != wanted:
        verbs = "put/del" if kind == LWW else "add/remove"
        raise CliError(USAGE, f"namespace {namespace!r} is an {kind}: use {verbs} on it")
    return kind


def get(args: argparse.Namespace) -> int:
    key = parse_key(args.key, args.json_key)
    with directory(args) as node:
        kind = _type_of(node, args.namespace)
        if kind == LWW:
            view = node.lww_map(args.namespace)
            try:
                value = view[key]
            except KeyError:
                raise CliError(NOT_FOUND, f"{args.namespace}: key {key!r} not found") from None
            emit(
                dumps({"namespace": args.namespace, "key": key, "value": value})
                if args.json
                else dumps(value)
            )
            return OK
        if kind == ORSET:
            if key not in node.or_set(args.namespace):
                raise CliError(NOT_FOUND, f"{args.namespace}: element {key!r} not found")
            emit(dumps({"namespace": args.namespace, "element": key}) if args.json else dumps(key))
            return OK
        raise CliError(NOT_FOUND, f"namespace {args.namespace!r} not found")


def put(args: argparse.Namespace) -> int:
    key = parse_key(args.key, args.json_key)
    value = parse_value(args.value)
    with directory(args, args.create) as node:
        _type_of(node, args.namespace, LWW)
        with node.transaction():  # a refused write does not leave a new namespace behind
            node.lww_map(args.namespace)[key] = value
        if args.json:
            emit(dumps({"namespace": args.namespace, "key": key, "value": value}))
    return OK


def delete(args: argparse.Namespace) -> int:
    key = parse_key(args.key, args.json_key)
    with directory(args) as node:
        deleted = False
        if _type_of(node, args.namespace, LWW) is not None:
            try:
                del node.lww_map(args.namespace)[key]
                deleted = True
            except KeyError:
                pass
        _report_removal(args, key, deleted)
    return OK


def add(args: argparse.Namespace) -> int:
    element = parse_key(args.element, args.json_key)
    with directory(args, args.create) as node:
        _type_of(node, args.namespace, ORSET)
        with node.transaction():  # as in put
            node.or_set(args.namespace).add(element)
        if args.json:
            emit(dumps({"namespace": args.namespace, "element": element}))
    return OK


def remove(args: argparse.Namespace) -> int:
    element = parse_key(args.element, args.json_key)
    with directory(args) as node:
        removed = False
        if _type_of(node, args.namespace, ORSET) is not None:
            try:
                node.or_set(args.namespace).remove(element)
                removed = True
            except KeyError:
                pass
        _report_removal(args, element, removed)
    return OK


def _report_removal(args: argparse.Namespace, key: Any, done: bool) -> None:
    """Removing what is absent succeeds (the state asked for holds), and says so."""
    if args.json:
        emit(dumps({"namespace": args.namespace, "key": key, "deleted": done}))
    elif not done:
        emit(f"{args.namespace}: {key!r} was not there")


def _matches(key: Any, prefix: str | None) -> bool:
    return prefix is None or (isinstance(key, str) and key.startswith(prefix))


def _order(key: Any) -> tuple[str, Any]:
    return type(key).__name__, key


def _shown(key: Any) -> str:
    return key if isinstance(key, str) else dumps(key)


def ls(args: argparse.Namespace) -> int:
    with directory(args) as node:
        if args.namespace is None:
            spaces = {n: t for n, t in node.namespaces().items() if not n.startswith("__")}
            if args.json:
                emit(dumps({"namespaces": spaces}))
            else:
                for name, type_name in sorted(spaces.items()):
                    emit(f"{name}\t{type_name}")
            return OK
        kind = _type_of(node, args.namespace)
        if kind is None:
            raise CliError(NOT_FOUND, f"namespace {args.namespace!r} not found")
        if kind == LWW:
            items = sorted(
                (
                    (k, v)
                    for k, v in node.lww_map(args.namespace).items()
                    if _matches(k, args.prefix)
                ),
                key=lambda kv: _order(kv[0]),
            )
            if args.json:
                entries = [{"key": k, "value": v} for k, v in items]
                emit(dumps({"namespace": args.namespace, "type": kind, "entries": entries}))
            else:
                for k, v in items:
                    emit(f"{_shown(k)}\t{dumps(v)}")
            return OK
        elements = sorted(
            (e for e in node.or_set(args.namespace) if _matches(e, args.prefix)), key=_order
        )
        if args.json:
            emit(dumps({"namespace": args.namespace, "type": kind, "elements": elements}))
        else:
            for e in elements:
                emit(_shown(e))
    return OK


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM: the streaming commands' way out."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def watch(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    with directory(args) as node:
        feed = node.changes(args.namespace)
        try:
            # Said on stderr once the feed is subscribed: every later change is streamed.
            print(f"watching {args.namespace} in {args.data}", file=sys.stderr, flush=True)
            while not stop.is_set():
                change = feed.get(timeout=WATCH_POLL_S)
                if change is not None and _matches(change.key, args.prefix):
                    emit(dumps(dataclasses.asdict(change)))
        finally:
            feed.close()
    return OK
