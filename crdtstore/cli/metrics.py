"""``serve --metrics-bind HOST:PORT``: Prometheus metrics and a health check over HTTP.

``/metrics`` is the Prometheus text exposition, made at scrape time by
:class:`NodeCollector` from what the node already keeps: the replicator's newest status
(the same dict ``status.json`` holds: members, per-peer lag, every layer's counters),
the role and loop state, and the LMDB map's use. Nothing is counted twice. ``/healthz``
answers 200 while the node holds the network role and its replicator loop went round
within ``health.LOOP_STALL_S``, 503 with the reason otherwise.

prometheus_client is a runtime dependency, not an extra: it is pure Python with no
dependencies of its own, and an operator's ``--metrics-bind`` should work on any install;
it is imported only by a node started with that flag.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from crdtstore.cli.health import health
from crdtstore.node import Node

LAYERS = ("sync", "transport", "replicator", "liveness", "storage")
REJECTION_PREFIXES = ("rejected_", "dropped_", "auth_failed", "handshake_failed")


class NodeCollector(Collector):
    """Reads the node at each scrape; ``node()`` is None until the node is open."""

    def __init__(self, node: Callable[[], Node | None]) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node()
        up = GaugeMetricFamily(
            "crdtstore_healthy", "1 while the node holds the network role and its loop runs"
        )
        up.add_metric([], 1.0 if health(node) is None else 0.0)
        yield up
        if node is None:
            return
        age = node.network_loop_age_s()
        if age is not None:
            yield GaugeMetricFamily(
                "crdtstore_replicator_loop_age_seconds",
                "seconds since the replicator loop last went round",
                value=age,
            )
        used, size = node.map_use()
        yield GaugeMetricFamily("crdtstore_lmdb_map_used_bytes", "LMDB map in use", value=used)
        yield GaugeMetricFamily("crdtstore_lmdb_map_size_bytes", "LMDB map size", value=size)
        status = node.network_status()
        if status is not None:
            yield from status_metrics(status)


def status_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    """Metric families of one status dict (``Replicator.status``)."""
    members = GaugeMetricFamily("crdtstore_members", "members by status", labels=["status"])
    by_status = Counter(m["status"] for m in status.get("members", []))
    for name in ("alive", "suspect", "dead", "left", "unknown"):
        members.add_metric([name], by_status.get(name, 0))
    yield members
    lag = GaugeMetricFamily(
        "crdtstore_peer_lag_seqs",
        "per peer: sequence numbers its last digest shows that this node has not applied",
        labels=["peer"],
    )
    for peer, seqs in sorted(status.get("peer_lag", {}).items()):
        lag.add_metric([peer], seqs)
    yield lag
    yield GaugeMetricFamily(
        "crdtstore_local_health",
        "Lifeguard local health (0: keeping up)",
        value=status.get("local_health", 0),
    )
    yield GaugeMetricFamily(
        "crdtstore_reconcile_sessions",
        "range reconciliation sessions running",
        value=len(status.get("sessions", {})),
    )
    yield GaugeMetricFamily(
        "crdtstore_clock_skew_ms",
        "spread of the members' clocks",
        value=status.get("clock", {}).get("skew_ms", 0),
    )
    rejected = CounterMetricFamily(
        "crdtstore_rejected_input",
        "input refused or dropped, by layer and reason",
        labels=["layer", "reason"],
    )
    for layer in LAYERS:
        counters = status.get(layer, {})
        family = CounterMetricFamily(
            f"crdtstore_{layer}_events", f"the {layer} layer's counters", labels=["event"]
        )
        for name, value in sorted(counters.items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                family.add_metric([name], value)
                if name.startswith(REJECTION_PREFIXES):
                    rejected.add_metric([layer, name], value)
        yield family
    yield rejected


class MetricsServer:
    """The HTTP endpoint, on a thread of its own; bound at creation (so a taken port fails
    the start before the node opens), serving once :meth:`start` is called."""

    def __init__(self, host: str, port: int) -> None:
        self.node: Node | None = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(lambda: self.node))
        ProcessCollector(registry=registry)
        self._server = ThreadingHTTPServer((host, port), _handler(registry, lambda: self.node))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="crdtstore-metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, node: Callable[[], Node | None]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                reason = health(node())
                if reason is None:
                    self._reply(200, b"ok\n")
                else:
                    self._reply(503, f"unhealthy: {reason}\n".encode())
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news for the node's log

    return Handler
