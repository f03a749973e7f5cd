"""``crdtstore serve`` as an operator runs it: TOML config, clean SIGTERM, clear bind errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Cluster, ServeNode, run_writer, same_state, wait_until


def test_sigterm_stops_cleanly_and_the_restart_keeps_every_write(cluster: Cluster) -> None:
    n1, n2 = cluster.start(2)
    writer = run_writer(n1, "put", "cfg", "k", "50")
    out, _ = writer.communicate(timeout=60)
    assert out.count("ACK ") == 50
    assert n1.stop() == 0 and n2.stop() == 0
    assert "signal 15: stopping" in n1.log.read_text()
    n1.start()
    n2.start()
    wait_until(lambda: same_state([n1, n2], ["cfg"]), "both hold the same state")
    assert {e["key"] for e in n2.dump("cfg")} == {f"k{i}" for i in range(50)}


def test_a_second_node_on_a_taken_address_fails_with_a_clear_error(
    cluster: Cluster, tmp_path: Path
) -> None:
    [n1] = cluster.start(1)
    other = ServeNode(tmp_path, "other", [])
    other.bind = n1.bind
    proc = subprocess.run(other.command(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "crdtstore serve: cannot bind" in proc.stderr and "Traceback" not in proc.stderr
    assert n1.alive()


def test_unknown_setting_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'data = "{tmp_path / "d"}"\nbind = "tcp://127.0.0.1:1"\nheartbeat = 5\n')
    proc = subprocess.run(
        [sys.executable, "-m", "crdtstore.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown setting" in proc.stderr


def test_serve_tunes_the_garbage_collector_of_its_own_process() -> None:
    # Checked in a child: the tuning is process-wide, and this test process is not a node.
    script = (
        "import gc\n"
        "from crdtstore.cli import GC_GEN0_THRESHOLD, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "after = gc.get_threshold()\n"
        "assert after == (GC_GEN0_THRESHOLD, *before[1:]) and after != before, (before, after)\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "print('tuned')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "tuned", done.stderr
