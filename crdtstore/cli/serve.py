"""``crdtstore serve``: run a node as a daemon until SIGTERM or SIGINT.

Every bad input is refused before anything is written, with one line naming it and exit 2:
an unreadable or malformed ``--config`` (file and line), an unknown log level or format,
an invalid setting, a taken metrics port. Signals: SIGTERM/SIGINT stop (SIGTERM leaves
the cluster with ``leave_on_terminate``), SIGHUP re-reads the keys directory, SIGUSR1
leaves the cluster and stops (``crdtstore leave``). Under systemd (``Type=notify``) it
says ``READY=1`` once it holds the role and is bound, ``STOPPING=1`` when it stops, and
``WATCHDOG=1`` while its replicator loop runs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtstore.cli.exits import USAGE, CliError
from crdtstore.cli.health import health
from crdtstore.cli.logs import FORMATS, check_logging, setup_logging
from crdtstore.cli.members import LEAVE_SIGNAL, SERVE_PID_FILE
from crdtstore.cli.sdnotify import Notifier

if TYPE_CHECKING:
    from transport import TransportFaults

log = logging.getLogger("crdtstore.serve")


def add_parser(sub: Any) -> None:
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
    serve.add_argument(
        "--overlay",
        action="store_true",
        default=None,
        help="accepted for v0.2.0 command lines: membership always runs over the overlay",
    )
    serve.add_argument(
        "--full-mesh",
        action="store_true",
        help=argparse.SUPPRESS,  # v0.2.0's: refused with the upgrade path, not offered
    )
    serve.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz over HTTP there",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-format", default="text", help=f"one of {', '.join(FORMATS)}")


def read_config(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise CliError(USAGE, f"cannot read --config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(USAGE, f"{path}: invalid TOML: {exc}") from None


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the TOML file (if any) with command-line flags; flags win."""
    if args.full_mesh:
        from crdtstore.settings import FULL_MESH_REMOVED

        # One line and exit 2 as any bad input, naming the way out (argparse would say
        # only "unrecognized arguments").
        raise CliError(USAGE, FULL_MESH_REMOVED.replace("setting overlay=False", "--full-mesh"))
    options: dict[str, Any] = {}
    if args.config is not None:
        options.update(read_config(args.config))
    flags = {
        "data": args.data,
        "bind": args.bind,
        "seeds": args.seed,
        "node_id": args.node_id,
        "topics": args.topic,
        "secret_key": None if args.secret_key is None else str(args.secret_key),
        "keys_dir": None if args.keys_dir is None else str(args.keys_dir),
        "leave_on_terminate": args.leave_on_terminate,
        "overlay": args.overlay,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    if "data" not in options:
        raise CliError(USAGE, "--data (or data in --config) is required")
    return options


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(USAGE, f"--metrics-bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9101")
    return host.strip("[]"), int(port)


GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic GC of a process that is a node and nothing else.

    A replica decodes many small containers: a shipped range alone holds up to
    ``range_max_reply_entries`` entries of several each. With CPython's default (a young
    collection every 700 allocations) each range's decoded objects are promoted and
    scanned again and again, which made a large bootstrap's apply measurably slower
    (figures in the CHANGELOG; ``bench/bench_bootstrap.py`` measures it).
    Collections every 10,000 allocations, and the start-up objects (modules, code,
    settings: never garbage) frozen out of every scan, keep that cost small. Nothing in a
    node relies on cycles being collected promptly; a service embedding a node may do
    the same in its own process."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def serve(
    args: argparse.Namespace,
    clock: Callable[[], int] | None = None,
    faults: TransportFaults | None = None,
) -> int:
    """Run a node until SIGTERM or SIGINT. ``clock`` and ``faults`` (test seams): see
    ``crdtstore.open``; ``python -m crdtstore.testing.serve`` passes faults."""
    import crdtstore
    from transport import TransportError

    check_logging(args.log_level, args.log_format)
    options = serve_options(args)
    try:
        # Settings checked before the directory is touched: a bad one writes nothing.
        crdtstore.NodeSettings.from_mapping(
            {k: v for k, v in options.items() if k not in ("data", "node_id", "bind", "seeds")}
        )
    except crdtstore.Error as exc:
        raise CliError(USAGE, str(exc)) from None
    metrics = None
    if args.metrics_bind is not None:
        from crdtstore.cli.metrics import MetricsServer

        host, port = parse_host_port(args.metrics_bind)
        try:
            metrics = MetricsServer(host, port)
        except OSError as exc:
            raise CliError(USAGE, f"--metrics-bind {args.metrics_bind}: {exc.strerror}") from None
    try:
        return _run(args, options, clock, faults, metrics, crdtstore, TransportError)
    finally:
        if metrics is not None:
            metrics.close()


def _run(
    args: argparse.Namespace,
    options: dict[str, Any],
    clock: Callable[[], int] | None,
    faults: TransportFaults | None,
    metrics: Any,
    crdtstore: Any,
    transport_error: type[Exception],
) -> int:
    setup_logging(args.log_level, args.log_format)
    data = Path(options.pop("data"))
    stop = threading.Event()
    terminated = threading.Event()
    leave = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        if signum == signal.SIGTERM:
            terminated.set()
        if signum == LEAVE_SIGNAL:
            leave.set()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, LEAVE_SIGNAL):
        signal.signal(signum, on_signal)
    reload = threading.Event()

    # SIGHUP re-reads the keys directory (the ZAP allow-list): admit or revoke members
    # without a restart. Done on the main thread, not inside the signal handler.
    def on_hup(_signum: int, _frame: Any) -> None:
        reload.set()
        stop.set()

    signal.signal(signal.SIGHUP, on_hup)
    tune_gc()
    try:
        node = crdtstore.open(data, clock=clock, faults=faults, **options)
    except (crdtstore.Error, transport_error) as exc:
        raise CliError(USAGE, str(exc)) from None
    notifier = Notifier()
    with node:
        pid_file = data / SERVE_PID_FILE
        pid_file.write_text(f"{os.getpid()}\n")
        if metrics is not None:
            metrics.node = node
            metrics.start()
            log.info("metrics on http://%s:%d/metrics", *metrics.address)
        log.info("node %s serving %s on %s", node.node_id, data, node.router_address)
        print(f"READY {node.node_id} {node.router_address}", flush=True)
        notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {node.router_address}")
        # Its own event: ``stop`` is cleared again after a SIGHUP reload.
        stopped = threading.Event()
        watchdog = _start_watchdog(notifier, node, stopped)
        try:
            while True:
                stop.wait()
                if not reload.is_set():
                    break
                reload.clear()
                stop.clear()
                try:
                    node.reload_keys()
                    log.info("SIGHUP: keys directory reloaded")
                except (crdtstore.Error, transport_error) as exc:
                    log.error("SIGHUP: reload failed: %s", exc)
            notifier.notify("STOPPING=1")
            if leave.is_set() or (terminated.is_set() and node.settings.leave_on_terminate):
                log.info("%s: leaving the cluster", "SIGUSR1" if leave.is_set() else "SIGTERM")
                node.leave()
        finally:
            stopped.set()
            if watchdog is not None:
                watchdog.join()
            pid_file.unlink(missing_ok=True)
    return 0


def _start_watchdog(
    notifier: Notifier, node: Any, stop: threading.Event
) -> threading.Thread | None:
    """Ping systemd's watchdog every half period while the node is healthy: a node whose
    loop stalls stops pinging, and systemd restarts it."""
    if notifier.watchdog_s is None:
        return None
    period = notifier.watchdog_s / 2

    def run() -> None:
        while not stop.wait(period):
            reason = health(node)
            if reason is None:
                notifier.notify("WATCHDOG=1")
            else:
                log.warning("not pinging the systemd watchdog: %s", reason)

    thread = threading.Thread(target=run, name="crdtstore-watchdog", daemon=True)
    thread.start()
    return thread
