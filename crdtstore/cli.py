"""The ``crdtstore`` command line: ``serve``, ``demo``, ``keygen`` and ``drop``."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crdtstore import cli_drop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a node as a daemon")
    serve.add_argument("--config", type=Path, help="TOML file of node settings")
    serve.add_argument("--data", type=Path, help="the node's data directory")
    serve.add_argument("--bind", help="ROUTER address, e.g. tcp://127.0.0.1:7101")
    serve.add_argument(
        "--seed",
        action="append",
        default=None,
        help="a seed's ROUTER address (KEYNAME@ADDR with CURVE keys)",
    )
    serve.add_argument("--node-id", help="this node's id (default: persisted or generated)")
    serve.add_argument(
        "--topic",
        action="append",
        default=None,
        help="replicate only this namespace (repeatable; default: all)",
    )
    serve.add_argument("--secret-key", type=Path, help="this node's CurveZMQ secret key file")
    serve.add_argument("--keys-dir", type=Path, help="directory of allowed peers' public keys")
    serve.add_argument(
        "--leave-on-terminate",
        action="store_true",
        default=None,
        help="on SIGTERM, leave the cluster gracefully (peers see 'left'); default: a stop "
        "is a restart to be (peers see the node suspect, then dead, until it returns)",
    )
    serve.add_argument("--log-level", default="INFO")

    demo = sub.add_parser("demo", help="run a 3-node cluster on loopback and show it converge")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")

    keygen = sub.add_parser("keygen", help="make a CurveZMQ key pair")
    keygen.add_argument("directory", type=Path)
    keygen.add_argument("name")
    cli_drop.add_parser(sub)
    return parser


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the TOML file (if any) with command-line flags; flags win."""
    options: dict[str, Any] = {}
    if args.config is not None:
        import tomllib

        with args.config.open("rb") as fh:
            options.update(tomllib.load(fh))
    flags = {
        "data": args.data,
        "bind": args.bind,
        "seeds": args.seed,
        "node_id": args.node_id,
        "topics": args.topic,
        "secret_key": None if args.secret_key is None else str(args.secret_key),
        "keys_dir": None if args.keys_dir is None else str(args.keys_dir),
        "leave_on_terminate": args.leave_on_terminate,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    if "data" not in options:
        raise SystemExit("crdtstore serve: --data (or data in --config) is required")
    return options


GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic GC of a process that is a node and nothing else.

    A replica decodes many small containers: a shipped range alone holds up to
    ``range_max_reply_entries`` entries of several each. With CPython's default (a young
    collection every 700 allocations) each range's decoded objects are promoted and
    scanned again and again: a 300,000-entry bootstrap's apply took a fifth longer when
    sessions held 100,000 decoded entries, an eighth longer now (1.98 / 1.76 s, in
    process).
    Collections every 10,000 allocations, and the start-up objects (modules, code,
    settings: never garbage) frozen out of every scan, keep that cost small. Nothing in a
    node relies on cycles being collected promptly; a service embedding a node may do
    the same in its own process."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def serve(args: argparse.Namespace, clock: Callable[[], int] | None = None) -> int:
    """Run a node until SIGTERM or SIGINT. ``clock``: see ``crdtstore.open``."""
    import crdtstore
    from transport import TransportError

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = serve_options(args)
    data = Path(options.pop("data"))
    stop = threading.Event()
    terminated = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("crdtstore.serve").info("signal %d: stopping", signum)
        if signum == signal.SIGTERM:
            terminated.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reload = threading.Event()

    # SIGHUP re-reads the keys directory (the ZAP allow-list): admit or revoke members
    # without a restart. Done on the main thread, not inside the signal handler.
    def on_hup(_signum: int, _frame: Any) -> None:
        reload.set()
        stop.set()

    signal.signal(signal.SIGHUP, on_hup)
    tune_gc()
    try:
        node = crdtstore.open(data, clock=clock, **options)
    except (crdtstore.Error, TransportError) as exc:
        print(f"crdtstore serve: {exc}", file=sys.stderr)
        return 2
    with node:
        logging.getLogger("crdtstore.serve").info(
            "node %s serving %s on %s", node.node_id, data, node.router_address
        )
        print(f"READY {node.node_id} {node.router_address}", flush=True)
        while True:
            stop.wait()
            if not reload.is_set():
                break
            reload.clear()
            stop.clear()
            try:
                node.reload_keys()
                logging.getLogger("crdtstore.serve").info("SIGHUP: keys directory reloaded")
            except (crdtstore.Error, TransportError) as exc:
                logging.getLogger("crdtstore.serve").error("SIGHUP: reload failed: %s", exc)
        if terminated.is_set() and node.settings.leave_on_terminate:
            logging.getLogger("crdtstore.serve").info("SIGTERM: leaving the cluster")
            node.leave()
    return 0


def keygen(args: argparse.Namespace) -> int:
    from transport import generate_keypair

    public, secret = generate_keypair(str(args.directory), args.name)
    print(f"public key: {public}\nsecret key: {secret}")
    return 0


def main(argv: Sequence[str] | None = None, clock: Callable[[], int] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args, clock)
    if args.command == "keygen":
        return keygen(args)
    if args.command == "drop":
        return cli_drop.run(args)
    from crdtstore.demo import run_demo

    return run_demo(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
