"""``serve --metrics-bind``: /metrics scraped over HTTP and parsed as Prometheus text;
/healthz for a node holding the role and for a standby that does not."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cli_support import FlaggedNode, run
from prometheus_client.parser import text_string_to_metric_families

from crdtstore.testing.localcluster import ServeNode, free_port, wait_until

FAST = {"heartbeat_interval_ms": 100, "status_interval_ms": 100}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = get(f"{base}/metrics")
    assert code == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_metrics_expose_members_lag_counters_and_map_use(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    port = free_port()
    n1 = FlaggedNode(tmp_path, "n1", [], FAST, flags=["--metrics-bind", f"127.0.0.1:{port}"])
    nodes.append(n1.start())
    n2 = ServeNode(tmp_path, "n2", [n1.bind], FAST)
    nodes.append(n2.start())
    base = f"http://127.0.0.1:{port}"
    for i in range(20):
        assert run("put", "--data", str(n2.data), "cfg", f"k{i}", str(i)).returncode == 0
    found = wait_until(
        lambda: (
            (m := samples(base))
            and value(m, "crdtstore_members", status="alive") == 2
            and "n2"
            in {dict(labels).get("peer") for name, labels in m if name.endswith("lag_seqs")}
            and (value(m, "crdtstore_sync_events_total", event="batches_applied") or 0) >= 1
            and m
        ),
        "n1's metrics show both members, n2's lag and the batches n1 applied",
    )
    assert value(found, "crdtstore_healthy") == 1
    assert value(found, "crdtstore_members", status="dead") == 0
    assert value(found, "crdtstore_transport_events_total", event="published") >= 1  # type: ignore[operator]
    assert (
        value(found, "crdtstore_rejected_input_total", layer="transport", reason="auth_failed") == 0
    )
    used = value(found, "crdtstore_lmdb_map_used_bytes")
    size = value(found, "crdtstore_lmdb_map_size_bytes")
    assert used is not None and size is not None and 0 < used <= size
    assert value(found, "process_resident_memory_bytes")  # the process collector is on
    assert get(f"{base}/healthz") == (200, "ok\n")
    assert get(f"{base}/nothing")[0] == 404


def test_healthz_is_503_for_a_standby_without_the_role_and_200_once_it_takes_over(
    tmp_path: Path, nodes: list[ServeNode]
) -> None:
    holder = ServeNode(tmp_path, "n1", [], FAST)
    nodes.append(holder.start())
    port = free_port()
    standby = FlaggedNode(
        tmp_path,
        "n1",
        [],
        {**FAST, "role_standby": True, "role_poll_interval_ms": 50},
        flags=["--metrics-bind", f"127.0.0.1:{port}"],
    )
    standby.log = tmp_path / "standby.log"
    nodes.append(standby.start())
    base = f"http://127.0.0.1:{port}"
    code, body = get(f"{base}/healthz")
    assert code == 503 and "not holding the network role" in body
    assert value(samples(base), "crdtstore_healthy") == 0
    assert holder.stop() == 0
    wait_until(lambda: get(f"{base}/healthz")[0] == 200, "the standby took the role over")
